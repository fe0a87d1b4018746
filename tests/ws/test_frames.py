"""RFC 6455 on the wire: handcrafted frames over a raw socket against a real server."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.conftest import Receive, Scope, Send, ServeFactory, connect
from tests.ws_support import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Peer,
    Recorder,
    close_frame,
    echo_app,
    frame,
    is_disconnect,
    open_websocket,
    text,
    upgrade_request,
    websocket_app,
)


def echo_port(serve: ServeFactory, recorder: Recorder | None = None, **options: object) -> int:
    return serve(echo_app(recorder), **options).port


# -- messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 65536, 70000])
def test_echo_in_every_length_form(serve: ServeFactory, size: int) -> None:
    port = echo_port(serve)
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    with open_websocket(port) as peer:
        peer.send(frame(BINARY, payload))
        echoed = peer.recv_data()
        assert (echoed.fin, echoed.rsv, echoed.opcode, echoed.payload) == (True, 0, BINARY, payload)
        peer.send(text("héllo wörld"))
        assert peer.recv_data().payload.decode("utf-8") == "héllo wörld"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_frame_split_at_every_byte_across_reads(serve: ServeFactory, loop: str) -> None:
    """Every split point of a frame, each half in its own TCP segment: header, mask, payload
    (and a multi-byte UTF-8 character) may all be cut anywhere."""
    port = echo_port(serve, loop=loop)
    frames = [
        text("a€b—c"),  # 7-bit length; three-byte characters
        frame(BINARY, bytes(range(200))),  # 16-bit length
        frame(BINARY, b"x" * 65536),  # 64-bit length
    ]
    with open_websocket(port) as peer:
        peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in frames:
            # Every split in the header, mask and first payload bytes; a sample further in.
            points = sorted({*range(1, min(len(data), 40)), len(data) // 2, len(data) - 1})
            for point in points:
                peer.send(data[:point])
                time.sleep(0.003)
                peer.send(data[point:])
                echoed = peer.recv_data()
                assert frame(echoed.opcode, echoed.payload) == data
        # And one frame a byte at a time.
        data = text("byte by byte: ü")
        for index in range(len(data)):
            peer.send(data[index : index + 1])
            time.sleep(0.001)
        assert peer.recv_data().payload.decode() == "byte by byte: ü"


def test_fragments_with_a_ping_between_are_one_message(serve: ServeFactory) -> None:
    port = echo_port(serve)
    with open_websocket(port) as peer:
        peer.send(
            frame(TEXT, b"Hel", fin=False),
            frame(PING, b"are you there"),
            frame(CONTINUATION, "lo wö".encode()[:5], fin=False),
            frame(CONTINUATION, "lo wö".encode()[5:] + b"rld"),
        )
        pong = peer.recv()
        assert (pong.opcode, pong.payload) == (PONG, b"are you there")
        echoed = peer.recv_data()
        assert (echoed.opcode, echoed.payload.decode()) == (TEXT, "Hello wörld")


def test_a_ping_gets_a_pong_with_its_payload(serve: ServeFactory) -> None:
    port = echo_port(serve)
    with open_websocket(port) as peer:
        for payload in (b"", b"x" * 125):
            peer.send(frame(PING, payload))
            pong = peer.recv()
            assert (pong.opcode, pong.payload) == (PONG, payload)


# -- failures: a Close frame with the code, then the server closes TCP ------------------------

PROTOCOL_ERRORS = {
    "rsv1 without an extension": frame(TEXT, b"x", rsv=4),
    "rsv2": frame(TEXT, b"x", rsv=2),
    "rsv3": frame(BINARY, b"x", rsv=1),
    "opcode 3": frame(0x3, b"x"),
    "opcode 0xB": frame(0xB, b""),
    "unmasked": frame(TEXT, b"x", mask=None),
    "ping of 126 bytes": frame(PING, b"x" * 126),
    "fragmented ping": frame(PING, b"x", fin=False),
    "continuation first": frame(CONTINUATION, b"x"),
    "new message inside a fragmented one": frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
    "2-byte length for a short payload": frame(BINARY, b"x" * 10, length_bytes=2),
    "8-byte length for a short payload": frame(BINARY, b"x" * 10, length_bytes=8),
    "close of one byte": frame(CLOSE, b"\x03"),
    "close code 999": close_frame(999),
    "close code 1004": close_frame(1004),
    "close code 1005": close_frame(1005),
    "close code 1006": close_frame(1006),
    "close code 1014": close_frame(1014),
    "close code 1015": close_frame(1015),
    "close code 1016": close_frame(1016),
    "close code 2999": close_frame(2999),
    "close code 5000": close_frame(5000),
}

INVALID_DATA = {
    "invalid UTF-8": frame(TEXT, b"ok \xff"),
    "overlong UTF-8": frame(TEXT, b"\xc0\xaf"),
    "a surrogate in UTF-8": frame(TEXT, b"\xed\xa0\x80"),
    "UTF-8 cut at the end of the message": frame(TEXT, "€".encode()[:2]),
    "invalid UTF-8 across fragments": frame(TEXT, b"\xe2", fin=False)
    + frame(CONTINUATION, b"\x28\xa1"),
    "invalid UTF-8 in a close reason": close_frame(1000, b"\xff"),
}


@pytest.mark.parametrize(
    ("data", "code"),
    [(data, 1002) for data in PROTOCOL_ERRORS.values()]
    + [(data, 1007) for data in INVALID_DATA.values()],
    ids=[*PROTOCOL_ERRORS, *INVALID_DATA],
)
def test_a_bad_frame_fails_the_connection_with_its_code(
    serve: ServeFactory, data: bytes, code: int
) -> None:
    recorder = Recorder()
    port = echo_port(serve, recorder)
    with open_websocket(port) as peer:
        peer.send(data)
        received, _ = peer.expect_close()
        assert received == code
    assert recorder.until(is_disconnect)["code"] == code


def test_the_server_keeps_reading_until_the_peer_closes_after_a_failure(
    serve: ServeFactory,
) -> None:
    """A peer still sending when it is failed gets the Close frame, not a reset."""
    port = echo_port(serve, ws_max_size=1000)
    with open_websocket(port) as peer:
        peer.send(frame(BINARY, b"x" * 2000))
        for _ in range(50):
            peer.send(frame(BINARY, b"y" * 10000))
        first = peer.recv_data()
        assert (first.opcode, first.close_code) == (CLOSE, 1009)
        peer.sock.shutdown(socket.SHUT_WR)
        assert peer.reader.read_until_closed() == b""


# -- the closing handshake ------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 1013, 3000, 4999])
def test_a_client_close_is_answered_and_the_server_closes_tcp(
    serve: ServeFactory, code: int
) -> None:
    recorder = Recorder()
    port = echo_port(serve, recorder)
    with open_websocket(port) as peer:
        peer.send(close_frame(code, "au revoir ✓".encode()))
        assert peer.expect_close() == (code, "au revoir ✓".encode())
    disconnect = recorder.until(is_disconnect)
    assert (disconnect["code"], disconnect["reason"]) == (code, "au revoir ✓")


def test_a_close_without_a_code_is_answered_without_one(serve: ServeFactory) -> None:
    recorder = Recorder()
    port = echo_port(serve, recorder)
    with open_websocket(port) as peer:
        peer.send(close_frame())
        assert peer.expect_close() == (None, b"")
    assert recorder.until(is_disconnect)["code"] == 1005


def test_a_client_that_vanishes_is_a_1006_disconnect(serve: ServeFactory) -> None:
    recorder = Recorder()
    port = echo_port(serve, recorder)
    with open_websocket(port) as peer:
        peer.send(text("hi"))
        assert peer.recv_data().payload == b"hi"
    assert recorder.until(is_disconnect)["code"] == 1006


def test_the_close_deadline_drops_a_peer_that_never_answers(serve: ServeFactory) -> None:
    recorder = Recorder()

    async def closer(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "done"})
        recorder.put(await receive())

    port = serve(websocket_app(closer), ws_handshake_timeout=0.5).port
    with open_websocket(port) as peer:
        started = time.monotonic()
        received = peer.recv_data()
        assert (received.opcode, received.close_code, received.payload[2:]) == (
            CLOSE,
            4001,
            b"done",
        )
        assert peer.reader.read_until_closed() == b""  # dropped without our Close
        assert time.monotonic() - started < 5
    assert recorder.until(is_disconnect)["code"] == 1006


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "closed"),
    [
        ([frame(BINARY, b"x" * 1000)], False),
        ([frame(BINARY, b"x" * 1001)], True),
        ([frame(BINARY, b"x" * 600, fin=False), frame(CONTINUATION, b"x" * 600)], True),
        ([text("€" * 333)], False),  # 999 bytes
        ([text("€" * 334)], True),  # 334 characters, but 1002 bytes
    ],
    ids=["at the limit", "one byte over", "over in fragments", "utf-8 at", "utf-8 over"],
)
def test_ws_max_size_closes_with_1009(
    serve: ServeFactory, frames: list[bytes], closed: bool
) -> None:
    recorder = Recorder()
    port = echo_port(serve, recorder, ws_max_size=1000)
    with open_websocket(port) as peer:
        peer.send(*frames)
        if closed:
            assert peer.expect_close() == (1009, b"message too big")
            assert recorder.until(is_disconnect)["code"] == 1009
        else:
            assert len(peer.recv_data().payload) in (1000, 999)


def test_keepalive_pings_and_a_dead_peer_is_closed(serve: ServeFactory) -> None:
    recorder = Recorder()
    port = echo_port(serve, recorder, ws_ping_interval=0.2, ws_ping_timeout=0.4)
    with open_websocket(port) as alive, open_websocket(port) as dead:
        # The live peer answers three pings and is still served.
        for _ in range(3):
            ping = alive.recv()
            assert ping.opcode == PING
            alive.send(frame(PONG, ping.payload))
        alive.send(text("still here"))
        assert alive.recv_data().payload == b"still here"
        # The dead one never answers: a Close with 1011 and the connection ends.
        first = dead.recv()
        assert first.opcode == PING
        code, reason = dead.expect_close()
        assert (code, reason) == (1011, b"keepalive ping timeout")
    codes = {recorder.until(is_disconnect)["code"] for _ in range(2)}
    assert codes == {1011, 1006}


def test_the_handshake_deadline_answers_500(serve: ServeFactory) -> None:
    recorder = Recorder()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        recorder.put(await receive())
        recorder.put(await receive())  # it never accepts

    port = serve(websocket_app(slow), ws_handshake_timeout=0.3).port
    with Peer(connect(port)) as peer:
        started = time.monotonic()
        status, _ = peer.handshake(upgrade_request("/slow"))
        assert status == b"HTTP/1.1 500 Internal Server Error"
        assert time.monotonic() - started < 3
    assert recorder.get()["type"] == "websocket.connect"
    assert recorder.until(is_disconnect)["code"] == 1006


def test_frames_sent_before_the_101_are_served_after_it(serve: ServeFactory) -> None:
    async def late(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.2)
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "got " + message["text"]})
        await receive()

    port = serve(websocket_app(late)).port
    with Peer(connect(port)) as peer:
        status, _ = peer.handshake(upgrade_request() + text("early"))
        assert status == b"HTTP/1.1 101 Switching Protocols"
        assert peer.recv_data().payload == b"got early"
