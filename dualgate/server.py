"""`Server`: binds, serves, and stops gracefully; `run()` for the common case.

The server owns everything that lives as long as it does: the listening sockets, the live
connections (through ServerState), the worker pool, the once-a-second Date header, the TLS
context holder (SIGHUP reloads its files), and the signal handlers. `started` tells an
embedding program (or a test) when the sockets are bound and which address they got;
`shutdown()` asks for a graceful stop from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from dualgate.asgi import ASGIHandler, Lifespan
from dualgate.config import Config, ConfigError, LoadedApp, load_app
from dualgate.edge import EdgeProtocol
from dualgate.logs import configure_logging, error_logger
from dualgate.mounts import MountRouter
from dualgate.protocol import HTTPProtocol
from dualgate.state import RequestHandler, ServerState
from dualgate.tls import TLSContextHolder
from dualgate.workers import WorkerPool, WSGIHandler

__all__ = ["Server", "run"]

_SHUTDOWN_POLL = 0.05


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = threading.Event()
        self.addresses: list[Any] = []
        self.startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._force = False
        self._stop_requested = False
        self._listeners: list[asyncio.Server] = []
        self._pool: WorkerPool | None = None
        self._lifespans: list[Lifespan] = []
        self._tls: TLSContextHolder | None = None
        self.state: ServerState | None = None

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
        configure_logging(self.config.log_level, self.config.access_log)
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
        try:
            await self._stop.wait()
        finally:
            await self._graceful_stop()
            self._remove_signal_handlers(loop)

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
        self.state = state = ServerState(config, handler, self._tls)
        listen: dict[str, Any] = {"backlog": config.backlog}
        protocol_factory: Callable[[], asyncio.BaseProtocol]
        if config.proxy_protocol:
            # The PROXY header comes before any TLS byte: edge.py reads it, then runs TLS itself.
            def protocol_factory() -> asyncio.BaseProtocol:
                return EdgeProtocol(state, loop)

        else:

            def protocol_factory() -> asyncio.BaseProtocol:
                return HTTPProtocol(state, loop)

            if self._tls is not None:
                # The handshake counts against the request-head deadline.
                listen["ssl"] = self._tls.listener_context
                listen["ssl_handshake_timeout"] = config.timeout_request_head

        if config.uds is not None:
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
        self._listeners.append(listener)
        self.addresses = [sock.getsockname() for sock in listener.sockets]
        self._tick_date(loop)
        self._sweep_deadlines(loop, _sweep_interval(config))
        scheme = "https" if self._tls is not None else "http"
        for address in self.addresses:
            error_logger.info("Serving %s on %s", description, _format_address(address, scheme))

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
            routes.append((prefix.rstrip("/"), await self._handler_for(loaded, root_path, loop)))
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
                self._pool = WorkerPool(config.threads)
            return WSGIHandler(
                loaded.app,
                self._pool,
                loop,
                root_path=root_path,
                high_water=config.body_buffer_size,
                worker_wait=config.timeout_worker,
            )
        lifespan = None
        if config.lifespan != "off":
            lifespan = Lifespan(loaded.app, config.lifespan, loaded.source)
            self._lifespans.append(lifespan)
            await lifespan.startup()
        return ASGIHandler(loaded.app, root_path, lifespan)

    def _sweep_deadlines(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        state = self.state
        if state is None or (state.shutting_down and not state.connections):
            return
        now = loop.time()
        for connection in list(state.connections):
            connection.check_deadline(now)
        loop.call_later(interval, self._sweep_deadlines, loop, interval)

    def _tick_date(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.state is not None and not self.state.shutting_down:
            self.state.update_date()
            loop.call_later(1.0, self._tick_date, loop)

    # -- stopping -----------------------------------------------------------------------

    async def _graceful_stop(self) -> None:
        state = self.state
        if state is not None:
            state.shutting_down = True
        for listener in self._listeners:
            listener.close()
        if state is not None:
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
        lifespans, self._lifespans = self._lifespans, []
        for lifespan in lifespans:
            await lifespan.shutdown(self.config.timeout_graceful_shutdown)
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        if (
            self.config.uds is not None
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
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._on_signal, signum)
        if self._tls is not None:
            # Without TLS, SIGHUP keeps its default meaning: nothing is reloadable.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.reload_tls)

    def _remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self._stop is not None and self._stop.is_set():
            error_logger.info("Second %s: closing all connections now", signal.Signals(signum).name)
            self._force = True
            return
        error_logger.info("%s received: shutting down gracefully", signal.Signals(signum).name)
        self.shutdown()


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
    """Serve `app` (a callable or "module:attr") with the given Config options until stopped."""
    return Server(Config(app=app, **options)).run()
