"""dualgate.WSGIMiddleware, message by message, with asgiref's ApplicationCommunicator.

The ASGI side is checked against the ASGI HTTP spec (2.4), the WSGI side against PEP 3333.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from dualgate import ThreadPool, WSGIMiddleware
from dualgate.wsgi.bridge import build_environ
from tests.conftest import Message, Receive, Scope, Send

WAIT = 5.0
StartResponse = Callable[..., Any]
Environ = dict[str, Any]


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    root_path: str = "",
    raw_path: bytes | None = None,
    query_string: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "root_path": root_path,
        "query_string": query_string,
        "headers": headers or [(b"host", b"example.test")],
        "client": ("10.1.2.3", 40404),
        "server": ("example.test", 8080),
    }


class Communicator:
    """A typed face on asgiref's ApplicationCommunicator (which has no annotations)."""

    def __init__(self, app: Any, scope: Scope) -> None:
        self._inner = ApplicationCommunicator(app, scope)  # type: ignore[no-untyped-call]

    async def send(self, message: Message) -> None:
        await self._inner.send_input(message)  # type: ignore[no-untyped-call]

    async def receive(self, timeout: float = WAIT) -> Message:
        message: Message = await self._inner.receive_output(timeout)  # type: ignore[no-untyped-call]
        return message

    async def wait(self, timeout: float = WAIT) -> None:
        await self._inner.wait(timeout)  # type: ignore[no-untyped-call]

    async def response(self) -> tuple[Message, bytes, list[Message]]:
        """The start message, the whole body, and every body message."""
        start = await self.receive()
        assert start["type"] == "http.response.start", start
        bodies: list[Message] = []
        while True:
            message = await self.receive()
            assert message["type"] == "http.response.body", message
            bodies.append(message)
            if not message.get("more_body", False):
                break
        return start, b"".join(message.get("body", b"") for message in bodies), bodies


@pytest.fixture
def middlewares() -> Iterator[list[WSGIMiddleware]]:
    """Middlewares made by a test; their own worker pools are shut down afterwards."""
    made: list[WSGIMiddleware] = []
    yield made
    for middleware in made:
        if middleware._pool is not None:
            middleware._pool.shutdown(WAIT)


def environ_app(seen: list[Environ]) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        seen.append(dict(environ, body=body))
        start_response(
            "201 Created",
            [("Content-Type", "text/plain"), ("X-Thing", "a"), ("X-Thing", "b")],
        )
        return [b"got " + body]

    return app


@pytest.mark.asyncio
async def test_body_in_several_messages_and_the_response_messages(
    middlewares: list[WSGIMiddleware],
) -> None:
    seen: list[Environ] = []
    middleware = WSGIMiddleware(environ_app(seen))
    middlewares.append(middleware)
    scope = http_scope(
        "/app/sub/x y",
        method="POST",
        root_path="/app",
        raw_path=b"/app/sub/x%20y",
        query_string=b"a=1&b=%20",
        headers=[
            (b"host", b"example.test"),
            (b"content-type", b"text/plain"),
            (b"x-multi", b"one"),
            (b"x-multi", b"two"),
        ],
    )
    communicator = Communicator(middleware, scope)
    for part, more in ((b"hello ", True), (b"", True), (b"wor", True), (b"ld", False)):
        await communicator.send({"type": "http.request", "body": part, "more_body": more})
    start, body, _ = await communicator.response()
    await communicator.wait()

    assert start["status"] == 201
    headers = [(bytes(name), bytes(value)) for name, value in start["headers"]]
    # ASGI: header names are lower-cased; order and repeats are kept.
    assert headers[:3] == [(b"content-type", b"text/plain"), (b"x-thing", b"a"), (b"x-thing", b"b")]
    assert all(name == name.lower() for name, _ in headers)
    content_length = [value for name, value in headers if name == b"content-length"]
    assert content_length in ([], [b"15"])
    assert body == b"got hello world"

    [environ] = seen
    assert environ["body"] == b"hello world"
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == "/app"
    assert environ["PATH_INFO"] == "/sub/x y"
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["HTTP_HOST"] == "example.test"
    assert environ["HTTP_X_MULTI"] == "one, two"
    assert environ["SERVER_NAME"] == "example.test"
    assert environ["SERVER_PORT"] == "8080"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "10.1.2.3"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.version"] == (1, 0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("scope_path", "root_path", "raw_path", "script_name", "path_info"),
    [
        # Spec 2.4: path carries root_path.
        ("/mnt/caf\u00e9", "/mnt", b"/mnt/caf%C3%A9", "/mnt", "/caf\u00e9"),
        # Older routers hand down a path without the root path.
        ("/caf\u00e9", "/mnt", None, "/mnt", "/caf\u00e9"),
        ("/caf\u00e9/a%2Fb", "", b"/caf%C3%A9/a%252Fb", "", "/caf\u00e9/a%2Fb"),
        ("/", "", None, "", "/"),
    ],
)
async def test_script_name_and_path_info(
    middlewares: list[WSGIMiddleware],
    scope_path: str,
    root_path: str,
    raw_path: bytes | None,
    script_name: str,
    path_info: str,
) -> None:
    seen: list[Environ] = []
    middleware = WSGIMiddleware(environ_app(seen))
    middlewares.append(middleware)
    scope = http_scope(scope_path, root_path=root_path, raw_path=raw_path)
    communicator = Communicator(middleware, scope)
    await communicator.send({"type": "http.request", "body": b""})
    start, _, _ = await communicator.response()
    await communicator.wait()
    assert start["status"] == 201
    [environ] = seen
    # PEP 3333: native strings carrying the bytes as latin-1.
    assert environ["SCRIPT_NAME"].encode("latin-1").decode("utf-8") == script_name
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == path_info


@pytest.mark.asyncio
async def test_many_duplicate_headers_are_joined_in_linear_time(
    middlewares: list[WSGIMiddleware],
) -> None:
    # Joining each repeat onto the value so far copies it every time: 64,000 repeats took
    # seconds (the class of CVE-2025-14550 in asgiref). Joined once, they take milliseconds.
    count = 64_000
    seen: list[Environ] = []
    middleware = WSGIMiddleware(environ_app(seen))
    middlewares.append(middleware)
    headers = [(b"host", b"example.test")]
    headers += [(b"x-dup", b"v%d" % index) for index in range(count)]
    headers += [(b"cookie", b"c%d=%d" % (index, index)) for index in range(count)]
    started = time.monotonic()
    communicator = Communicator(middleware, http_scope(headers=headers))
    await communicator.send({"type": "http.request", "body": b""})
    start, _, _ = await communicator.response()
    await communicator.wait()
    elapsed = time.monotonic() - started
    assert start["status"] == 201
    [environ] = seen
    assert environ["HTTP_X_DUP"] == ", ".join(f"v{index}" for index in range(count))
    assert environ["HTTP_COOKIE"] == "; ".join(f"c{index}={index}" for index in range(count))
    assert elapsed < 1.0, f"{2 * count} duplicate header lines took {elapsed:.2f} s"


@pytest.mark.asyncio
async def test_environ_is_built_in_the_worker_thread(
    middlewares: list[WSGIMiddleware], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Building the environ of a large head is the costly part of a request's set-up; on the
    # loop it would stall every other request of the ASGI server.
    built_in: list[threading.Thread] = []

    def recording_build_environ(**parts: Any) -> dict[str, Any]:
        built_in.append(threading.current_thread())
        return build_environ(**parts)

    monkeypatch.setattr("dualgate.wsgi.middleware.build_environ", recording_build_environ)
    middleware = WSGIMiddleware(environ_app([]))
    middlewares.append(middleware)
    communicator = Communicator(middleware, http_scope())
    await communicator.send({"type": "http.request", "body": b""})
    assert (await communicator.response())[0]["status"] == 201
    await communicator.wait()
    assert len(built_in) == 1
    assert built_in[0] is not threading.current_thread()


@pytest.mark.asyncio
async def test_scope_without_a_method_raises_out_of_the_middleware(
    middlewares: list[WSGIMiddleware],
) -> None:
    ran: list[Environ] = []
    middleware = WSGIMiddleware(environ_app(ran))
    middlewares.append(middleware)
    scope = http_scope()
    del scope["method"]
    communicator = Communicator(middleware, scope)
    await communicator.send({"type": "http.request", "body": b""})
    with pytest.raises(KeyError, match="method"):
        await communicator.wait()
    assert not ran
    # The thread went back to the pool.
    again = Communicator(middleware, http_scope())
    await again.send({"type": "http.request", "body": b""})
    assert (await again.response())[0]["status"] == 201
    await again.wait()


@pytest.mark.asyncio
async def test_streamed_response_is_several_body_messages(
    middlewares: list[WSGIMiddleware],
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one "
        yield b"two "
        yield b"three"

    middleware = WSGIMiddleware(app)
    middlewares.append(middleware)
    communicator = Communicator(middleware, http_scope())
    await communicator.send({"type": "http.request", "body": b"", "more_body": False})
    start, body, bodies = await communicator.response()
    await communicator.wait()
    assert start["status"] == 200
    assert body == b"one two three"
    assert len(bodies) >= 3
    assert [message.get("more_body", False) for message in bodies[:-1]] == [True] * (
        len(bodies) - 1
    )
    assert bodies[-1].get("more_body", False) is False


@pytest.mark.asyncio
async def test_disconnect_while_streaming_closes_the_iterable(
    middlewares: list[WSGIMiddleware],
) -> None:
    closed = threading.Event()
    exhausted = threading.Event()

    class Endless:
        def __init__(self) -> None:
            self.sent = 0

        def __iter__(self) -> Iterator[bytes]:
            for _ in range(int(4 * WAIT / 0.005)):  # bounded: far longer than the test waits
                self.sent += 1
                yield b"x" * 1024
                time.sleep(0.005)
            exhausted.set()

        def close(self) -> None:
            closed.set()

    def app(environ: Environ, start_response: StartResponse) -> Endless:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless()

    middleware = WSGIMiddleware(app)
    middlewares.append(middleware)
    communicator = Communicator(middleware, http_scope())
    await communicator.send({"type": "http.request", "body": b""})
    start = await communicator.receive()
    assert start["type"] == "http.response.start"
    first = await communicator.receive()
    assert first["type"] == "http.response.body" and first["more_body"] is True
    await communicator.send({"type": "http.disconnect"})
    assert await asyncio.to_thread(closed.wait, WAIT), "close() was not called"
    assert not exhausted.is_set()
    await communicator.wait()


@pytest.mark.asyncio
async def test_disconnect_while_reading_the_body(middlewares: list[WSGIMiddleware]) -> None:
    outcome: list[BaseException | bytes] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            outcome.append(environ["wsgi.input"].read())
        except OSError as exc:  # what a WSGI server raises for a vanished client
            outcome.append(exc)
            raise
        start_response("200 OK", [])
        return [b""]

    middleware = WSGIMiddleware(app)
    middlewares.append(middleware)
    communicator = Communicator(middleware, http_scope(method="POST"))
    await communicator.send({"type": "http.request", "body": b"part", "more_body": True})
    await communicator.send({"type": "http.disconnect"})
    await communicator.wait()
    assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome


@pytest.mark.asyncio
async def test_contextvars_reach_the_wsgi_thread(middlewares: list[WSGIMiddleware]) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[tuple[str, str]] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append((request_id.get("unset"), threading.current_thread().name))
        start_response("200 OK", [("Content-Length", "0")])
        return []

    middleware = WSGIMiddleware(app)
    middlewares.append(middleware)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        request_id.set("req-42")
        await middleware(scope, receive, send)

    communicator = Communicator(outer, http_scope())
    await communicator.send({"type": "http.request", "body": b""})
    start, _, _ = await communicator.response()
    await communicator.wait()
    assert start["status"] == 200
    [(value, thread_name)] = seen
    assert value == "req-42"
    assert thread_name != threading.current_thread().name


@pytest.mark.asyncio
async def test_lifespan_scope_is_answered(middlewares: list[WSGIMiddleware]) -> None:
    middleware = WSGIMiddleware(environ_app([]))
    middlewares.append(middleware)
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    communicator = Communicator(middleware, scope)
    await communicator.send({"type": "lifespan.startup"})
    assert await communicator.receive() == {"type": "lifespan.startup.complete"}
    await communicator.send({"type": "lifespan.shutdown"})
    assert await communicator.receive() == {"type": "lifespan.shutdown.complete"}
    await communicator.wait()


@pytest.mark.asyncio
async def test_app_error_before_start_gives_500(middlewares: list[WSGIMiddleware]) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        raise ValueError("boom")

    middleware = WSGIMiddleware(app)
    middlewares.append(middleware)
    communicator = Communicator(middleware, http_scope())
    await communicator.send({"type": "http.request", "body": b""})
    start, _, _ = await communicator.response()
    await communicator.wait()
    assert start["status"] == 500


def blocking_app(
    entered: threading.Event, release: threading.Event
) -> Callable[[Environ, StartResponse], list[bytes]]:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/block":
            entered.set()
            release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app


async def _occupy(middleware: Any, entered: threading.Event) -> Communicator:
    busy = Communicator(middleware, http_scope("/block"))
    await busy.send({"type": "http.request", "body": b""})
    assert await asyncio.to_thread(entered.wait, WAIT), "the first request never got a thread"
    return busy


@pytest.mark.asyncio
async def test_pool_exhausted_gives_503(middlewares: list[WSGIMiddleware]) -> None:
    entered, release = threading.Event(), threading.Event()
    middleware = WSGIMiddleware(blocking_app(entered, release), threads=1, worker_wait=0.2)
    middlewares.append(middleware)
    busy = await _occupy(middleware, entered)
    try:
        refused = Communicator(middleware, http_scope("/other"))
        await refused.send({"type": "http.request", "body": b""})
        start, body, _ = await refused.response()
        await refused.wait()
        assert start["status"] == 503
        assert (b"retry-after", b"1") in [(bytes(n), bytes(v)) for n, v in start["headers"]]
        assert body
    finally:
        release.set()
    start, body, _ = await busy.response()
    await busy.wait()
    assert (start["status"], body) == (200, b"ok")
    # The thread is free again.
    again = Communicator(middleware, http_scope("/other"))
    await again.send({"type": "http.request", "body": b""})
    assert (await again.response())[0]["status"] == 200
    await again.wait()


@pytest.mark.asyncio
async def test_request_waits_for_a_thread_within_worker_wait(
    middlewares: list[WSGIMiddleware],
) -> None:
    entered, release = threading.Event(), threading.Event()
    middleware = WSGIMiddleware(blocking_app(entered, release), threads=1, worker_wait=WAIT)
    middlewares.append(middleware)
    busy = await _occupy(middleware, entered)
    waiting = Communicator(middleware, http_scope("/other"))
    await waiting.send({"type": "http.request", "body": b""})
    await asyncio.sleep(0.1)  # let it queue for the thread; the outcome does not hinge on this
    release.set()
    assert (await busy.response())[0]["status"] == 200
    start, body, _ = await waiting.response()
    assert (start["status"], body) == (200, b"ok")
    await busy.wait()
    await waiting.wait()


@pytest.mark.asyncio
async def test_shared_pool_exhausted_gives_503() -> None:
    pool = ThreadPool(1, name="test-shared-pool")
    try:
        entered, release = threading.Event(), threading.Event()
        first = WSGIMiddleware(blocking_app(entered, release), pool=pool, worker_wait=0.2)
        second = WSGIMiddleware(environ_app([]), pool=pool, worker_wait=0.2)
        busy = await _occupy(first, entered)
        try:
            refused = Communicator(second, http_scope())
            await refused.send({"type": "http.request", "body": b""})
            start, _, _ = await refused.response()
            await refused.wait()
            assert start["status"] == 503
        finally:
            release.set()
        assert (await busy.response())[0]["status"] == 200
        await busy.wait()
    finally:
        pool.shutdown(WAIT)
