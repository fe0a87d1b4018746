"""permessage-deflate (RFC 7692) on the wire: negotiation, both directions, limits."""

from __future__ import annotations

import zlib

import pytest

from tests.conftest import ServeFactory, connect
from tests.ws_support import (
    BINARY,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Peer,
    Recorder,
    deflate,
    echo_app,
    frame,
    is_disconnect,
    open_websocket,
    upgrade_request,
)

OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"


def inflater() -> zlib._Decompress:
    return zlib.decompressobj(-15)


def inflate(data: bytes, decompressor: zlib._Decompress) -> bytes:
    return decompressor.decompress(data + b"\x00\x00\xff\xff")


def negotiated(serve: ServeFactory, offer: str, **options: object) -> bytes | None:
    port = serve(echo_app(), **options).port
    with Peer(connect(port)) as peer:
        status, headers = peer.handshake(upgrade_request("/", offer))
        assert status == b"HTTP/1.1 101 Switching Protocols"
        return headers.get(b"sec-websocket-extensions")


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", b"permessage-deflate"),
        (
            "permessage-deflate; client_max_window_bits",
            b"permessage-deflate; client_max_window_bits=15",
        ),
        (
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
            b"permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        ),
        (
            'permessage-deflate; client_max_window_bits="12"',
            b"permessage-deflate; client_max_window_bits=12",
        ),
        # The first offer is declined (unknown parameter), the second taken as it is.
        (
            "permessage-deflate; x_bits=1, permessage-deflate; client_no_context_takeover",
            b"permessage-deflate; client_no_context_takeover",
        ),
        ("x-webkit-deflate-frame", None),
        ("permessage-deflate; server_max_window_bits=8", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ],
)
def test_negotiation(serve: ServeFactory, offer: str, answer: bytes | None) -> None:
    assert negotiated(serve, f"Sec-WebSocket-Extensions: {offer}") == answer


def test_off_with_the_setting(serve: ServeFactory) -> None:
    assert negotiated(serve, OFFER, ws_per_message_deflate=False) is None


def test_compressed_messages_both_ways_with_context_takeover(serve: ServeFactory) -> None:
    port = serve(echo_app()).port
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    decompressor = inflater()
    with open_websocket(port, "/", OFFER) as peer:
        for message in ("héllo " * 50, "héllo " * 50, "a different one"):
            peer.send(frame(TEXT, deflate(message.encode(), compressor), rsv=4))
            echoed = peer.recv_data()
            assert (echoed.opcode, echoed.rsv) == (TEXT, 4)
            assert inflate(echoed.payload, decompressor).decode() == message
        # An uncompressed message is allowed too (RSV1 clear).
        peer.send(frame(BINARY, b"plain"))
        echoed = peer.recv_data()
        assert inflate(echoed.payload, decompressor) == b"plain"


def test_a_ping_between_compressed_fragments(serve: ServeFactory) -> None:
    port = serve(echo_app()).port
    payload = deflate(b"fragmented and compressed " * 20)
    cut = len(payload) // 2
    with open_websocket(port, "/", OFFER) as peer:
        peer.send(
            frame(BINARY, payload[:cut], rsv=4, fin=False),
            frame(PING, b"p"),
            frame(CONTINUATION, payload[cut:]),
        )
        assert peer.recv().opcode == PONG
        echoed = peer.recv_data()
        assert inflate(echoed.payload, inflater()) == b"fragmented and compressed " * 20


@pytest.mark.parametrize(
    "frames",
    [
        [frame(PING, b"p", rsv=4)],
        [frame(TEXT, deflate(b"a")[:1], rsv=4, fin=False), frame(CONTINUATION, b"x", rsv=4)],
    ],
    ids=["rsv1 on a control frame", "rsv1 on a continuation"],
)
def test_rsv1_where_it_may_not_be(serve: ServeFactory, frames: list[bytes]) -> None:
    port = serve(echo_app()).port
    with open_websocket(port, "/", OFFER) as peer:
        peer.send(*frames)
        assert peer.expect_close()[0] == 1002


def test_a_compression_bomb_closes_with_1009(serve: ServeFactory) -> None:
    """10 MB of zeros deflate to ~10 kB; the server stops inflating past --ws-max-size."""
    recorder = Recorder()
    port = serve(echo_app(recorder), ws_max_size=100_000).port
    bomb = deflate(bytes(10_000_000))
    assert len(bomb) < 20_000
    with open_websocket(port, "/", OFFER) as peer:
        peer.send(frame(BINARY, bomb, rsv=4))
        assert peer.expect_close() == (1009, b"message too big")
    assert recorder.until(is_disconnect)["code"] == 1009


def test_invalid_deflate_data_closes_with_1007(serve: ServeFactory) -> None:
    port = serve(echo_app()).port
    with open_websocket(port, "/", OFFER) as peer:
        peer.send(frame(BINARY, b"\xff\xff\xff\xff not deflate", rsv=4))
        assert peer.expect_close()[0] == 1007
