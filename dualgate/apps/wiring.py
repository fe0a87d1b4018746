"""The request handler of one server, wired from its Config: the applications (under their
mounts), the WSGI thread pool, ASGI lifespan, the metered wiring, the health check, a process
manager's per-request hook, and the connection class (`protocol`: metered, and telling a
process manager of each finished response, each only when asked for).

Built once at start-up, on the server's loop, and taken down once at its end; the server itself
only binds, serves and stops. Nothing here is built that the Config does not ask for, so neither
metrics nor a health check costs a request anything while they are off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from dualgate.apps.loading import LoadedApp, load_app
from dualgate.apps.mounts import MountRouter
from dualgate.asgi.handler import ASGIHandler, Lifespan
from dualgate.config import Config
from dualgate.errors import ConfigError
from dualgate.hooks import ServerHooks
from dualgate.http.connection import HTTPProtocol
from dualgate.http.cycle import RequestCycle
from dualgate.http.state import RequestHandler
from dualgate.logs import error_logger
from dualgate.metrics.answers import health_first
from dualgate.metrics.counters import Metrics
from dualgate.metrics.metered import MeteredHTTPProtocol, tagged
from dualgate.ws.handshake import websockets_unavailable
from dualgate.wsgi.pool import CountingThreadPool, PoolWarning, ThreadPool
from dualgate.wsgi.threads import WSGIHandler

__all__ = ["Wiring"]


class Wiring:
    """What stands between a connection and the applications of one server.

    `healthy` answers --health-path; `on_pool_full` is told when every WSGI thread is busy
    (and then when one is free again) while the hooks ask for `pause_when_busy`.
    """

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        hooks: ServerHooks,
        healthy: Callable[[], bool],
        on_pool_full: Callable[[bool], None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.hooks = hooks
        self.healthy = healthy
        self.on_pool_full = on_pool_full
        # Kept once shut down: the server's stats() still reads its figures.
        self.pool: ThreadPool | None = None
        self.pool_warning: PoolWarning | None = None
        self.serves_asgi = False
        self._lifespans: list[Lifespan] = []
        self._pool_running = False

    async def build(self, loop: asyncio.AbstractEventLoop) -> tuple[RequestHandler, str]:
        """The handler every request goes to, and what it serves in words (for the log)."""
        config = self.config
        handler, description = await self._applications(loop)
        if self.hooks.on_request is not None:
            handler = _counted(handler, self.hooks.on_request)
        if config.health_path is not None:
            # Before everything else: a probe never counts towards --limit-max-requests.
            handler = health_first(config.health_path, handler, self.healthy)
        if self.serves_asgi:
            self._check_websockets()
        if self.pool is not None and config.pool_warning_interval > 0:
            self.pool_warning = PoolWarning(self.pool, config.pool_warning_interval)
        return handler, description

    def protocol(self) -> type[HTTPProtocol]:
        """The class of every application connection: metered.py's while metrics are on, and
        one telling `hooks.on_response` of each finished response only while that is set."""
        http = MeteredHTTPProtocol if self.metrics.metered else HTTPProtocol
        if self.hooks.on_response is None:
            return http
        # A class per server: the hook rides on it, not on every connection.
        reporting = type(
            "Reporting" + http.__name__,
            (_Reporting, http),
            {"_report": staticmethod(self.hooks.on_response)},
        )
        return cast(type[HTTPProtocol], reporting)

    async def stop_lifespans(self) -> None:
        lifespans, self._lifespans = self._lifespans, []
        for lifespan in lifespans:
            await lifespan.shutdown(self.config.timeout_graceful_shutdown)

    async def stop_pool(self) -> None:
        if self.pool is not None and self._pool_running:
            self._pool_running = False
            # Threads still inside an application are daemons; they do not hold the exit.
            await asyncio.get_running_loop().run_in_executor(None, self.pool.shutdown, 1.0)

    async def _applications(self, loop: asyncio.AbstractEventLoop) -> tuple[RequestHandler, str]:
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
            if self.metrics.metered:
                handler = tagged(handler, self.metrics.interface(loaded.interface))
            routes.append((prefix.rstrip("/"), handler))
            kind = "WSGI" if loaded.interface == "wsgi" else "ASGI"
            described.append((prefix, f"{kind} app {loaded.source}"))
        threads = f" ({config.threads} threads)" if self.pool is not None else ""
        if not config.mount:
            return routes[0][1], described[0][1] + threads
        listing = ", ".join(f"{prefix} -> {what}" for prefix, what in described)
        return MountRouter(routes, config.root_path), f"mounts {listing}{threads}"

    async def _handler_for(
        self, loaded: LoadedApp, root_path: str, loop: asyncio.AbstractEventLoop
    ) -> RequestHandler:
        config = self.config
        if loaded.interface == "wsgi":
            if self.pool is None:
                # Metrics on: a pool that also counts the requests that got a thread at once.
                pool_class = CountingThreadPool if self.metrics.metered else ThreadPool
                self.pool = pool_class(config.threads)
                self._pool_running = True
                if self.hooks.pause_when_busy:
                    self.pool.on_full = self.on_pool_full
            return WSGIHandler(
                loaded.app,
                self.pool,
                loop,
                root_path=root_path,
                high_water=config.body_buffer_size,
                worker_wait=config.timeout_worker,
                multiprocess=self.hooks.multiprocess,
                proxy_root=config.root_path,
            )
        self.serves_asgi = True
        lifespan = None
        if config.lifespan != "off":
            lifespan = Lifespan(loaded.app, config.lifespan, loaded.source)
            self._lifespans.append(lifespan)
            await lifespan.startup()
        return ASGIHandler(
            loaded.app,
            root_path,
            lifespan,
            config=config,
            metrics=self.metrics if self.metrics.metered else None,
            proxy_root=config.root_path,
        )

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


def _counted(handler: RequestHandler, on_request: Callable[[RequestCycle], bool]) -> RequestHandler:
    def counted(cycle: RequestCycle) -> None:
        if on_request(cycle):
            handler(cycle)

    return counted


class _Reporting(HTTPProtocol):
    """Tells `_report` of each response as it ends, before the connection moves on (so
    pipelined responses are told in order)."""

    _report: Callable[[RequestCycle], None]

    def response_done(self, cycle: RequestCycle) -> None:
        self._report(cycle)
        super().response_done(cycle)

    def response_failed(self, cycle: RequestCycle) -> None:
        self._report(cycle)
        super().response_failed(cycle)
