"""`Server`: binds, serves, and stops gracefully; `run()` for the common case.

The server owns everything that lives as long as it does: the listening sockets, the live
connections (through ServerState), the worker pool, the once-a-second Date header, the TLS
context holder (SIGHUP reloads its files), and the signal handlers. `started` tells an
embedding program (or a test) when the sockets are bound and which address they got;
`shutdown()` asks for a graceful stop from any thread.

It also owns what it counts (metrics.py) and `stats()`, the snapshot of it. With
--metrics-address it builds the metered wiring (metered.py) instead of the plain one, and a
listener of its own for `GET /metrics`, answered on the loop (endpoint.py) and kept open until
the drain is over; with --health-path, `health_first` stands before the application's handler.
Neither is built otherwise, so neither costs a request anything then.

A process manager (supervisor.py's workers, the gunicorn worker class, systemd) hands the server
already-bound `sockets` and `ServerHooks`: callbacks on the loop for readiness, a heartbeat,
each request and the start of a stop, and which signals stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualgate.asgi.handler import ASGIHandler, Lifespan
from dualgate.config import Config, ConfigError, LoadedApp, load_app, parse_host_port
from dualgate.edge.preamble import EdgeProtocol
from dualgate.edge.tls import TLSContextHolder
from dualgate.http.connection import HTTPProtocol
from dualgate.http.cycle import RequestCycle
from dualgate.http.state import RequestHandler, ServerState
from dualgate.logs import error_logger
from dualgate.logsetup import configure_logging
from dualgate.metrics.answers import MetricsEndpoint, health_first
from dualgate.metrics.counters import Metrics
from dualgate.metrics.metered import LagProbe, MeteredHTTPProtocol, tagged
from dualgate.metrics.snapshot import Stats
from dualgate.mounts import MountRouter
from dualgate.net.acceptor import Acceptor
from dualgate.version import __version__
from dualgate.ws.handshake import websockets_unavailable
from dualgate.wsgi.pool import CountingWorkerPool, PoolWarning, WorkerPool
from dualgate.wsgi.threads import WSGIHandler

__all__ = ["Server", "ServerHooks", "run"]

_SHUTDOWN_POLL = 0.05


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
    # Stop accepting while every WSGI thread is busy, so a sibling process sharing the socket
    # takes the connection instead of it queueing here.
    pause_when_busy: bool = False
    # wsgi.multiprocess: other processes serve the same application at the same time.
    multiprocess: bool = False
    # The first of these stops gracefully and a second one forces; `force_signals` force at once.
    graceful_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    force_signals: tuple[int, ...] = ()
    # Told of each of those signals before the server acts on it.
    on_signal: Callable[[int], None] | None = None
    # With --metrics-address: False counts every figure but binds no metrics listener (a
    # worker process, whose supervisor serves the figures of all its workers).
    serve_metrics: bool = True


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
        self._listeners: list[asyncio.Server] = []
        self._acceptors: list[Acceptor] = []
        # Connections nothing has arrived on yet, and when they were accepted.
        self._pool: WorkerPool | None = None
        self._lifespans: list[Lifespan] = []
        self._serves_asgi = False
        self._tls: TLSContextHolder | None = None
        self.state: ServerState | None = None
        self._metrics = Metrics(metered=config.metrics_address is not None)
        # The pool as stats() reads it, kept after the pool itself is shut down.
        self._pool_for_stats: WorkerPool | None = None
        self._metrics_state: ServerState | None = None
        self._metrics_listener: asyncio.Server | None = None
        self.metrics_addresses: list[Any] = []
        self._lag: LagProbe | None = None
        self._pool_warning: PoolWarning | None = None

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
            self._beat(loop, self.hooks.heartbeat, self.hooks.heartbeat_interval)
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
        pool = self._pool_for_stats
        return self._metrics.snapshot(
            connections_open=len(state.connections) if state is not None else 0,
            shutting_down=not self._healthy(),
            pool=pool.figures() if pool is not None else None,
        )

    def _healthy(self) -> bool:
        """Serving, and not asked to stop: what --health-path answers."""
        state = self.state
        return not self._stop_requested and not (state is not None and state.shutting_down)

    def shutdown(self, force: bool = False) -> None:
        """Ask for a graceful stop; safe from any thread, and before the loop has started."""
        self._force = self._force or force
        self._stop_requested = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    # -- start-up -----------------------------------------------------------------------

    async def _startup(self, loop: asyncio.AbstractEventLoop) -> None:
        config = self.config
        # First, so a certificate that cannot be used stops the start before the app loads.
        if config.ssl_certfile is not None:
            self._tls = TLSContextHolder(config)
        handler, description = await self._build_handler(loop)
        if self.hooks.on_request is not None:
            handler = _counted(handler, self.hooks.on_request)
        if config.health_path is not None:
            # Before everything else: a probe never counts towards --limit-max-requests.
            handler = health_first(config.health_path, handler, self._healthy)
        if self._serves_asgi:
            self._check_websockets()
        metrics = self._metrics
        self.state = state = ServerState(config, handler, self._tls, metrics)
        http = MeteredHTTPProtocol if metrics.metered else HTTPProtocol
        listen: dict[str, Any] = {"backlog": config.backlog}
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
                listen["ssl"] = self._tls.listener_context
                listen["ssl_handshake_timeout"] = config.timeout_request_head

        if self.sockets:
            await self._serve_sockets(loop, protocol_factory, listen)
            listener = None
        elif config.uds is not None:
            if os.path.exists(config.uds) and _is_socket(config.uds):
                os.unlink(config.uds)
            listener = await loop.create_unix_server(protocol_factory, config.uds, **listen)
        elif config.fd is not None:
            sock = socket.socket(fileno=config.fd)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                listener = await loop.create_server(protocol_factory, sock=sock, **listen)
            else:
                listener = await loop.create_unix_server(protocol_factory, sock=sock, **listen)
        else:
            listener = await loop.create_server(
                protocol_factory, config.host, config.port, reuse_address=True, **listen
            )
        if listener is not None:
            self._listeners.append(listener)
            self.addresses = [sock.getsockname() for sock in listener.sockets]
        self._tick_date(loop)
        self._sweep_deadlines(loop, _sweep_interval(config))
        if metrics.metered:
            self._lag = LagProbe(loop, metrics.loop_lag)
            self._lag.start()
        if self._pool is not None and config.pool_warning_interval > 0:
            self._pool_warning = PoolWarning(self._pool, config.pool_warning_interval)
            self._watch_pool(loop)
        scheme = "https" if self._tls is not None else "http"
        for address in self.addresses:
            error_logger.info(
                "dualgate %s: Serving %s on %s",
                __version__,
                description,
                _format_address(address, scheme),
            )
        if metrics.metered and self.hooks.serve_metrics:
            await self._serve_metrics(loop)

    async def _serve_metrics(self, loop: asyncio.AbstractEventLoop) -> None:
        """The metrics listener: the HTTP core with a handler that answers on the loop, its own
        connections (not counted among the application's) and no access log."""
        config = self.config
        assert config.metrics_address is not None
        endpoint = MetricsEndpoint(self.stats, config.health_path, self._healthy)
        self._metrics_state = state = ServerState(config, endpoint)
        state.access_log = False
        host, port = parse_host_port(config.metrics_address)
        self._metrics_listener = listener = await loop.create_server(
            lambda: HTTPProtocol(state, loop), host, port, reuse_address=True
        )
        self.metrics_addresses = [sock.getsockname() for sock in listener.sockets]
        for address in self.metrics_addresses:
            error_logger.info("Metrics on %s/metrics", _format_address(address, "http"))

    async def _serve_sockets(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        listen: dict[str, Any],
    ) -> None:
        for sock in self.sockets:
            if self.hooks.pause_when_busy:
                # One connection per wake-up: every worker sharing the socket is woken by a new
                # connection, and one that took the whole queue at once took 99 of 100
                # connections opened together (one at a time: about 35 and 65).
                tls = {key: value for key, value in listen.items() if key.startswith("ssl")}
                acceptor = Acceptor(loop, sock, protocol_factory, batch=1, **tls)
                acceptor.start()
                self._acceptors.append(acceptor)
            elif sock.family == socket.AF_UNIX:
                self._listeners.append(
                    await loop.create_unix_server(protocol_factory, sock=sock, **listen)
                )
            else:
                self._listeners.append(
                    await loop.create_server(protocol_factory, sock=sock, **listen)
                )
        self.addresses = [sock.getsockname() for sock in self.sockets]

    def _on_pool_full(self, full: bool) -> None:
        if self.state is not None and self.state.shutting_down:
            return
        for acceptor in self._acceptors:
            if full:
                acceptor.pause()
            else:
                acceptor.resume()

    async def _build_handler(self, loop: asyncio.AbstractEventLoop) -> tuple[RequestHandler, str]:
        config = self.config
        mounts: list[tuple[str, str | Callable[..., Any]]] = [
            (prefix, target) for prefix, _, target in (e.partition("=") for e in config.mount)
        ]
        if config.app is not None:
            mounts.append(("/", config.app))
        routes: list[tuple[str, RequestHandler]] = []
        described = []
        for prefix, target in mounts:
            loaded = load_app(target, config)
            root_path = config.root_path + prefix.rstrip("/")
            handler = await self._handler_for(loaded, root_path, loop)
            if self._metrics.metered:
                handler = tagged(handler, self._metrics.interface(loaded.interface))
            routes.append((prefix.rstrip("/"), handler))
            kind = "WSGI" if loaded.interface == "wsgi" else "ASGI"
            described.append((prefix, f"{kind} app {loaded.source}"))
        threads = f" ({config.threads} threads)" if self._pool is not None else ""
        if not config.mount:
            return routes[0][1], described[0][1] + threads
        listing = ", ".join(f"{prefix} -> {what}" for prefix, what in described)
        return MountRouter(routes), f"mounts {listing}{threads}"

    async def _handler_for(
        self, loaded: LoadedApp, root_path: str, loop: asyncio.AbstractEventLoop
    ) -> RequestHandler:
        config = self.config
        if loaded.interface == "wsgi":
            if self._pool is None:
                # Metrics on: a pool that also counts the requests that got a thread at once.
                pool_class = CountingWorkerPool if self._metrics.metered else WorkerPool
                self._pool = self._pool_for_stats = pool_class(config.threads)
                if self.hooks.pause_when_busy:
                    self._pool.on_full = self._on_pool_full
            return WSGIHandler(
                loaded.app,
                self._pool,
                loop,
                root_path=root_path,
                high_water=config.body_buffer_size,
                worker_wait=config.timeout_worker,
                multiprocess=self.hooks.multiprocess,
            )
        self._serves_asgi = True
        lifespan = None
        if config.lifespan != "off":
            lifespan = Lifespan(loaded.app, config.lifespan, loaded.source)
            self._lifespans.append(lifespan)
            await lifespan.startup()
        return ASGIHandler(loaded.app, root_path, lifespan)

    def _check_websockets(self) -> None:
        """WebSockets for ASGI apps need wsproto: required with --ws wsproto, said once if not."""
        if self.config.ws == "none":
            return
        why = websockets_unavailable(self.config)
        if why is None:
            return
        if self.config.ws == "wsproto":
            raise ConfigError(f"--ws wsproto: {why}")
        error_logger.info("%s; WebSocket requests get an HTTP 400 answer", why)

    def _sweep_deadlines(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        state = self.state
        if state is None or (state.shutting_down and not state.connections):
            return
        now = loop.time()
        for connection in list(state.connections):
            connection.check_deadline(now)
        if self._metrics_state is not None:
            for connection in list(self._metrics_state.connections):
                connection.check_deadline(now)
        loop.call_later(interval, self._sweep_deadlines, loop, interval)

    def _watch_pool(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pool is None or self._pool_warning is None:
            return
        self._pool_warning.check(time.monotonic())
        loop.call_later(1.0, self._watch_pool, loop)

    def _beat(
        self, loop: asyncio.AbstractEventLoop, heartbeat: Callable[[], None], interval: float
    ) -> None:
        heartbeat()
        loop.call_later(interval, self._beat, loop, heartbeat, interval)

    def _tick_date(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.state is not None and not self.state.shutting_down:
            self.state.update_date()
            if self._metrics_state is not None:
                self._metrics_state.update_date()
            loop.call_later(1.0, self._tick_date, loop)

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
        if self._metrics_listener is not None:
            self._metrics_listener.close()
            self._metrics_listener = None
        if self._metrics_state is not None:
            for connection in list(self._metrics_state.connections):
                connection.force_close()
        lifespans, self._lifespans = self._lifespans, []
        for lifespan in lifespans:
            await lifespan.shutdown(self.config.timeout_graceful_shutdown)
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for acceptor in self._acceptors:
            await acceptor.close()
        self._acceptors.clear()
        if (
            not self.sockets
            and self.config.uds is not None
            and os.path.exists(self.config.uds)
            and _is_socket(self.config.uds)
        ):
            os.unlink(self.config.uds)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # Threads still inside an application are daemons; they do not hold the exit.
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, 1.0)

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


def _counted(handler: RequestHandler, on_request: Callable[[RequestCycle], bool]) -> RequestHandler:
    def counted(cycle: RequestCycle) -> None:
        if on_request(cycle):
            handler(cycle)

    return counted


def _sweep_interval(config: Config) -> float:
    """How often connection deadlines are checked: a timeout fires at most a quarter late."""
    shortest = min(config.timeout_keep_alive, config.timeout_request_head, config.timeout_read)
    return min(1.0, max(0.01, shortest / 4))


def _is_socket(path: str) -> bool:
    import stat

    return stat.S_ISSOCK(os.stat(path).st_mode)


def _format_address(address: Any, scheme: str) -> str:
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"{scheme}://{host}:{address[1]}"
    return f"unix:{address}" + (" (TLS)" if scheme == "https" else "")


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


def run(app: str | Callable[..., Any], **options: Any) -> int:
    """Serve `app` (a callable or "module:attr") with the given Config options until stopped.

    With `workers` or `reload`, a supervisor runs the server in worker processes.
    """
    from dualgate.launch import serve_config

    return serve_config(Config(app=app, **options))
