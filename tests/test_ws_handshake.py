"""The opening handshake: the pure checks in memory, then the answers a real server gives."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dualgate.ws.handshake import (
    Handshake,
    HandshakeRefusal,
    build_scope,
    check_handshake,
    is_websocket_request,
    negotiate_deflate,
)
from tests.conftest import Reader, ServeFactory, connect
from tests.ws_support import KEY, Recorder, echo_app, upgrade_request

Headers = list[tuple[bytes, bytes]]

VALID: Headers = [
    (b"host", b"example.com"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


@dataclass
class Request:
    headers: Headers = field(default_factory=lambda: list(VALID))
    method: bytes = b"GET"
    target: bytes = b"/chat"
    http_version: bytes = b"1.1"


def replaced(name: bytes, *values: bytes) -> Headers:
    """VALID with every `name` header replaced by `values` (none: removed)."""
    return [h for h in VALID if h[0] != name] + [(name, value) for value in values]


def test_a_valid_handshake() -> None:
    result = check_handshake(Request(), deflate=True)
    assert result == Handshake(KEY, [], None)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (replaced(b"sec-websocket-key"), 400),
        (replaced(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ"), 400),  # 15 bytes
        (replaced(b"sec-websocket-key", b"not base64 at all!!!!!=="), 400),
        (replaced(b"sec-websocket-key", KEY, KEY), 400),
        (replaced(b"sec-websocket-version"), 400),
        (replaced(b"sec-websocket-version", b"8"), 426),
        (replaced(b"sec-websocket-version", b"13", b"13"), 426),
        (replaced(b"upgrade", b"h2c"), 400),
        (replaced(b"connection", b"keep-alive"), 400),
        (replaced(b"connection"), 400),
        (replaced(b"host"), 400),
        ([*VALID, (b"content-length", b"5")], 400),
        ([*VALID, (b"transfer-encoding", b"chunked")], 400),
        ([*VALID, (b"sec-websocket-protocol", b"chat, bad protocol")], 400),
    ],
)
def test_bad_handshakes_are_refused(headers: Headers, status: int) -> None:
    result = check_handshake(Request(headers), deflate=True)
    assert isinstance(result, HandshakeRefusal)
    assert result.status == status
    # RFC 6455 4.2.2: a version problem is answered with the version this server speaks.
    versions = [value for name, value in headers if name == b"sec-websocket-version"]
    names_version = versions != [b"13"]
    assert (result.headers == [(b"sec-websocket-version", b"13")]) is names_version


def test_method_and_version_are_checked() -> None:
    assert isinstance(check_handshake(Request(method=b"POST"), deflate=True), HandshakeRefusal)
    refused = check_handshake(Request(http_version=b"1.0"), deflate=True)
    assert isinstance(refused, HandshakeRefusal) and refused.status == 400


def test_lenient_where_the_rfcs_are() -> None:
    headers = [
        (b"host", b"example.com"),
        (b"upgrade", b"WebSocket"),
        (b"connection", b"keep-alive, upgrade"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
        (b"content-length", b"0"),
        (b"sec-websocket-protocol", b"chat, , v2.json"),
        (b"sec-websocket-protocol", b"graphql-ws"),
    ]
    result = check_handshake(Request(headers), deflate=True)
    assert isinstance(result, Handshake)
    assert result.subprotocols == ["chat", "v2.json", "graphql-ws"]


def test_is_websocket_request() -> None:
    assert is_websocket_request(b"GET", [(b"upgrade", b"websocket")])
    assert is_websocket_request(b"GET", [(b"upgrade", b"foo, WebSocket")])
    assert not is_websocket_request(b"POST", [(b"upgrade", b"websocket")])
    assert not is_websocket_request(b"GET", [(b"upgrade", b"h2c")])
    assert not is_websocket_request(b"GET", [])


PMD = "permessage-deflate"


@pytest.mark.parametrize(
    ("offers", "chosen"),
    [
        ([PMD], PMD),
        ([PMD.title() + "; Client_Max_Window_Bits"], PMD + "; client_max_window_bits"),
        ([PMD + '; server_max_window_bits="9"'], PMD + "; server_max_window_bits=9"),
        ([PMD + "; server_max_window_bits=09"], None),
        ([PMD + "; server_max_window_bits=16"], None),
        ([PMD + "; client_max_window_bits=8"], None),
        ([PMD + "; client_no_context_takeover=1"], None),
        (['foo; a="x,y", ' + PMD], PMD),
        (["foo", PMD + "; server_no_context_takeover"], PMD + "; server_no_context_takeover"),
        ([PMD + "; server_max_window_bits=10, " + PMD], PMD + "; server_max_window_bits=10"),
        ([PMD + '; x="unterminated'], None),
        ([], None),
    ],
)
def test_deflate_offers(offers: list[str], chosen: str | None) -> None:
    assert negotiate_deflate([offer.encode() for offer in offers]) == chosen


def test_deflate_off_ignores_offers() -> None:
    headers = [*VALID, (b"sec-websocket-extensions", b"permessage-deflate")]
    on = check_handshake(Request(headers), deflate=True)
    off = check_handshake(Request(headers), deflate=False)
    assert isinstance(on, Handshake) and on.deflate_offer == "permessage-deflate"
    assert isinstance(off, Handshake) and off.deflate_offer is None


def test_the_scope() -> None:
    state = {"db": "pool"}
    scope = build_scope(
        Request(target=b"/base/caf%C3%A9/room?x=1&y=%20"),
        client=("127.0.0.1", 5000),
        server=("127.0.0.1", 8000),
        scheme="ws",
        root_path="/base",
        state=state,
        subprotocols=["chat"],
    )
    assert scope == {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.5"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/base/café/room",
        "raw_path": b"/base/caf%C3%A9/room",
        "query_string": b"x=1&y=%20",
        "root_path": "/base",
        "headers": VALID,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": ["chat"],
        "state": state,
        "extensions": {"websocket.http.response": {}},
    }
    assert scope["state"] is not state  # a copy, as for HTTP requests


def test_the_scope_puts_back_a_stripped_root_path() -> None:
    scope = build_scope(
        Request(target=b"/room"),
        client=None,
        server=None,
        scheme="ws",
        root_path="/base",
        state=None,
        subprotocols=[],
    )
    assert (scope["path"], scope["raw_path"], scope["root_path"]) == (
        "/base/room",
        b"/base/room",
        "/base",
    )
    assert "state" not in scope


# -- the answers of a real server ----------------------------------------------------------


def altered(old: bytes, new: bytes) -> bytes:
    return upgrade_request().replace(old, new)


@pytest.mark.parametrize(
    ("request_bytes", "status", "version_header"),
    [
        (altered(b"Version: 13", b"Version: 8"), 426, True),
        (altered(b"Sec-WebSocket-Version: 13\r\n", b""), 400, True),
        (altered(b"Key: " + KEY, b"Key: short"), 400, False),
        (upgrade_request(version="1.0"), 400, False),
    ],
    ids=["version 8", "no version", "bad key", "HTTP/1.0"],
)
def test_a_server_refuses_bad_handshakes_with_an_http_answer(
    serve: ServeFactory, request_bytes: bytes, status: int, version_header: bool
) -> None:
    recorder = Recorder()
    port = serve(echo_app(recorder)).port
    with connect(port) as sock:
        sock.sendall(request_bytes)
        reader = Reader(sock)
        line, headers, body = reader.read_response()
        assert int(line.split()[1]) == status
        assert headers[b"connection"] == b"close"
        assert headers[b"content-type"].startswith(b"text/plain")
        assert body  # says what was wrong
        assert (headers.get(b"sec-websocket-version") == b"13") is version_header
        assert reader.read_until_closed() == b""
    assert recorder.events.empty(), "the application must not see a refused handshake"


def test_upgrade_without_connection_upgrade_is_plain_http(serve: ServeFactory) -> None:
    """RFC 9110 section 7.8: Upgrade counts only when Connection lists it. Without that, the
    request is an ordinary GET, answered by the application's HTTP side (as uvicorn does),
    and the connection stays HTTP."""
    port = serve(echo_app()).port
    with connect(port) as sock:
        sock.sendall(altered(b"Connection: Upgrade", b"Connection: keep-alive"))
        reader = Reader(sock)
        line, _, _ = reader.read_response()
        assert line == b"HTTP/1.1 200 OK"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        line, _, _ = reader.read_response()
        assert line == b"HTTP/1.1 200 OK"
