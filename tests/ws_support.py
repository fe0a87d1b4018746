"""A WebSocket peer made by hand, for the raw-socket tests: frames built byte by byte.

Nothing here comes from a WebSocket library, so a test can send exactly the frame a rule is
about, masked or not, with any length form, split anywhere.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

from tests.conftest import SOCKET_TIMEOUT, Reader, Receive, Scope, Send, connect

# RFC 6455 section 1.3: the sample key and the answer it must get.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
MASK = b"\x37\xfa\x21\x3d"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(path: str = "/", *headers: str, version: str = "1.1") -> bytes:
    """A valid opening handshake; `headers` ("Name: value") are added after the usual ones."""
    lines = [
        f"GET {path} HTTP/{version}",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY.decode()}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def masked(payload: bytes, key: bytes = MASK) -> bytes:
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(payload), "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
    length_bytes: int | None = None,
) -> bytes:
    """One frame; `rsv` is the three reserved bits (4 = RSV1); `length_bytes` forces 0, 2 or 8
    extra length bytes (the shortest form by default)."""
    size = len(payload)
    if length_bytes is None:
        length_bytes = 0 if size < 126 else 2 if size < 65536 else 8
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if mask is not None else 0
    if length_bytes == 0:
        head = bytes([first, bit | size])
    elif length_bytes == 2:
        head = bytes([first, bit | 126]) + struct.pack("!H", size)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", size)
    if mask is None:
        return head + payload
    return head + mask + masked(payload, mask)


def text(value: str, **options: Any) -> bytes:
    return frame(TEXT, value.encode("utf-8"), **options)


def close_frame(code: int | None = None, reason: bytes = b"", **options: Any) -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(CLOSE, payload, **options)


def deflate(data: bytes, compressor: Any = None) -> bytes:
    """RFC 7692 section 7.2.1: deflate, sync flush, and drop the final 00 00 ff ff."""
    compressor = compressor or zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out: bytes = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class Peer:
    """The client end of one WebSocket connection, over a plain socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = Reader(sock)

    def handshake(self, request: bytes) -> tuple[bytes, dict[bytes, bytes]]:
        self.sock.sendall(request)
        return self.reader.read_head()

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def recv(self) -> Frame:
        head = self.reader.read_exact(2)
        assert not head[1] & 0x80, "a server must not mask its frames"
        size = head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", self.reader.read_exact(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self.reader.read_exact(8))[0]
        payload = self.reader.read_exact(size)
        return Frame(bool(head[0] & 0x80), (head[0] >> 4) & 7, head[0] & 0x0F, payload)

    def recv_data(self) -> Frame:
        """The next frame that is not a ping (pings from the server's keepalive are skipped)."""
        while True:
            received = self.recv()
            if received.opcode != PING:
                return received

    def expect_close(self) -> tuple[int | None, bytes]:
        """The server's Close frame, then the end of the connection: (code, reason)."""
        received = self.recv_data()
        assert received.opcode == CLOSE, received
        rest = self.reader.read_until_closed()
        assert rest == b"", f"bytes after the Close frame: {rest[:60]!r}"
        return received.close_code, received.payload[2:]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_websocket(
    port: int, path: str = "/", *headers: str, timeout: float = SOCKET_TIMEOUT
) -> Peer:
    """A fresh connection with its handshake done (the 101 checked)."""
    peer = Peer(connect(port, timeout))
    status, answer = peer.handshake(upgrade_request(path, *headers))
    assert status == b"HTTP/1.1 101 Switching Protocols", (status, answer)
    assert answer[b"sec-websocket-accept"] == ACCEPT
    return peer


class Recorder:
    """What an application saw, handed from the server's thread to the test's."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any) -> None:
        self.events.put(item)

    def get(self, timeout: float = SOCKET_TIMEOUT) -> Any:
        return self.events.get(timeout=timeout)

    def until(self, predicate: Any, timeout: float = SOCKET_TIMEOUT) -> Any:
        """The first recorded item for which predicate(item) is true (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the application did not record what was expected"
            item = self.events.get(timeout=remaining)
            if predicate(item):
                return item


def is_disconnect(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "websocket.disconnect"


def echo_app(recorder: Recorder | None = None, **accept: Any) -> Any:
    """Accept (with `accept`'s keys), echo every message, record the disconnect and return."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "websocket":
            await _plain_ok(send)
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", **accept})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if recorder is not None:
                    recorder.put(message)
                return
            await send(
                {
                    "type": "websocket.send",
                    "text": message.get("text"),
                    "bytes": message.get("bytes"),
                }
            )

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def _plain_ok(send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def websocket_app(handler: Any) -> Any:
    """An ASGI app: `handler(scope, receive, send)` for websocket scopes, 200 "ok" for HTTP."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "websocket":
            await handler(scope, receive, send)
        else:
            await _plain_ok(send)

    return app


async def wait_for_thread_event(event: Any, timeout: float = SOCKET_TIMEOUT) -> bool:
    """Let an application wait for a threading.Event the test sets, without blocking the loop."""
    result: bool = await asyncio.to_thread(event.wait, timeout)
    return result
