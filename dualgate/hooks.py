"""What a process manager asks of a server, and what it may do with one.

The contract the process layer runs a server through without importing it: the launcher hands
a supervisor a `ServerFactory` (the `Server` class itself), each worker builds its server with
it, passing the sockets it got and its `ServerHooks`, and then only runs, stops and reads it as
`Serving` says.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dualgate.config import Config
    from dualgate.http.cycle import RequestCycle
    from dualgate.metrics.snapshot import Stats

__all__ = ["STOP_SIGNALS", "ServerFactory", "ServerHooks", "Serving"]

# The signals that stop a server run from a terminal: the first stops gracefully, a second forces.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class ServerHooks:
    """What a process manager asks of a server. Every callback runs on the server's loop."""

    # The application is loaded, ASGI lifespan start-up has finished, the sockets serve.
    on_ready: Callable[[], None] | None = None
    # A graceful stop has begun.
    on_stop: Callable[[], None] | None = None
    # Called every `heartbeat_interval` seconds by the loop itself, so a blocked loop goes quiet.
    heartbeat: Callable[[], None] | None = None
    heartbeat_interval: float = 1.0
    # Called with each request before the application sees it; False means the hook has
    # answered the request itself (a refusal) and the application is not called.
    on_request: Callable[[RequestCycle], bool] | None = None
    # Called with each response once it is finished or broken off (not with a refusal the
    # server answers before the application, nor a WebSocket upgrade). Unset, the server builds
    # connections without the call, so it costs a request nothing.
    on_response: Callable[[RequestCycle], None] | None = None
    # Stop accepting while every WSGI thread is busy, so a sibling process sharing the socket
    # takes the connection instead of it queueing here.
    pause_when_busy: bool = False
    # wsgi.multiprocess: other processes serve the same application at the same time.
    multiprocess: bool = False
    # The first of these stops gracefully and a second one forces; `force_signals` force at once.
    graceful_signals: tuple[int, ...] = STOP_SIGNALS
    force_signals: tuple[int, ...] = ()
    # Told of each of those signals before the server acts on it.
    on_signal: Callable[[int], None] | None = None
    # With --metrics-address: False counts every figure but binds no metrics listener (a
    # worker process, whose supervisor serves the figures of all its workers).
    serve_metrics: bool = True


class Serving(Protocol):
    """A server as a process manager uses it."""

    def run(self) -> int: ...

    def shutdown(self, force: bool = False) -> None: ...

    def stats(self) -> Stats: ...


class ServerFactory(Protocol):
    """Builds the server a worker runs: `Server` itself, or anything called the same way."""

    def __call__(
        self,
        config: Config,
        *,
        sockets: Sequence[socket.socket] = (),
        hooks: ServerHooks | None = None,
    ) -> Serving: ...
