"""The WebSocket load client: echo round trips over N connections, and bulk transfers.

Like client.py it runs as its own process (`python -m benchmarks.ws_client MODE ...`, printing
one JSON Measurement) so the harness can pin it to the load core and kill it at a deadline. It
speaks RFC 6455 itself over asyncio protocols, with as little Python per frame as it can: each
connection's frame is masked once and sent again and again (a fixed mask is valid on the wire;
a browser picks a new one per frame, which costs the server nothing more), and replies are
counted, not copied. It offers no extension, so no server compresses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import socket
import statistics
import struct
import time
from collections import Counter

from benchmarks.apps import CHUNK
from benchmarks.client import stream_result
from benchmarks.measurement import Measurement
from benchmarks.procs import LOOPBACK

MIB = 1024 * 1024
# A short chat-like text message, the common case for echo benchmarks.
ECHO_MESSAGE = b"the quick brown fox, 32 bytes ok"


class Failed(Exception):
    pass


def _request(path: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame with a random key."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = os.urandom(4)
    mask = (key * (size // 4 + 1))[:size]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    return head + key + body if size else head + key


class FrameCounter:
    """Follows server frames through a byte stream: binary payload is counted, not kept."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.left = 0  # payload bytes of the current frame still to come
        self.opcode = 0
        self.payload = bytearray()  # kept only for other frames (short answers)
        self.frames: list[tuple[int, bytes]] = []  # finished frames other than binary
        self.binary_bytes = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self.left:
                take = min(self.left, end - pos)
                if self.opcode == 0x2:
                    self.binary_bytes += take
                else:
                    self.payload += view[pos : pos + take]
                pos += take
                self.left -= take
                if not self.left:
                    self._finish()
                continue
            head = self.head
            need = 2 if len(head) < 2 else 2 + _EXTRA.get(head[1] & 0x7F, 0)
            take = min(need - len(head), end - pos)
            head += view[pos : pos + take]
            pos += take
            if len(head) < 2 or len(head) < 2 + _EXTRA.get(head[1] & 0x7F, 0):
                continue
            self.opcode = head[0] & 0x0F
            size = head[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", head[2:4])[0]
            elif size == 127:
                size = struct.unpack("!Q", head[2:10])[0]
            head.clear()
            self.left = size
            if not size:
                self._finish()

    def _finish(self) -> None:
        if self.opcode != 0x2:
            self.frames.append((self.opcode, bytes(self.payload)))
            self.payload.clear()


_EXTRA = {126: 2, 127: 8}


class EchoConnection(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: list[float], errors: Counter[str]) -> None:
        self.request = request
        self.latencies = latencies
        self.errors = errors
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.open = False
        self.buffer = b""
        self.frame = client_frame(0x1, ECHO_MESSAGE)
        self.reply = 2 + len(ECHO_MESSAGE)
        self.stop_at = 0.0
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.fail("handshake")
                return
            self.open = True
            self.buffer = self.buffer[end + 4 :]
            self.ready.set_result(None)
        while len(self.buffer) >= self.reply:
            if self.buffer[0] != 0x81 or self.buffer[1] != len(ECHO_MESSAGE):
                self.fail("frame")
                return
            self.buffer = self.buffer[self.reply :]
            now = time.perf_counter()
            self.latencies.append(now - self.sent_at)
            self.send(now)

    def start(self, stop_at: float) -> None:
        self.stop_at = stop_at
        self.send(time.perf_counter())

    def send(self, now: float) -> None:
        if now < self.stop_at and self.transport is not None:
            self.sent_at = now
            self.transport.write(self.frame)
        elif self.transport is not None:
            self.transport.close()

    def fail(self, why: str) -> None:
        self.errors[why] += 1
        if not self.ready.done():
            self.ready.set_exception(Failed(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(Failed("closed"))
        elif time.perf_counter() < self.stop_at:
            self.errors["closed"] += 1
            self.stop_at = 0.0


def _same(peer: EchoConnection) -> EchoConnection:
    return peer


async def echo(port: int, path: str, connections: int, duration: float) -> Measurement:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    peers: list[EchoConnection] = []
    for _ in range(connections):
        peer = EchoConnection(_request(path, port), latencies, errors)
        try:
            await asyncio.wait_for(
                loop.create_connection(functools.partial(_same, peer), LOOPBACK, port), 10
            )
            await asyncio.wait_for(peer.ready, 10)
        except (OSError, TimeoutError, Failed) as exc:
            errors[type(exc).__name__] += 1
            continue
        peers.append(peer)
    start = time.perf_counter()
    for peer in peers:
        peer.start(start + duration)
    await asyncio.sleep(duration + 0.05)
    elapsed = time.perf_counter() - start
    for peer in peers:
        if peer.transport is not None:
            peer.transport.close()
    p50 = p99 = None
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        p50, p99 = cuts[49] * 1000, cuts[98] * 1000
    return Measurement(
        value=len(latencies) / min(elapsed, duration) if latencies else 0.0,
        unit="msg/s",
        seconds=duration,
        requests=len(latencies),
        errors=sum(errors.values()),
        error_detail=dict(errors),
        p50_ms=p50,
        p99_ms=p99,
        tool="ws-builtin",
    )


async def _open(port: int, path: str) -> tuple[socket.socket, bytes]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (LOOPBACK, port))
    await loop.sock_sendall(sock, _request(path, port))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise Failed("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise Failed(head.split(b"\r\n", 1)[0].decode("latin-1"))
    return sock, head[head.index(b"\r\n\r\n") + 4 :]


async def download(port: int, path: str, size: int, timeout: float) -> Measurement:
    loop = asyncio.get_running_loop()
    errors: Counter[str] = Counter()
    note = ""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            sock, rest = await _open(port, f"{path}?{size}")
            counter = FrameCounter()
            counter.feed(rest)
            buffer = bytearray(MIB)
            try:
                while not counter.frames:
                    n = await loop.sock_recv_into(sock, buffer)
                    if not n:
                        raise Failed("closed mid-stream")
                    counter.feed(bytes(memoryview(buffer)[:n]))
            finally:
                sock.close()
        if counter.frames[0] != (0x1, b"end") or counter.binary_bytes != size:
            errors["short"] += 1
            note = f"got {counter.binary_bytes} of {size} bytes, then {counter.frames[0]!r}"
    except (OSError, TimeoutError, Failed) as exc:
        errors[type(exc).__name__] += 1
        note = f"{type(exc).__name__}: {exc}"
    return stream_result(size, time.perf_counter() - start, errors, note, "ws-builtin")


async def upload(port: int, path: str, size: int, timeout: float) -> Measurement:
    loop = asyncio.get_running_loop()
    errors: Counter[str] = Counter()
    note = ""
    message = client_frame(0x2, os.urandom(CHUNK))
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            sock, _ = await _open(port, path)
            try:
                for _ in range(size // CHUNK):
                    await loop.sock_sendall(sock, message)
                await loop.sock_sendall(sock, client_frame(0x1, b"end"))
                counter = FrameCounter()
                while not counter.frames:
                    chunk = await loop.sock_recv(sock, 65536)
                    if not chunk:
                        raise Failed("closed before the count")
                    counter.feed(chunk)
            finally:
                sock.close()
        expected = size // CHUNK * CHUNK
        if counter.frames[0] != (0x1, str(expected).encode()):
            errors["short"] += 1
            note = f"app counted {counter.frames[0]!r} of {expected}"
    except (OSError, TimeoutError, Failed) as exc:
        errors[type(exc).__name__] += 1
        note = f"{type(exc).__name__}: {exc}"
    return stream_result(size, time.perf_counter() - start, errors, note, "ws-builtin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["echo", "download", "upload"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--bytes", type=int, default=200 * MIB, help="streamed size")
    parser.add_argument("--timeout", type=float, default=180.0, help="longest one transfer")
    args = parser.parse_args()
    if args.mode == "echo":
        coro = echo(args.port, args.path, args.connections, args.duration)
    elif args.mode == "download":
        coro = download(args.port, args.path, args.bytes, args.timeout)
    else:
        coro = upload(args.port, args.path, args.bytes, args.timeout)
    print(json.dumps(asyncio.run(coro).to_json()))


if __name__ == "__main__":
    main()
