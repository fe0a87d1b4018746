"""`WSGIMiddleware`: a WSGI application as an ASGI 3 application, under any ASGI server.

The PEP 3333 rules are those of wsgi.py, the very code the server runs; only the feeding
differs. The request body is read from `receive()` on demand, one message at a time, as the
application reads `wsgi.input` (nothing is buffered ahead, so the ASGI server's own flow
control holds the client back). Each response chunk waits for `send()` to return, so a slow
client slows the application instead of filling memory. Once the request body has been read,
a listener watches for `http.disconnect`, so an application streaming to a vanished client gets
an error on its next chunk and its `close()` runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from typing import Any, cast
from wsgiref.types import WSGIApplication

from dualgate.config import Config
from dualgate.http.flow import resolve
from dualgate.http.paths import strip_root_path
from dualgate.wsgi.bridge import (
    BytesSource,
    ClientDisconnected,
    build_environ,
    path_info_from_raw,
    run_wsgi,
)
from dualgate.wsgi.pool import BUSY_MESSAGE, BUSY_RETRY_AFTER, BUSY_STATUS, WorkerPool

__all__ = ["WSGIMiddleware"]

Message = dict[str, Any]
# Received messages are Mappings, not dicts, so that a framework's receive() returning a
# MutableMapping (Starlette's Receive) type-checks in `Mount("/x", app=WSGIMiddleware(app))`.
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Message], Awaitable[None]]
Head = tuple[int, list[tuple[bytes, bytes]]]

# The same defaults as the server's --threads and --timeout-worker, read from Config's fields
# so that the two cannot drift apart.
_CONFIG_DEFAULTS: dict[str, Any] = {
    field.name: field.default for field in dataclasses.fields(Config)
}
_DEFAULT_THREADS: int = _CONFIG_DEFAULTS["threads"]
_DEFAULT_WORKER_WAIT: float = _CONFIG_DEFAULTS["timeout_worker"]


class WSGIMiddleware:
    """Run `app` (WSGI) for each ASGI `http` request, in a bounded pool of threads.

    `pool` (a `dualgate.WorkerPool`) may be shared between several middlewares; by default
    each middleware starts its own `threads` threads on its first request. A request that
    finds no free thread within `worker_wait` seconds gets 503. The defaults are those of
    `Config.threads` and `Config.timeout_worker`, as for dualgate's own server.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        threads: int = _DEFAULT_THREADS,
        pool: WorkerPool | None = None,
        worker_wait: float = _DEFAULT_WORKER_WAIT,
    ) -> None:
        self.app = app
        self.threads = threads
        self.worker_wait = worker_wait
        self._pool = pool
        self._owns_pool = pool is None

    @property
    def pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self.threads, name="dualgate-wsgi-middleware")
        return self._pool

    def close(self, timeout: float = 1.0) -> None:
        """Stop the threads this middleware started (a pool passed in is left to its owner)."""
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(timeout)

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            self.close()
            return
        if scope["type"] != "http":
            raise RuntimeError(f"WSGIMiddleware serves 'http' scopes, not {scope['type']!r}")
        loop = asyncio.get_running_loop()
        first = await receive()
        exchange = _ASGISide(loop, receive, send)
        if first["type"] == "http.disconnect":
            return
        body = first.get("body", b"")
        if first.get("more_body", False):
            source: Any = _StreamingBody(exchange, body)
        else:
            source = BytesSource(body)
            exchange.watch_disconnect()
        finished: asyncio.Future[None] = loop.create_future()
        sink = _Sink(exchange)
        failure: list[Exception] = []

        pool = self.pool

        def job_done() -> None:
            pool.release()
            resolve(finished)

        def job() -> None:
            try:
                if not exchange.disconnected:
                    # Built here, not on the loop: a head of many thousand header lines costs
                    # milliseconds, which on the loop would stall every other request.
                    environ = _environ(scope, source)
                    run_wsgi(self.app, environ, sink)
            except Exception as exc:
                # A scope the environ cannot be built from: raised out of __call__ below, on
                # the loop, as it would be by any ASGI application.
                failure.append(exc)
            finally:
                loop.call_soon_threadsafe(job_done)

        refused = False

        def refuse() -> None:
            nonlocal refused
            refused = True
            resolve(finished)

        context = contextvars.copy_context()
        pool.submit(functools.partial(context.run, job), refuse, self.worker_wait, loop)
        try:
            # Shielded: if this task is cancelled, the thread still finishes and frees its slot.
            await asyncio.shield(finished)
        finally:
            exchange.stop_watching()
        if failure:
            raise failure[0]
        if refused:
            await _send_busy(send)
            return
        await sink.flush()


class _ASGISide:
    """The ASGI side of one request, reached from the worker thread by posting to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Receive, send: Send) -> None:
        self.loop = loop
        self.receive = receive
        self.send = send
        self.disconnected = False
        self._watcher: asyncio.Task[None] | None = None

    def call(self, coroutine: Any) -> Any:
        """From the worker thread: run `coroutine` on the loop and wait for its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result()

    def watch_disconnect(self) -> None:
        """On the loop, once the body has been read: learn of a disconnect while responding."""
        if self._watcher is None:
            self._watcher = self.loop.create_task(self._watch())

    def watch_from_thread(self) -> None:
        self.loop.call_soon_threadsafe(self.watch_disconnect)

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


class _StreamingBody:
    """wsgi.input's source when the body comes in several ASGI messages."""

    def __init__(self, exchange: _ASGISide, first: bytes) -> None:
        self._exchange = exchange
        self._pending = first
        self._ended = False

    def read(self, size: int) -> bytes:
        while not self._pending and not self._ended:
            message = self._exchange.call(self._exchange.receive())
            if message["type"] == "http.disconnect":
                self._exchange.disconnected = True
                raise ClientDisconnected("the client went away before the request body ended")
            self._pending = message.get("body", b"")
            if not message.get("more_body", False):
                self._ended = True
                self._exchange.watch_from_thread()
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data


class _Sink:
    """The bridge's ResponseSink over ASGI send(). A small response is sent after the
    application returns, on the loop, without crossing threads again."""

    def __init__(self, exchange: _ASGISide) -> None:
        self._exchange = exchange
        self._head: Head | None = None
        self._tail: bytes | None = None
        self._aborted = False
        self._started = False

    def start(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        # The ASGI spec (http.response.start) wants lower-cased header names; WSGI apps send
        # "Content-Type", which ASGI middleware looking up b"content-type" would miss.
        self._head = (status, [(name.lower(), value) for name, value in headers])

    def write(self, data: bytes) -> None:
        if self._exchange.disconnected:
            raise ClientDisconnected("the client went away")
        try:
            self._exchange.call(self._send(data, more=True))
        except OSError as exc:
            raise ClientDisconnected(str(exc)) from exc
        if self._exchange.disconnected:
            raise ClientDisconnected("the client went away")

    def sendfile(self, file: Any, offset: int, count: int) -> bool:
        return False

    def end(self, data: bytes) -> None:
        self._tail = data

    def abort(self) -> None:
        self._aborted = True

    async def _send(self, data: bytes, more: bool) -> None:
        head, self._head = self._head, None
        if head is not None:
            self._started = True
            status, headers = head
            await self._exchange.send(
                {"type": "http.response.start", "status": status, "headers": headers}
            )
        await self._exchange.send({"type": "http.response.body", "body": data, "more_body": more})

    async def flush(self) -> None:
        """On the loop, after the application returned: send what `end` left, or break off."""
        if self._aborted or self._tail is None:
            if self._started and not self._exchange.disconnected:
                # An ASGI server closes the connection when the application raises mid-response.
                raise ClientDisconnected("WSGI response broken off")
            return
        try:
            await self._send(self._tail, more=False)
        except OSError:
            if not self._exchange.disconnected:
                raise


async def _send_busy(send: Send) -> None:
    body = BUSY_MESSAGE.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": BUSY_STATUS,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                BUSY_RETRY_AFTER,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _environ(scope: Any, source: Any) -> dict[str, Any]:
    root_path = cast(str, scope.get("root_path", ""))
    path = cast(str, scope["path"])
    raw_path = scope.get("raw_path")
    script_name = root_path.encode("utf-8").decode("latin-1")
    if raw_path and not root_path:
        path_info = path_info_from_raw(raw_path.partition(b"?")[0])
    else:
        # Under a mount, raw_path still carries the prefix; the decoded path is the reliable one.
        rest = strip_root_path(path, root_path)
        if rest is not None:
            path = rest
        path_info = path.encode("utf-8").decode("latin-1")
    client = scope.get("client")
    server = scope.get("server")
    return build_environ(
        method=scope["method"],
        script_name=script_name,
        path_info=path_info,
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=scope["headers"],
        http_version=scope.get("http_version", "1.1"),
        scheme=scope.get("scheme", "http"),
        client=(client[0], client[1]) if client else None,
        server=(server[0], server[1]) if server else None,
        body=source,
    )
