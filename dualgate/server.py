"""`Server`: binds, serves, and stops gracefully.

The server owns everything that lives as long as it does: the listening sockets (bound through
net/listeners.py unless a process manager hands it some), the live connections (through
ServerState), the TLS context holder (SIGHUP reloads its files), the signal handlers, and one
ticker for everything periodic: the once-a-second Date header, the connection deadlines, a
process manager's heartbeat, the pool warning. What stands between a connection and the
applications (apps, mounts, pool, lifespan, metrics, health) is wiring.py's. `started` tells an
embedding program (or a test) when the sockets are bound and which address they got;
`shutdown()` asks for a graceful stop from any thread.

It also owns what it counts (metrics/counters.py) and `stats()`, the snapshot of it. With
--metrics-address it serves the metered protocol instead of the plain one, and a listener of
its own for `GET /metrics`, answered on the loop and kept open until the drain is over.

A process manager (procs/worker.py, the gunicorn worker class) hands the server already-bound
`sockets` and `ServerHooks` (hooks.py). The server never decides how many processes run: the
launcher (launch.py) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualgate.apps.wiring import Wiring
from dualgate.config import Config, parse_host_port
from dualgate.edge.preamble import EdgeProtocol
from dualgate.edge.tls import TLSContextHolder
from dualgate.errors import ConfigError
from dualgate.h2.preface import http2_enabled
from dualgate.hooks import ServerHooks
from dualgate.http.connection import HTTPProtocol, reading_class
from dualgate.http.state import ServerState
from dualgate.logs import error_logger
from dualgate.logsetup import configure_logging
from dualgate.metrics.answers import MetricsEndpoint
from dualgate.metrics.counters import Metrics
from dualgate.metrics.metered import LagProbe
from dualgate.metrics.snapshot import Stats
from dualgate.net.acceptor import Acceptor
from dualgate.net.listeners import Listeners, describe_address, listen_on, open_listeners
from dualgate.version import __version__

__all__ = ["Server", "ServerHooks"]

_SHUTDOWN_POLL = 0.05
# A job this close to due runs now: the loop may wake a hair early, and waiting again for so
# little would only wake it once more.
_TICK_SLACK = 0.001
# What the server's own metrics listener queues (asyncio's create_server default).
_METRICS_BACKLOG = 100
# Connections a single process accepts per wake-up of a listening socket: as many as asyncio's
# server would with its default backlog, so a burst is taken in one loop turn.
_ACCEPT_BATCH = 100


class Server:
    def __init__(
        self,
        config: Config,
        *,
        sockets: Sequence[socket.socket] = (),
        hooks: ServerHooks | None = None,
    ) -> None:
        self.config = config
        # Listening sockets bound by someone else; when given, host/port/uds/fd are not used.
        self.sockets = list(sockets)
        self.hooks = hooks if hooks is not None else ServerHooks()
        self.started = threading.Event()
        self.addresses: list[Any] = []
        self.startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._force = False
        self._stop_requested = False
        self._bound: Listeners | None = None  # the sockets this server bound itself
        self._listeners: list[asyncio.Server] = []
        self._acceptors: list[Acceptor] = []
        self._tls: TLSContextHolder | None = None
        self.state: ServerState | None = None
        self._metrics = Metrics(metered=config.metrics_address is not None)
        self._wiring = Wiring(config, self._metrics, self.hooks, self._healthy, self._on_pool_full)
        self._ticker: _Ticker | None = None
        self._metrics_state: ServerState | None = None
        self._metrics_listeners: list[asyncio.Server] = []
        self.metrics_addresses: list[Any] = []
        self._lag: LagProbe | None = None

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0)."""
        for address in self.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        raise RuntimeError("the server is not bound to a TCP port")

    # -- running ------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until a signal or `shutdown()`; returns the process exit code."""
        with asyncio.Runner(loop_factory=_loop_factory(self.config.loop)) as runner:
            runner.run(self.serve())
        return 0

    async def serve(self) -> None:
        configure_logging(self.config)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()  # shutdown() came before the loop did
        self._ticker = _Ticker(loop)
        try:
            await self._startup(loop)
        except BaseException as exc:
            # Recorded before `started` is set, so a waiter learns of the failure at once.
            self.startup_error = exc
            self.started.set()
            await self._cleanup()
            raise
        self.started.set()
        self._install_signal_handlers(loop)
        if self.hooks.heartbeat is not None:
            self._ticker.every(self.hooks.heartbeat_interval, self.hooks.heartbeat)
        if self.hooks.on_ready is not None:
            self.hooks.on_ready()
        try:
            await self._stop.wait()
        finally:
            await self._graceful_stop()
            self._remove_signal_handlers(loop)

    def stats(self) -> Stats:
        """The server's figures now, as a snapshot; safe from any thread, and before and after
        serving. With metrics off only the free figures are counted (README "Metrics")."""
        state = self.state
        pool = self._wiring.pool
        return self._metrics.snapshot(
            connections_open=len(state.connections) if state is not None else 0,
            shutting_down=not self._healthy(),
            pool=pool.figures() if pool is not None else None,
            h2_streams_open=_h2_streams_open(state),
        )

    def _healthy(self) -> bool:
        """Serving, and not asked to stop: what --health-path answers."""
        state = self.state
        return not self._stop_requested and not (state is not None and state.shutting_down)

    def shutdown(self, force: bool = False) -> None:
        """Ask for a graceful stop; safe from any thread, and before the loop has started.

        Asked on the loop's own thread (a worker's request hook deciding that this request is
        its last, a signal handler), the server also stops accepting there and then: the
        graceful stop runs a loop pass or two later, and uvloop runs a listener's callback in
        between, so a connection arriving meanwhile was accepted and served past
        --limit-max-requests (gunicorn's --max-requests)."""
        self._force = self._force or force
        self._stop_requested = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            if _running_loop() is loop:
                for acceptor in self._acceptors:
                    acceptor.pause()
            loop.call_soon_threadsafe(stop.set)

    # -- start-up -----------------------------------------------------------------------

    async def _startup(self, loop: asyncio.AbstractEventLoop) -> None:
        config = self.config
        # First, so a certificate that cannot be used stops the start before the app loads.
        if config.ssl_certfile is not None:
            self._tls = TLSContextHolder(config)
        handler, description = await self._wiring.build(loop)
        metrics = self._metrics
        self.state = state = ServerState(config, handler, self._tls, metrics)
        if http2_enabled(config):
            # Imported only now: h2 is an optional dependency (--http2 auto serves without it).
            from dualgate.h2.cycles import H2Server

            state.http2 = H2Server(state, loop, report=self.hooks.on_response)
        # Buffered reads on asyncio's loop and under TLS, uvloop's own elsewhere (connection.py).
        http = reading_class(self._wiring.protocol(), loop, tls=self._tls is not None)
        tls: dict[str, Any] = {}
        protocol_factory: Callable[[], asyncio.BaseProtocol]
        if config.proxy_protocol:
            # The PROXY header comes before any TLS byte: edge.py reads it, then runs TLS itself.
            def protocol_factory() -> asyncio.BaseProtocol:
                return EdgeProtocol(state, loop, http)

        else:

            def protocol_factory() -> asyncio.BaseProtocol:
                return http(state, loop)

            if self._tls is not None:
                # The handshake counts against the request-head deadline.
                tls["ssl"] = self._tls.listener_context
                tls["ssl_handshake_timeout"] = config.timeout_request_head

        if not self.sockets:
            self._bound = open_listeners(config, workers=False)
            self.sockets = self._bound.shared
        await self._serve_sockets(loop, protocol_factory, tls)
        self._start_ticking(state)
        if metrics.metered:
            self._lag = LagProbe(loop, metrics.loop_lag)
            self._lag.start()
        scheme = "https" if self._tls is not None else "http"
        for address in self.addresses:
            error_logger.info(
                "dualgate %s: Serving %s on %s",
                __version__,
                description,
                describe_address(address, scheme),
            )
        if metrics.metered and self.hooks.serve_metrics:
            await self._serve_metrics(loop)

    def _start_ticking(self, state: ServerState) -> None:
        assert self._ticker is not None
        self._ticker.every(1.0, self._tick_date)
        self._ticker.every(_sweep_interval(self.config), self._sweep_deadlines)
        warning = self._wiring.pool_warning
        if warning is not None:
            self._ticker.every(1.0, lambda: warning.check(time.monotonic()))

    async def _serve_metrics(self, loop: asyncio.AbstractEventLoop) -> None:
        """The metrics listener: the HTTP core with a handler that answers on the loop, its own
        connections (not counted among the application's) and no access log."""
        config = self.config
        assert config.metrics_address is not None
        endpoint = MetricsEndpoint(self.stats, config.health_path, self._healthy)
        self._metrics_state = state = ServerState(config, endpoint)
        state.access_log = False
        host, port = parse_host_port(config.metrics_address)
        protocol = reading_class(HTTPProtocol, loop)
        for sock in listen_on(host, port, _METRICS_BACKLOG):
            listener = await loop.create_server(lambda: protocol(state, loop), sock=sock)
            self._metrics_listeners.append(listener)
            self.metrics_addresses.append(sock.getsockname())
        for address in self.metrics_addresses:
            error_logger.info("Metrics on %s/metrics", describe_address(address, "http"))

    async def _serve_sockets(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        tls: dict[str, Any],
    ) -> None:
        listen = {"backlog": self.config.backlog, **tls}
        # On asyncio's own loop, without TLS, dualgate's acceptor makes each transport directly,
        # where asyncio.Server would run a task per connection (acceptor.py).
        lean = isinstance(loop, BaseSelectorEventLoop) and not tls
        for sock in self.sockets:
            if self.hooks.pause_when_busy:
                # One connection per wake-up: every worker sharing the socket is woken by a new
                # connection, and one that took the whole queue at once took 99 of 100
                # connections opened together (one at a time: about 35 and 65).
                acceptor = Acceptor(loop, sock, protocol_factory, batch=1, **tls)
                acceptor.start()
                self._acceptors.append(acceptor)
            elif lean:
                acceptor = Acceptor(loop, sock, protocol_factory, batch=_ACCEPT_BATCH)
                acceptor.start()
                self._acceptors.append(acceptor)
            elif sock.family == socket.AF_UNIX:
                self._listeners.append(
                    await loop.create_unix_server(
                        protocol_factory, sock=sock, **listen, **_keep_socket_file(loop)
                    )
                )
            else:
                self._listeners.append(
                    await loop.create_server(protocol_factory, sock=sock, **listen)
                )
        self.addresses = [sock.getsockname() for sock in self.sockets]

    def _on_pool_full(self, full: bool) -> None:
        if self._stop_requested or (self.state is not None and self.state.shutting_down):
            return
        for acceptor in self._acceptors:
            if full:
                acceptor.pause()
            else:
                acceptor.resume()

    # -- what the ticker does -------------------------------------------------------------

    def _sweep_deadlines(self) -> None:
        state = self.state
        if state is None or (state.shutting_down and not state.connections):
            return
        now = asyncio.get_running_loop().time()
        for connection in list(state.connections):
            connection.check_deadline(now)
        if self._metrics_state is not None:
            for connection in list(self._metrics_state.connections):
                connection.check_deadline(now)

    def _tick_date(self) -> None:
        if self.state is not None and not self.state.shutting_down:
            self.state.update_date()
            if self._metrics_state is not None:
                self._metrics_state.update_date()

    # -- stopping -----------------------------------------------------------------------

    async def _graceful_stop(self) -> None:
        state = self.state
        if self.hooks.on_stop is not None:
            self.hooks.on_stop()
        for listener in self._listeners:
            listener.close()
        for acceptor in self._acceptors:
            await acceptor.close()
        if state is not None:
            state.shutting_down = True
            for connection in list(state.connections):
                connection.shutdown()
            if state.connections and not self._force:
                error_logger.info(
                    "Waiting up to %gs for %d connection(s) to finish",
                    self.config.timeout_graceful_shutdown,
                    len(state.connections),
                )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.timeout_graceful_shutdown
            while state.connections and not self._force and loop.time() < deadline:
                await asyncio.sleep(_SHUTDOWN_POLL)
            for connection in list(state.connections):
                connection.force_close()
        await self._cleanup()
        error_logger.info("Stopped")

    async def _cleanup(self) -> None:
        if self._lag is not None:
            self._lag.stop()
            self._lag = None
        # Last: the metrics listener answered (503 to health probes) throughout the drain.
        for metrics_listener in self._metrics_listeners:
            metrics_listener.close()
        self._metrics_listeners.clear()
        if self._metrics_state is not None:
            for connection in list(self._metrics_state.connections):
                connection.force_close()
        await self._wiring.stop_lifespans()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for acceptor in self._acceptors:
            await acceptor.close()
        self._acceptors.clear()
        if self._bound is not None:
            self._bound.close()  # and a unix socket's file with it
        await self._wiring.stop_pool()
        if self._ticker is not None:
            self._ticker.stop()

    def reload_tls(self) -> bool:
        """Load the certificate files again (what SIGHUP does): True when the new ones serve
        from the next handshake on; False, one error line and the old ones kept otherwise."""
        if self._tls is None:
            return False
        return self._tls.reload()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.hooks.graceful_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._on_signal, signum)
        for signum in self.hooks.force_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._on_force_signal, signum)
        if self._tls is not None:
            # Without TLS, SIGHUP keeps its default meaning: nothing is reloadable.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.reload_tls)

    def _remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (*self.hooks.graceful_signals, *self.hooks.force_signals, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self.hooks.on_signal is not None:
            self.hooks.on_signal(signum)
        if self._stop is not None and self._stop.is_set():
            error_logger.info("Second %s: closing all connections now", signal.Signals(signum).name)
            self._force = True
            return
        error_logger.info("%s received: shutting down gracefully", signal.Signals(signum).name)
        self.shutdown()

    def _on_force_signal(self, signum: int) -> None:
        if self.hooks.on_signal is not None:
            self.hooks.on_signal(signum)
        error_logger.info("%s received: closing all connections now", signal.Signals(signum).name)
        self.shutdown(force=True)


@dataclass
class _Job:
    interval: float
    run: Callable[[], None]
    due: float


class _Ticker:
    """One timer on the loop for everything the server does periodically, each job at its own
    interval: one `call_at` pending at a time, for the job due first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: list[_Job] = []
        self._handle: asyncio.TimerHandle | None = None

    def every(self, interval: float, run: Callable[[], None]) -> None:
        """Run `run` now, then every `interval` seconds until `stop()`."""
        run()
        self._jobs.append(_Job(interval, run, self._loop.time() + interval))
        self._schedule()

    def stop(self) -> None:
        self._jobs.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        due = min((job.due for job in self._jobs), default=None)
        self._handle = None if due is None else self._loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        try:
            for job in list(self._jobs):
                if job.due <= now + _TICK_SLACK:
                    job.due = now + job.interval
                    job.run()
        finally:
            if self._jobs:
                self._schedule()


def _h2_streams_open(state: ServerState | None) -> int:
    """The HTTP/2 streams of every live connection (read when the metrics are asked for)."""
    if state is None or state.http2 is None:
        return 0
    return sum(len(c.core.table.streams) for c in list(state.connections) if hasattr(c, "core"))


def _sweep_interval(config: Config) -> float:
    """How often connection deadlines are checked: a timeout fires at most a quarter late."""
    shortest = min(config.timeout_keep_alive, config.timeout_request_head, config.timeout_read)
    return min(1.0, max(0.01, shortest / 4))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ConfigError(
                "--loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _keep_socket_file(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """asyncio on Python 3.13+ removes a unix socket's file when its server closes, unless told
    not to (uvloop takes the same keyword): the file may be one this process was handed
    (systemd, --fd), which is not ours to remove, and the ones dualgate made are removed by
    Listeners.close. asyncio before 3.13 neither removes it nor takes the keyword."""
    if sys.version_info >= (3, 13) or not isinstance(loop, asyncio.BaseEventLoop):
        return {"cleanup_socket": False}
    return {}
