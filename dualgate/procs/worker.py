"""One worker process under the supervisor: started by fork or spawn, serves until told to stop.

What it says to its supervisor and which signals it heeds are messages.py's. It runs the server
the launcher handed down (`WorkerSpec.serve`, `Server` itself), never importing it: a spawned
worker unpickles it by name. A write to the pipe that fails with a broken pipe means the
supervisor is gone, and the worker stops gracefully rather than serving on as an orphan.
"""

from __future__ import annotations

import base64
import faulthandler
import os
import pickle
import random
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dualgate.version
from dualgate.config import Config
from dualgate.errors import EXIT_APP_LOAD, AppLoadError, ConfigError, report, reporting_failures
from dualgate.hooks import ServerFactory, ServerHooks, Serving
from dualgate.logs import error_logger
from dualgate.logsetup import configure_logging
from dualgate.net.listeners import bind_reuse_port
from dualgate.procs.messages import (
    BEAT,
    BLOCKED_AROUND_START,
    DUMP_SIGNAL,
    HOPELESS,
    READY,
    RETIRING,
    snapshot_message,
)

if TYPE_CHECKING:
    from dualgate.http.cycle import RequestCycle

__all__ = ["WorkerSpec", "fork_worker", "spawn_worker", "spawned_main"]

# Unsent bytes a worker keeps while its supervisor is slow to read; past it, snapshots and
# beats are dropped (a later one says the same, more recently).
_MOST_PENDING = 1 << 20
_PAYLOAD_ENV = "DUALGATE_WORKER"
_SPAWNED = "import sys; from dualgate.procs.worker import spawned_main; sys.exit(spawned_main())"


@dataclass(frozen=True)
class WorkerSpec:
    config: Config
    # What the worker runs: called with the config, its sockets and hooks (pickled by name).
    serve: ServerFactory
    # Descriptors of the shared listening sockets, the same numbers in the worker.
    shared_fds: tuple[int, ...]
    # With --reuse-port: (family, address) pairs the worker binds itself.
    reuse_port: tuple[tuple[int, tuple[object, ...]], ...]
    channel_fd: int
    multiprocess: bool
    heartbeat_interval: float


def fork_worker(spec: WorkerSpec, close_fds: Sequence[int]) -> int:
    """Fork a worker serving `spec`; returns its pid. `close_fds` are the supervisor's own."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_AROUND_START)
    try:
        pid = os.fork()
        if pid == 0:  # the child: it never returns from here
            code = 1
            try:
                for fd in close_fds:
                    os.close(fd)
                code = serve(spec)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pid


def spawn_worker(spec: WorkerSpec) -> subprocess.Popen[bytes]:
    """Start a worker in a fresh interpreter; the descriptors it needs keep their numbers."""
    payload = base64.b64encode(pickle.dumps(spec)).decode("ascii")
    # The worker imports dualgate from where this process did, whatever its sys.path was.
    package = os.path.dirname(os.path.abspath(dualgate.version.__file__))
    root = os.path.dirname(package)
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, **{_PAYLOAD_ENV: payload})
    env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_AROUND_START)
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _SPAWNED],
            pass_fds=(*spec.shared_fds, spec.channel_fd),
            env=env,
            stdin=subprocess.DEVNULL,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Channel:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        # The rest of a message the pipe took only part of: it must go before anything else.
        self._pending = b""

    def send(self, message: bytes, droppable: bool = False) -> bool:
        """False once the supervisor is gone; a full pipe only means it is slow to read.

        A `droppable` message (a beat, a snapshot) that cannot start now is dropped; any other
        waits behind what is pending, and goes with the next send.
        """
        try:
            if self._pending:
                self._pending = self._pending[os.write(self.fd, self._pending) :]
            if self._pending:
                if not droppable and len(self._pending) < _MOST_PENDING:
                    self._pending += message
                return True
            written = os.write(self.fd, message)
        except BlockingIOError:
            if not droppable:
                self._pending += message
            return True
        except OSError:
            return False
        self._pending = message[written:]
        return True

    def send_last(self, message: bytes, timeout: float) -> None:
        """`message` and anything pending, waiting up to `timeout` seconds for the pipe: the
        process is about to exit, and nothing would send the rest later."""
        data = self._pending + message
        self._pending = b""
        deadline = time.monotonic() + timeout
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [self.fd], [], remaining)[1]:
                return
            try:
                data = data[os.write(self.fd, data) :]
            except BlockingIOError:
                continue
            except OSError:
                return


def serve(spec: WorkerSpec) -> int:
    """The worker's whole life; returns its exit code."""
    for signum in BLOCKED_AROUND_START:
        signal.signal(signum, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(DUMP_SIGNAL, all_threads=True)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_AROUND_START)

    config = spec.config
    configure_logging(config)
    channel = _Channel(spec.channel_fd)
    sockets = [socket.socket(fileno=fd) for fd in spec.shared_fds]
    try:
        for family, address in spec.reuse_port:
            sockets.append(bind_reuse_port(family, address, config.backlog))
    except OSError as exc:
        report(exc)
        return EXIT_APP_LOAD
    limit = config.limit_max_requests
    if limit is not None and config.limit_max_requests_jitter:
        limit += random.randint(0, config.limit_max_requests_jitter)
    served = 0
    orphaned = False
    server: Serving

    def on_request(cycle: RequestCycle) -> bool:
        nonlocal served
        served += 1
        if served == limit:
            error_logger.info("Served %d requests: retiring this worker", served)
            channel.send(RETIRING)
            server.shutdown()
        return True

    def beat() -> None:
        nonlocal orphaned
        if not channel.send(BEAT, droppable=True) and not orphaned:
            orphaned = True
            error_logger.error("The supervisor is gone: stopping")
            server.shutdown()
        if metered and not orphaned:
            channel.send(snapshot_message(server.stats()), droppable=True)

    def ready() -> None:
        channel.send(READY)

    metered = config.metrics_address is not None
    hooks = ServerHooks(
        on_ready=ready,
        heartbeat=beat,
        heartbeat_interval=spec.heartbeat_interval,
        on_request=on_request if limit is not None else None,
        # Only a shared socket lets a sibling take what this worker leaves in the queue.
        pause_when_busy=bool(spec.shared_fds),
        multiprocess=spec.multiprocess,
        graceful_signals=(signal.SIGTERM,),
        # The supervisor serves the figures: this worker counts them and sends them.
        serve_metrics=False,
    )
    server = spec.serve(config, sockets=sockets, hooks=hooks)

    def run() -> int:
        try:
            return server.run()
        except (AppLoadError, ConfigError):
            # The next worker would fail the same way: the supervisor decides what that means.
            channel.send_last(HOPELESS, timeout=1.0)
            raise

    code = reporting_failures(run)
    if metered:
        # The last figures, so that the supervisor's sums lose nothing of a worker that stops.
        channel.send_last(snapshot_message(server.stats()), timeout=1.0)
    return code


def spawned_main() -> int:
    """The entry point of a spawned worker: its spec comes pickled in the environment."""
    spec = pickle.loads(base64.b64decode(os.environ.pop(_PAYLOAD_ENV)))
    if not isinstance(spec, WorkerSpec):
        raise TypeError(f"{_PAYLOAD_ENV} does not hold a WorkerSpec")
    return serve(spec)
