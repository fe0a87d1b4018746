"""ASGI 3 on the HTTP core: the request scope, receive()/send() over a RequestCycle, lifespan.

Rules of this file:
- Everything runs on the event loop; an ASGI request is one task.
- `send()` refuses messages out of order with a RuntimeError naming what was expected. The head
  is held until the first body message so a small response goes out in one write.
- `receive()` hands out what the cycle has buffered (the loop stops reading the socket while it
  is not taken), then `http.disconnect` once the client has gone or the response is complete.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote

from asgiref.typing import ASGI3Application, HTTPScope

from dualgate.errors import LifespanFailure
from dualgate.http.cycle import RequestCycle
from dualgate.http.flow import SENDS_PER_TURN
from dualgate.http.grammar import asgi_headers
from dualgate.http.paths import strip_root_path
from dualgate.logs import error_logger
from dualgate.ws.handshake import websockets_unavailable

if TYPE_CHECKING:
    from dualgate.config import Config
    from dualgate.http.state import ServerState
    from dualgate.metrics.counters import Metrics

__all__ = ["ASGIHandler", "Lifespan", "LifespanFailure", "build_scope", "run_asgi"]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
Message = dict[str, Any]


class ClientGone(OSError):
    """send() after the client disconnected (the ASGI spec asks for an OSError subclass)."""


def asgi_client(cycle: RequestCycle) -> tuple[str, int] | None:
    client = cycle.client
    if client is None or client[1] is not None:
        # The connection's own tuple, shared by its requests (a tuple: no request can change it).
        return client  # type: ignore[return-value]  # its port is an int here (no cast: a call)
    return (client[0], 0)  # a forwarded address may come without a port


def build_scope(
    cycle: RequestCycle,
    root_path: str,
    state: dict[str, Any] | None,
    proxy_root: str | None = None,
) -> HTTPScope:
    """`proxy_root`: the part of `root_path` a proxy in front may strip (the server's root
    path, without the --mount prefix); all of it when None.

    The same scope as asgi/scope.py's `connection_scope` builds (which WebSocket scopes still
    use), inlined: this runs once per request, and one literal costs a third of the calls."""
    request = cycle.request
    # asgi_client's answer, inline: the connection's own tuple, or a forwarded one given port 0.
    client = cycle.client
    raw_path, _, query = request.target.partition(b"?")
    path = raw_path.decode("ascii", "surrogateescape")
    if "%" in path:
        path = unquote(path)
    stripped = root_path if proxy_root is None else proxy_root
    if stripped and strip_root_path(path, stripped) is None:
        # Behind a proxy that strips the prefix, the full path is the prefix plus what came.
        path = stripped + path
        raw_path = stripped.encode("utf-8") + raw_path
    extensions: dict[str, Any] = {"http.response.pathsend": {}}
    if cycle.tls is not None:
        extensions["tls"] = cycle.tls
    scope = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": request.http_version.decode("ascii"),
        "scheme": cycle.scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": request.headers,
        "client": client if client is None or client[1] is not None else (client[0], 0),
        "server": cycle.server,
        "method": request.method.decode("ascii"),
        "extensions": extensions,
    }
    if state is not None:
        # Each request gets a shallow copy of the lifespan state (the ASGI spec's words).
        scope["state"] = state.copy()
    return scope  # type: ignore[return-value]  # an HTTPScope (no cast: a call per request)


class _Exchange:
    """One request's task body (`run`), and the receive() and send() its application is given,
    over its RequestCycle.

    Per request: this object, the scope, the task and its coroutine; a future only while
    receive() or send() must wait (for body bytes, the end, or the transport to drain).
    """

    __slots__ = ("_body_done", "_cycle", "_head", "_task", "_unyielded", "_wake_receiver")

    def __init__(self, cycle: RequestCycle) -> None:
        self._cycle = cycle
        self._unyielded = 0  # body sends since the task last gave the loop a turn
        self._head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._body_done = False
        # Wakes a receive() waiting for the end: set on disconnect, or when send() completes.
        self._wake_receiver: Callable[[], None] | None = None
        # The task running `run`, which it leaves `tasks` with (set by whoever makes the task).
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """http.response.start was sent (its head may still be held for the first body)."""
        return self._head is not None or self._cycle.head_sent

    async def run(
        self, app: ASGI3Application, scope: HTTPScope, tasks: set[asyncio.Task[None]]
    ) -> None:
        """Run the application; errors become a 500 or a broken-off response. Leaves `tasks`
        as its last step (no done callback: that would cost a loop callback per request)."""
        cycle = self._cycle
        try:
            try:
                await app(scope, self.receive, self.send)  # type: ignore[arg-type]
            except ClientGone:
                pass
            except Exception:
                error_logger.exception("Exception in ASGI application %s", scope["path"])
                cycle.respond_error(500, "Internal Server Error\n")
                return
            if not cycle.complete:
                self._incomplete()
        finally:
            # Set by whoever made the task, before it first ran.
            tasks.discard(self._task)

    def _incomplete(self) -> None:
        cycle = self._cycle
        if cycle.disconnected:
            # The client went away: returning without an answer is what the application
            # should do then, not an error. Aborted as WSGI's bridge does (the access line).
            cycle.abort()
        elif not self.started:
            error_logger.error("ASGI application returned without starting a response")
            cycle.respond_error(500, "Internal Server Error\n")
        else:
            error_logger.error("ASGI application returned without completing its response")
            cycle.abort()

    @staticmethod
    def _waiter() -> tuple[asyncio.Future[None], Callable[[], None]]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        return future, wake

    async def receive(self) -> Message:
        cycle = self._cycle
        while not self._body_done:
            if cycle.disconnected or cycle.complete:
                break
            data, more = cycle.take_body()
            if data or not more:
                self._body_done = not more
                if cycle.disconnected and not cycle.body_complete:
                    break
                return {"type": "http.request", "body": data, "more_body": more}
            future, wake = self._waiter()
            cycle.when_body_ready(wake)
            await future
        while not (cycle.disconnected or cycle.complete or cycle.client_closed):
            future, wake = self._waiter()
            cycle.when_disconnected(wake)
            self._wake_receiver = wake
            await future
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        cycle = self._cycle
        head = self._head
        if head is not None and not cycle.complete:
            # The common case first: the body after the start, whole (more_body false), goes
            # out with the head in one write.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                body = message.get("body", b"")
                if type(body) is not bytes:
                    body = _body_bytes(body)
                self._head = None
                cycle.respond(head[0], head[1], body)  # and finishes the response
                if self._wake_receiver is not None:
                    self._wake_receiver()
                if cycle.disconnected:
                    raise ClientGone("the client went away")
                return
        elif head is None and not cycle.head_sent:
            kind = message["type"]
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            status = message.get("status")
            if type(status) is not int or not 100 <= status <= 999:
                raise ValueError(
                    f"http.response.start 'status' must be an int status code, got {status!r}"
                )
            self._head = (status, asgi_headers(message.get("headers", ())))
            return
        await self._send_more(message)

    async def _send_more(self, message: Message) -> None:
        """send() of everything but the start and a whole body after it."""
        cycle = self._cycle
        kind = message["type"]
        if cycle.complete:
            if cycle.disconnected:
                raise ClientGone("the client went away")
            raise RuntimeError(f"{kind!r} sent after the response was complete")
        if kind == "http.response.body":
            body = message.get("body", b"")
            if type(body) is not bytes:
                body = _body_bytes(body)
            more = message.get("more_body", False)
            self._flush_head()
            cycle.send_body(body)
            if not more:
                self._finish()
            elif cycle.writing_paused:
                future, wake = self._waiter()
                cycle.when_writable(wake)
                await future
                self._unyielded = 0
            else:
                self._unyielded += 1
                if self._unyielded >= SENDS_PER_TURN:  # a loop turn: http/flow.py says why
                    self._unyielded = 0
                    await asyncio.sleep(0)
        elif kind == "http.response.pathsend":
            self._flush_head()
            await self._send_path(message["path"])
            self._finish()
        else:
            raise RuntimeError(
                f"expected 'http.response.body' or 'http.response.pathsend', got {kind!r}"
            )
        if cycle.disconnected:
            raise ClientGone("the client went away")

    def _flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self._cycle.send_head(*head)

    def _finish(self) -> None:
        self._cycle.finish()
        if self._wake_receiver is not None:
            self._wake_receiver()

    async def _send_path(self, path: str) -> None:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            await self._cycle.sendfile(file, 0, size)


def _body_bytes(body: object) -> bytes:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"http.response.body 'body' must be bytes, not {type(body).__name__}")
    return bytes(body)


async def run_asgi(app: ASGI3Application, scope: HTTPScope, cycle: RequestCycle) -> None:
    """Run one request through an ASGI application (outside the handler: a router's own use);
    errors become a 500 or a broken-off response."""
    tasks: set[asyncio.Task[None]] = set()
    exchange = _Exchange(cycle)
    exchange._task = asyncio.current_task()
    await exchange.run(app, scope, tasks)


class ASGIHandler:
    """Serves each RequestCycle by running an ASGI application as a task on the loop."""

    def __init__(
        self,
        app: ASGI3Application,
        root_path: str,
        lifespan: Lifespan | None,
        *,
        config: Config,
        metrics: Metrics | None = None,
        proxy_root: str | None = None,
    ) -> None:
        """`metrics`: the server's, only while metrics are on (a WebSocket counts its answer).
        `proxy_root`: the part of `root_path` a proxy may strip (build_scope)."""
        self.app = app
        self.root_path = root_path
        self.lifespan = lifespan
        self.config = config
        self.metrics = metrics
        self.proxy_root = root_path if proxy_root is None else proxy_root
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, cycle: RequestCycle) -> None:
        state = (
            self.lifespan.state if self.lifespan is not None and self.lifespan.supported else None
        )
        if cycle.request.upgrade == b"websocket" and cycle.request.method == b"GET":
            self._upgrade(cycle, state)
            return
        scope = build_scope(cycle, self.root_path, state, self.proxy_root)
        tasks = self._tasks
        exchange = _Exchange(cycle)
        # The loop keeps only weak references to tasks; the task leaves the set as it ends.
        task = asyncio.get_running_loop().create_task(exchange.run(self.app, scope, tasks))
        exchange._task = task
        tasks.add(task)

    def _upgrade(self, cycle: RequestCycle, state: dict[str, Any] | None) -> None:
        unavailable = websockets_unavailable(self.config)
        if unavailable is not None:
            # The client meant to leave HTTP on this connection: it ends with the answer.
            cycle.respond_error(400, unavailable + "\n", close=True)
            return
        from dualgate.ws.protocol import WebSocketProtocol  # wsproto is an optional extra

        request = cycle.request
        stripped = self.proxy_root
        if stripped != self.root_path:
            # Under a --mount, the WebSocket scope puts back only the whole root path; a proxy
            # may have stripped just the server's part of it: that part goes back here.
            path = unquote(request.target.partition(b"?")[0].decode("ascii", "surrogateescape"))
            if strip_root_path(path, stripped) is None:
                request = request.with_target(quote(stripped, safe="/").encode() + request.target)

        def takeover(server_state: ServerState) -> asyncio.BaseProtocol:
            return WebSocketProtocol(
                request,
                state=server_state,
                client=asgi_client(cycle),
                server=cycle.server,
                scheme="wss" if cycle.scheme == "https" else "ws",
                app=self.app,
                root_path=self.root_path,
                lifespan_state=state,
            )

        cycle.upgrade(takeover)


class Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after."""

    def __init__(self, app: ASGI3Application, mode: str, name: str = "application") -> None:
        self.app = app
        self.mode = mode
        self.name = name
        self.state: dict[str, Any] = {}
        self.supported = True
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._replies: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._events.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply is None:
            if self.mode == "on":
                raise LifespanFailure(f"lifespan startup of {self.name} failed: {self._error!r}")
            self.supported = False
            error_logger.info("%s does not support ASGI lifespan; serving without it", self.name)
            return
        if reply["type"] == "lifespan.startup.failed":
            raise LifespanFailure(f"startup of {self.name} failed: {reply.get('message', '')}")
        if reply["type"] != "lifespan.startup.complete":
            raise LifespanFailure(f"unexpected lifespan message during startup: {reply['type']!r}")

    async def shutdown(self, timeout: float) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._events.put({"type": "lifespan.shutdown"})
        try:
            reply = await asyncio.wait_for(self._reply(), timeout)
        except TimeoutError:
            error_logger.error("lifespan shutdown of %s did not finish in %gs", self.name, timeout)
            self._task.cancel()
            return
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            error_logger.error("shutdown of %s failed: %s", self.name, reply.get("message", ""))

    async def _reply(self) -> Message | None:
        """The app's next message, or None when it ended (or raised) instead of answering."""
        assert self._task is not None
        getter = asyncio.ensure_future(self._replies.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        return None

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(cast(Any, scope), self._receive, self._send)  # type: ignore[arg-type]
        except BaseException as exc:
            self._error = exc
            if self.mode == "on" or not isinstance(exc, Exception):
                error_logger.error("lifespan of %s raised", self.name, exc_info=exc)
            else:
                error_logger.debug("lifespan of %s raised", self.name, exc_info=exc)

    async def _receive(self) -> Message:
        return await self._events.get()

    async def _send(self, message: Message) -> None:
        await self._replies.put(copy.copy(message))
