"""The ASGI WebSocket spec (2.5) and the denial-response extension, against a real server."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tests.conftest import (
    Reader,
    Receive,
    Scope,
    Send,
    ServeFactory,
    asgi_app,
    connect,
    running_server,
)
from tests.ws_support import (
    BINARY,
    CLOSE,
    TEXT,
    Peer,
    Recorder,
    close_frame,
    frame,
    is_disconnect,
    open_websocket,
    text,
    upgrade_request,
    wait_for_thread_event,
    websocket_app,
)

Handler = Any


def answer(port: int, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send a handshake and read the HTTP answer that is not a 101; the server then closes."""
    with connect(port) as sock:
        sock.sendall(request)
        reader = Reader(sock)
        status, headers, body = reader.read_response()
        assert reader.read_until_closed() == b""
        return int(status.split()[1]), headers, body


def test_the_scope_and_the_connect_event(serve: ServeFactory) -> None:
    recorder = Recorder()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        recorder.put(dict(scope))
        recorder.put(await receive())
        await send({"type": "websocket.close"})

    def startup(scope: Scope) -> None:
        scope["state"]["greeting"] = "hello"

    app = asgi_app(handler, startup=startup)
    port = serve(app, root_path="/base").port
    status, _, _ = answer(
        port, upgrade_request("/base/r%C3%A9sum%C3%A9?lang=fr", "Sec-WebSocket-Protocol: a, b")
    )
    assert status == 403
    scope = recorder.get()
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert (scope["scheme"], scope["http_version"]) == ("ws", "1.1")
    assert (scope["path"], scope["raw_path"]) == ("/base/résumé", b"/base/r%C3%A9sum%C3%A9")
    assert (scope["query_string"], scope["root_path"]) == (b"lang=fr", "/base")
    assert scope["subprotocols"] == ["a", "b"]
    assert (b"sec-websocket-protocol", b"a, b") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1" and scope["server"][1] == port
    assert scope["state"] == {"greeting": "hello"}
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert recorder.get() == {"type": "websocket.connect"}


def test_accept_with_a_subprotocol_and_headers(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": "v2",
                "headers": [(b"set-cookie", b"session=1"), (b"x-extra", b"yes")],
            }
        )
        await send({"type": "websocket.send", "bytes": b"\x00binary"})
        await send({"type": "websocket.send", "text": "text"})
        await send({"type": "websocket.close", "code": 4000, "reason": "that is all"})

    port = serve(websocket_app(handler)).port
    with Peer(connect(port)) as peer:
        status, headers = peer.handshake(upgrade_request("/", "Sec-WebSocket-Protocol: v1, v2"))
        assert status == b"HTTP/1.1 101 Switching Protocols"
        assert headers[b"sec-websocket-protocol"] == b"v2"
        assert (headers[b"set-cookie"], headers[b"x-extra"]) == (b"session=1", b"yes")
        first, second = peer.recv_data(), peer.recv_data()
        assert (first.opcode, first.payload) == (BINARY, b"\x00binary")
        assert (second.opcode, second.payload) == (TEXT, b"text")
        closing = peer.recv_data()
        assert (closing.close_code, closing.payload[2:]) == (4000, b"that is all")
        peer.send(close_frame(4000))
        assert peer.reader.read_until_closed() == b""


def test_close_before_accept_is_403(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    status, _, body = answer(serve(websocket_app(handler)).port, upgrade_request())
    assert (status, body) == (403, b"")


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_the_denial_response_extension(serve: ServeFactory, length: bool) -> None:
    recorder = Recorder()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        if length:
            headers.append((b"content-length", b"21"))
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send(
            {"type": "websocket.http.response.body", "body": b'{"error": ', "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b'"no token"}'})
        recorder.put(await receive())

    status, headers, body = answer(serve(websocket_app(handler)).port, upgrade_request())
    assert (status, body) == (401, b'{"error": "no token"}')
    assert headers[b"www-authenticate"] == b"Bearer"
    assert headers[b"connection"] == b"close"
    assert recorder.until(is_disconnect)["code"] == 1006


@pytest.mark.parametrize(
    "handler_kind", ["raises", "returns", "wrong message", "unoffered subprotocol", "bad header"]
)
def test_an_application_failing_before_accept_gets_500(
    serve: ServeFactory, handler_kind: str
) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if handler_kind == "raises":
            raise RuntimeError("boom")
        if handler_kind == "wrong message":
            await send({"type": "websocket.send", "text": "before accept"})
        if handler_kind == "unoffered subprotocol":
            await send({"type": "websocket.accept", "subprotocol": "nope"})
        if handler_kind == "bad header":
            await send({"type": "websocket.accept", "headers": [(b"x", b"a\r\nb")]})

    status, _, body = answer(serve(websocket_app(handler)).port, upgrade_request())
    assert (status, body) == (500, b"Internal Server Error\n")


def test_an_error_after_accept_closes_with_1011(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("boom")

    with open_websocket(serve(websocket_app(handler)).port) as peer:
        peer.send(text("trigger"))
        closing = peer.recv_data()
        assert (closing.opcode, closing.close_code) == (CLOSE, 1011)
        peer.send(close_frame(1011))
        assert peer.reader.read_until_closed() == b""


def test_returning_after_accept_closes_with_1000(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    with open_websocket(serve(websocket_app(handler)).port) as peer:
        assert peer.recv_data().close_code == 1000


def test_send_after_close_raises_an_oserror(serve: ServeFactory) -> None:
    recorder = Recorder()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        if message.get("text") == "close yourself":
            await send({"type": "websocket.close"})
        else:
            recorder.put(await receive())  # the peer's close
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            recorder.put(exc)

    port = serve(websocket_app(handler)).port
    with open_websocket(port) as peer:
        peer.send(text("close yourself"))
        assert peer.recv_data().close_code == 1000
        error = recorder.get()
        assert isinstance(error, OSError) and type(error).__name__ == "WebSocketClosed"
    with open_websocket(port) as peer:
        peer.send(text("wait"), close_frame(1001))
        assert peer.recv_data().close_code == 1001
        assert recorder.get()["code"] == 1001
        assert isinstance(recorder.get(), OSError)


def test_messages_queued_before_a_close_are_received_first(serve: ServeFactory) -> None:
    recorder = Recorder()
    release = threading.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await wait_for_thread_event(release)
        while True:
            message = await receive()
            recorder.put(message)
            if message["type"] == "websocket.disconnect":
                return

    with open_websocket(serve(websocket_app(handler)).port) as peer:
        peer.send(text("one"), frame(BINARY, b"two"), close_frame(1000, b"bye"))
        assert peer.recv_data().close_code == 1000
        release.set()
    assert recorder.get() == {"type": "websocket.receive", "text": "one"}
    assert recorder.get() == {"type": "websocket.receive", "bytes": b"two"}
    assert recorder.get() == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}


def test_ws_none_answers_400_and_wsgi_apps_see_a_plain_get(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a WebSocket scope with --ws none")

    port = serve(websocket_app(handler), ws="none").port
    status, _, body = answer(port, upgrade_request())
    assert status == 400
    assert b"--ws none" in body

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = f"{environ['REQUEST_METHOD']} {environ['HTTP_UPGRADE']}".encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    with connect(serve(wsgi).port) as sock:
        sock.sendall(upgrade_request())
        status_line, _, body = Reader(sock).read_response()
        assert (status_line, body) == (b"HTTP/1.1 200 OK", b"GET websocket")


def test_graceful_shutdown_closes_with_1012_and_waits_for_the_application() -> None:
    recorder = Recorder()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await asyncio.sleep(0.3)  # cleanup that the server waits for
        recorder.put(("cleaned up", message["code"]))

    with running_server(websocket_app(handler)) as server:
        peer = open_websocket(server.port)
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        closing = peer.recv_data()
        assert (closing.opcode, closing.close_code) == (CLOSE, 1012)
        peer.send(close_frame(1012))
        assert peer.reader.read_until_closed() == b""
        peer.close()
        stopper.join()
    # running_server has joined the server thread: the cleanup ran before it stopped.
    assert recorder.get(timeout=0) == ("cleaned up", 1012)


def test_graceful_shutdown_is_bounded_by_its_timeout() -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(60)  # ignores everything

    started = time.monotonic()
    with running_server(websocket_app(handler), timeout_graceful_shutdown=0.5) as server:
        peer = open_websocket(server.port)
        server.shutdown()
        assert peer.recv_data().close_code == 1012
        peer.send(close_frame(1012))
    assert time.monotonic() - started < 5
    peer.close()


def test_a_handshake_during_shutdown_is_answered_503(serve: ServeFactory) -> None:
    arrived = threading.Event()

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        arrived.set()
        while (await receive())["type"] != "websocket.disconnect":
            pass

    server = serve(websocket_app(handler), timeout_graceful_shutdown=2)
    with connect(server.port) as sock:
        sock.sendall(upgrade_request())
        assert arrived.wait(5)
        server.shutdown()
        status, headers, _ = Reader(sock).read_response()
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers[b"retry-after"] == b"1"
