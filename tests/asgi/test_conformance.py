"""ASGI 3 (HTTP spec 2.4) conformance of dualgate serving ASGI apps, over real sockets.

Each app runs on the server's loop thread; what it observes is handed to the test through
lists and threading.Events, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    SOCKET_TIMEOUT,
    Message,
    Reader,
    Receive,
    Scope,
    Send,
    ServeFactory,
    asgi_app,
    assert_serves,
    connect,
    read_until_closed,
    request,
)

WAIT = 10.0


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    body = b"ok"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


# -- the scope ----------------------------------------------------------------------------


def _scope_recorder(scopes: list[Scope]) -> Any:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await ok(scope, receive, send)

    def startup(scope: Scope) -> None:
        scope["state"]["from_lifespan"] = "yes"

    return asgi_app(handler, startup)


def test_scope_keys_types_and_values(serve: ServeFactory) -> None:
    scopes: list[Scope] = []
    server = serve(_scope_recorder(scopes))
    with connect(server.port) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(
            b"GET /a%20b/c%2Fd/%C3%A9?x=1&y=%20 HTTP/1.1\r\n"
            b"Host: example.test\r\nX-Multi: one\r\nAccept: */*\r\nX-MULTI: two\r\n\r\n"
        )
        status, _, body = Reader(sock).read_response()
    assert (status, body) == (b"HTTP/1.1 200 OK", b"ok")
    [scope] = scopes
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert isinstance(scope["asgi"]["spec_version"], str)
    assert scope["asgi"]["spec_version"].startswith("2.")
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    # path: percent-decoded, UTF-8 decoded; raw_path: the bytes received; query: raw bytes.
    assert scope["path"] == "/a b/c/d/\u00e9"
    assert scope["raw_path"] == b"/a%20b/c%2Fd/%C3%A9"
    assert scope["query_string"] == b"x=1&y=%20"
    assert isinstance(scope["query_string"], bytes)
    assert scope["root_path"] == ""
    assert [tuple(header) for header in scope["headers"]] == [
        (b"host", b"example.test"),
        (b"x-multi", b"one"),
        (b"accept", b"*/*"),
        (b"x-multi", b"two"),
    ]
    for name, value in scope["headers"]:
        assert isinstance(name, bytes) and isinstance(value, bytes)
    assert list(scope["client"]) == ["127.0.0.1", local_port]
    assert isinstance(scope["client"][1], int)
    assert list(scope["server"]) == ["127.0.0.1", server.port]
    assert scope["state"] == {"from_lifespan": "yes"}


def test_scope_http_10_post_and_root_path(serve: ServeFactory) -> None:
    scopes: list[Scope] = []
    server = serve(_scope_recorder(scopes), root_path="/root")
    status, _, _ = request(
        server.port, b"POST /x%2By?q HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", head=False
    )
    assert status == b"HTTP/1.1 200 OK"
    # A proxy that does not strip the prefix: the path already carries it.
    status, _, _ = request(server.port, b"GET /root/sub HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK"
    status, _, _ = request(
        server.port, b"GET http://example.test/root/abs%20p?z=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status == b"HTTP/1.1 200 OK"
    first, second, absolute = scopes
    assert absolute["path"] == "/root/abs p"
    assert absolute["raw_path"] == b"/root/abs%20p"
    assert absolute["query_string"] == b"z=1"
    assert first["http_version"] == "1.0"
    assert first["method"] == "POST"
    assert first["root_path"] == "/root"
    # Spec 2.4: `path` includes `root_path`.
    assert first["path"] == "/root/x+y"
    assert first["raw_path"].endswith(b"/x%2By")
    assert first["query_string"] == b"q"
    assert first["headers"] == [(b"content-length", b"3")]
    assert second["root_path"] == "/root"
    assert second["path"] == "/root/sub"


# -- request body -------------------------------------------------------------------------


def test_chunked_upload_arrives_as_several_http_request_messages(serve: ServeFactory) -> None:
    events: list[Message] = []
    received: queue.Queue[int] = queue.Queue()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        total = 0
        while True:
            message = await receive()
            events.append(message)
            total += len(message.get("body", b""))
            received.put(total)
            if not message.get("more_body", False):
                break
        await ok(scope, receive, send)

    # A small buffer, so the app is called as soon as the first piece is in.
    server = serve(asgi_app(handler), body_buffer_size=4096)
    pieces = [os.urandom(8192), os.urandom(10000), os.urandom(9000)]
    with connect(server.port) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        for piece in pieces:
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sent += len(piece)
            # The app has this piece before the client sends the next one.
            while (total := received.get(timeout=WAIT)) < sent:
                pass
            assert total == sent
        sock.sendall(b"0\r\n\r\n")
        status, _, body = Reader(sock).read_response()
    assert (status, body) == (b"HTTP/1.1 200 OK", b"ok")
    assert all(event["type"] == "http.request" for event in events)
    assert b"".join(event.get("body", b"") for event in events) == b"".join(pieces)
    assert len([event for event in events if event.get("body")]) >= len(pieces)
    assert [event.get("more_body", False) for event in events[:-1]] == [True] * (len(events) - 1)
    assert events[-1].get("more_body", False) is False


def test_content_length_body_is_intact(serve: ServeFactory) -> None:
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    server = serve(asgi_app(echo))
    payload = os.urandom(3_000_000)
    with connect(server.port) as sock:
        sock.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload))
        sock.sendall(payload)
        status, _, body = Reader(sock).read_response()
    assert status == b"HTTP/1.1 200 OK"
    assert body == payload


# -- response streaming -------------------------------------------------------------------


def test_streamed_chunks_reach_the_client_as_they_are_sent(serve: ServeFactory) -> None:
    client_has_first = threading.Event()
    handshake: list[bool] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        handshake.append(await asyncio.to_thread(client_has_first.wait, WAIT))
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        status, headers = reader.read_head()
        assert status == b"HTTP/1.1 200 OK"
        assert headers[b"transfer-encoding"] == b"chunked"
        assert reader.read_line() == b"5"
        assert reader.read_exact(7) == b"first\r\n"
        assert handshake == []  # the app is still waiting for us
        client_has_first.set()
        assert reader.read_line() == b"6"
        assert reader.read_exact(8) == b"second\r\n"
        assert reader.read_line() == b"0"
        assert reader.read_line() == b""
    assert handshake == [True]


def test_response_head_is_held_until_the_first_body_message(serve: ServeFactory) -> None:
    checked = threading.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"4")],
            }
        )
        await asyncio.to_thread(checked.wait, WAIT)
        await send({"type": "http.response.body", "body": b"body"})

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Spec: the server must not start sending the response before a body message.
        sock.settimeout(0.3)
        try:
            early = sock.recv(65536)
        except TimeoutError:
            early = b""
        checked.set()
        sock.settimeout(SOCKET_TIMEOUT)
        assert early == b""
        status, _, body = Reader(sock).read_response()
    assert (status, body) == (b"HTTP/1.1 200 OK", b"body")


def test_expect_100_continue_is_answered_when_the_app_reads(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/refuse":  # answers without reading: no 100, body never needed
            await send(
                {
                    "type": "http.response.start",
                    "status": 417,
                    "headers": [(b"content-length", b"0"), (b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    server = serve(asgi_app(handler))
    head = b"Host: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with connect(server.port) as sock:
        sock.sendall(b"POST /read HTTP/1.1\r\n" + head)
        reader = Reader(sock)
        status, _ = reader.read_head()
        assert status == b"HTTP/1.1 100 Continue"
        sock.sendall(b"hello")
        assert reader.read_response()[::2] == (b"HTTP/1.1 200 OK", b"hello")
    with connect(server.port) as sock:
        sock.sendall(b"POST /refuse HTTP/1.1\r\n" + head)
        status, _, _ = Reader(sock).read_response()
        assert status == b"HTTP/1.1 417 Expectation Failed"


def test_http_disconnect_when_client_resets_mid_response(serve: ServeFactory) -> None:
    seen: list[Any] = []
    done = threading.Event()
    client_closed = threading.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/":
            await ok(scope, receive, send)
            return
        try:
            first = await receive()
            seen.append(first["type"])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            # Idle in receive(): only the server can tell the app that the client is gone.
            seen.append(await asyncio.wait_for(receive(), WAIT))
            seen.append(client_closed.is_set())
            try:
                await send({"type": "http.response.body", "body": b"more", "more_body": True})
            except Exception as exc:
                seen.append(exc)
        finally:
            done.set()

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        reader.read_head()
        assert reader.read_line() == b"7"
        # Close with a reset (SO_LINGER 0), so the server learns of it without writing.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client_closed.set()
    assert done.wait(WAIT), "the app never saw the disconnect"
    # receive() blocked until the client was gone, then said so.
    assert seen[:3] == ["http.request", {"type": "http.disconnect"}, True]
    # Spec 2.4: send() on a closed connection raises an OSError subclass.
    assert len(seen) == 4 and isinstance(seen[3], OSError), seen
    assert_serves(server.port)


def test_http_disconnect_when_client_closes_while_app_streams(serve: ServeFactory) -> None:
    seen: list[Any] = []
    done = threading.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/":
            await ok(scope, receive, send)
            return
        try:
            assert (await receive())["type"] == "http.request"
            waiter = asyncio.ensure_future(receive())
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(int(WAIT / 0.02)):
                try:
                    await send({"type": "http.response.body", "body": b"x", "more_body": True})
                except OSError as exc:
                    seen.append(exc)
                if waiter.done():
                    break
                await asyncio.sleep(0.02)
            seen.append(await asyncio.wait_for(waiter, WAIT))
        finally:
            done.set()

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        reader.read_head()
        assert reader.read_line() == b"1"
    assert done.wait(WAIT + 5), "the app never saw the disconnect"
    assert seen[-1] == {"type": "http.disconnect"}, seen
    assert all(isinstance(item, OSError) for item in seen[:-1]), seen
    assert_serves(server.port)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_an_app_that_stops_at_http_disconnect_mid_upload_is_not_an_error(
    serve: ServeFactory,
) -> None:
    # A client that goes away mid-upload is ordinary traffic, and an application that returns
    # on http.disconnect without answering does what the spec asks: nothing to log as an error
    # (the server used to log "returned without starting a response" for each such client).
    done = threading.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/":
            await ok(scope, receive, send)
            return
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            done.set()

    errors = _Errors()
    logger = logging.getLogger("dualgate.error")
    logger.addHandler(errors)
    try:
        server = serve(asgi_app(handler))
        with connect(server.port) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        assert done.wait(WAIT), "the app never saw the disconnect"
        assert_serves(server.port)
    finally:
        logger.removeHandler(errors)
    assert errors.messages == []


def test_receive_after_complete_response_gives_http_disconnect(serve: ServeFactory) -> None:
    seen: list[Message] = []
    done = threading.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await ok(scope, receive, send)
        try:
            message = await receive()  # the (empty) request body
            if message["type"] == "http.request":
                message = await asyncio.wait_for(receive(), WAIT)
            seen.append(message)
        finally:
            done.set()

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:  # kept open: the disconnect is "response sent"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert Reader(sock).read_response()[2] == b"ok"
        assert done.wait(WAIT)
    assert seen == [{"type": "http.disconnect"}]


# -- message order and errors -------------------------------------------------------------


def _order_app(errors: list[BaseException], done: threading.Event) -> Any:
    """/body-first, /second-start, /after-final: each breaks the order once."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"2")],
        }
        path = scope["path"]
        try:
            if path == "/body-first":
                try:
                    await send({"type": "http.response.body", "body": b"ok"})
                except RuntimeError as exc:
                    errors.append(exc)
            elif path == "/second-start":
                await send(start)
                try:
                    await send(start)
                except RuntimeError as exc:
                    errors.append(exc)
                await send({"type": "http.response.body", "body": b"ok"})
            elif path == "/after-final":
                await send(start)
                await send({"type": "http.response.body", "body": b"ok"})
                for late in (
                    {"type": "http.response.body", "body": b"xx"},
                    start,
                ):
                    try:
                        await send(late)
                    except RuntimeError as exc:
                        errors.append(exc)
            else:
                await ok(scope, receive, send)
        finally:
            if path != "/":
                done.set()

    return asgi_app(handler)


def test_body_before_start_raises_and_client_gets_500(serve: ServeFactory) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    server = serve(_order_app(errors, done))
    status, _, _ = request(server.port, b"GET /body-first HTTP/1.1\r\nHost: x\r\n\r\n")
    assert done.wait(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert_serves(server.port)


def test_second_start_raises_and_first_response_stands(serve: ServeFactory) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    server = serve(_order_app(errors, done))
    status, headers, body = request(server.port, b"GET /second-start HTTP/1.1\r\nHost: x\r\n\r\n")
    assert done.wait(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert (status, body) == (b"HTTP/1.1 200 OK", b"ok")
    assert headers[b"content-length"] == b"2"


def test_messages_after_final_body_raise(serve: ServeFactory) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    server = serve(_order_app(errors, done))
    with connect(server.port) as sock:
        sock.sendall(b"GET /after-final HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        assert reader.read_response()[::2] == (b"HTTP/1.1 200 OK", b"ok")
        assert done.wait(WAIT)
        # The late messages never reached the wire: the connection serves its next request.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.read_response()[::2] == (b"HTTP/1.1 200 OK", b"ok")
    assert len(errors) == 2
    assert all(isinstance(error, RuntimeError) for error in errors), errors


def _raising_app() -> Any:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/before-start":
            raise ValueError("boom before start")
        if scope["path"] == "/after-start":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise ValueError("boom after start")
        if scope["path"] == "/no-response":
            return
        if scope["path"] == "/unfinished":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            return  # without the final body
        await ok(scope, receive, send)

    return asgi_app(handler)


def test_app_raising_before_start_gives_500_and_server_keeps_serving(
    serve: ServeFactory,
) -> None:
    server = serve(_raising_app())
    status, headers, body = request(server.port, b"GET /before-start HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert int(headers[b"content-length"]) == len(body)
    status, _, _ = request(server.port, b"GET /no-response HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert_serves(server.port)


@pytest.mark.parametrize("target", [b"/after-start", b"/unfinished"])
def test_app_raising_or_returning_mid_response_aborts_the_connection(
    serve: ServeFactory, target: bytes
) -> None:
    server = serve(_raising_app())
    with connect(server.port) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        status, headers = reader.read_head()
        assert status == b"HTTP/1.1 200 OK"
        assert headers[b"transfer-encoding"] == b"chunked"
        assert reader.read_line() == b"7"
        assert reader.read_exact(9) == b"partial\r\n"
        # No terminating zero-size chunk: the connection is closed with the body incomplete.
        assert reader.read_until_closed() == b""
    assert_serves(server.port)


# -- http.response.pathsend and HEAD -------------------------------------------------------


def test_pathsend_is_advertised_and_serves_a_file(serve: ServeFactory, tmp_path: Path) -> None:
    content = os.urandom(700_000)
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    extensions: list[Any] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        extensions.append(scope.get("extensions"))
        headers = [(b"content-type", b"application/octet-stream")]
        if scope["path"] == "/sized":
            headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:
        reader = Reader(sock)
        for target in (b"/sized", b"/unsized", b"/sized"):
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = reader.read_response()
            assert status == b"HTTP/1.1 200 OK"
            assert body == content
            if target == b"/unsized":
                assert headers[b"transfer-encoding"] == b"chunked"
        sock.sendall(b"HEAD /sized HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = reader.read_response(head=True)
        assert headers[b"content-length"] == str(len(content)).encode()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, _ = reader.read_response()
        assert status == b"HTTP/1.1 200 OK"
    assert isinstance(extensions[0], dict)
    assert "http.response.pathsend" in extensions[0]


def test_head_puts_no_body_on_the_wire(serve: ServeFactory) -> None:
    methods: list[str] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        methods.append(scope["method"])
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one", b"two"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b"hello world"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"11")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:
        reader = Reader(sock)
        for target in (b"/fixed", b"/stream"):
            sock.sendall(b"HEAD " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers = reader.read_head()
            assert status == b"HTTP/1.1 200 OK"
            if target == b"/fixed":
                assert headers[b"content-length"] == b"11"
        # Had any body bytes followed a HEAD head, this response's status line would be off.
        sock.sendall(b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = reader.read_response()
        assert (status, body) == (b"HTTP/1.1 200 OK", b"hello world")
    assert methods == ["HEAD", "HEAD", "GET"]


def test_half_close_tells_a_listening_app_and_the_answer_still_arrives(
    serve: ServeFactory,
) -> None:
    # A client that shuts down its sending side has said all it will: an app idle in receive()
    # hears http.disconnect (as under uvicorn), and whatever it still sends reaches the client.
    seen: list[Message] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        seen.append(await asyncio.wait_for(receive(), WAIT))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"after-eof"})

    server = serve(asgi_app(handler))
    with connect(server.port) as sock:
        sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        response = read_until_closed(sock)
    assert seen == [{"type": "http.disconnect"}]
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(b"after-eof")
