"""The built-in load client: bounded asyncio HTTP/1.1 over raw non-blocking sockets.

Used for the streaming scenarios (one 200 MiB download read fully, one 200 MiB upload sent from a
generator) and as the request-load fallback when wrk is not installed. It runs as its own process
(`python -m benchmarks.client ...`, printing one JSON Measurement) so the harness can pin it to
the load core and kill it at a hard deadline. Bodies go through one reused buffer with
sock_recv_into, so the client copies as little as it can and is not what is being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from collections import Counter
from collections.abc import Iterator

from benchmarks.apps import CHUNK
from benchmarks.measurement import Measurement
from benchmarks.procs import LOOPBACK

MIB = 1024 * 1024


class ProtocolError(Exception):
    pass


class Closed(Exception):
    """The server closed the connection before the response was complete."""


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.scratch = bytearray(MIB)
        self.view = memoryview(self.scratch)

    @classmethod
    async def open(cls, port: int) -> Connection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        n = await self.loop.sock_recv_into(self.sock, self.scratch)
        if n == 0:
            raise Closed
        self.buffer += self.view[:n]

    async def _until(self, marker: bytes, limit: int = 65536) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise ProtocolError(f"no {marker!r} within {limit} bytes")
            await self._fill()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    async def discard(self, size: int) -> None:
        """Read and drop exactly `size` body bytes, straight into the scratch buffer."""
        taken = min(size, len(self.buffer))
        del self.buffer[:taken]
        size -= taken
        while size > 0:
            n = await self.loop.sock_recv_into(self.sock, self.view[: min(size, MIB)])
            if n == 0:
                raise Closed
            size -= n

    async def discard_to_eof(self) -> int:
        got = len(self.buffer)
        self.buffer.clear()
        while n := await self.loop.sock_recv_into(self.sock, self.scratch):
            got += n
        return got

    async def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bool]:
        """Read a response head and (unless head_only) its body; return status, headers, keep."""
        head = (await self._until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"bad status line {head[0]!r}")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection
        if parts[0] == "HTTP/1.0":
            keep = "keep-alive" in connection
        if not head_only:
            await self.body(headers)
            if "content-length" not in headers and "chunked" not in headers.get(
                "transfer-encoding", ""
            ):
                keep = False
        return int(parts[1]), headers, keep

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def small_body(self, headers: dict[str, str]) -> bytes:
        """Read a short body and keep it (the upload app's byte count)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            data = bytearray()
            while size := int((await self._until(b"\r\n")).split(b";")[0], 16):
                data += (await self.exactly(size + 2))[:-2]
            while await self._until(b"\r\n"):
                pass
            return bytes(data)
        if "content-length" in headers:
            return await self.exactly(int(headers["content-length"]))
        data = bytearray(self.buffer)
        self.buffer.clear()
        while n := await self.loop.sock_recv_into(self.sock, self.scratch):
            data += self.view[:n]
        return bytes(data)

    async def body(self, headers: dict[str, str]) -> int:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while size := int((await self._until(b"\r\n")).split(b";")[0], 16):
                await self.discard(size + 2)
                total += size
            while await self._until(b"\r\n"):  # trailers, up to the empty line
                pass
            return total
        if "content-length" in headers:
            size = int(headers["content-length"])
            await self.discard(size)
            return size
        return await self.discard_to_eof()


def _request(method: str, path: str, port: int, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n{extra}\r\n".encode()


def _classify(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect"
    if isinstance(exc, BrokenPipeError):
        return "write"
    return "read"


async def http_load(
    port: int, path: str, connections: int, duration: float, close: bool, timeout: float
) -> Measurement:
    """wrk's job, slower: `connections` loops of request/response for `duration` seconds."""
    request = _request("GET", path, port, "Connection: close\r\n" if close else "")
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    start = time.perf_counter()
    stop_at = start + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            try:
                async with asyncio.timeout(timeout):
                    conn = await Connection.open(port)
            except (OSError, TimeoutError) as exc:
                errors["connect" if not isinstance(exc, TimeoutError) else "timeout"] += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    async with asyncio.timeout(timeout):
                        await conn.send(request)
                        status, _, keep = await conn.response()
                    latencies.append(time.perf_counter() - t0)
                    if status >= 400:
                        errors["status"] += 1
                    if close or not keep:
                        break
            except (OSError, TimeoutError, Closed, ProtocolError, ValueError) as exc:
                errors[_classify(exc)] += 1
            finally:
                conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return _summary(latencies, errors, elapsed)


def _summary(latencies: list[float], errors: Counter[str], elapsed: float) -> Measurement:
    p50 = p99 = None
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        p50, p99 = cuts[49] * 1000, cuts[98] * 1000
    elif latencies:
        p50 = p99 = latencies[0] * 1000
    return Measurement(
        value=len(latencies) / elapsed if elapsed else 0.0,
        unit="req/s",
        seconds=elapsed,
        requests=len(latencies),
        errors=sum(errors.values()),
        error_detail=dict(errors),
        p50_ms=p50,
        p99_ms=p99,
        tool="builtin",
    )


def stream_result(
    size: int, elapsed: float, errors: Counter[str], note: str, tool: str = "builtin"
) -> Measurement:
    """One timed transfer of `size` bytes as a Measurement in MiB/s (0 when it failed)."""
    ok = not errors
    return Measurement(
        value=size / MIB / elapsed if ok and elapsed else 0.0,
        unit="MiB/s",
        seconds=elapsed,
        requests=1 if ok else 0,
        errors=sum(errors.values()),
        error_detail=dict(errors),
        tool=tool,
        note=note,
    )


async def download(port: int, path: str, size: int, timeout: float) -> Measurement:
    """GET a `size`-byte response and read all of it; timed from request to last byte."""
    errors: Counter[str] = Counter()
    note = ""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            conn = await Connection.open(port)
            try:
                await conn.send(_request("GET", path, port))
                status, headers, _ = await conn.response(head_only=True)
                got = await conn.body(headers)
            finally:
                conn.close()
        if status != 200:
            errors["status"] += 1
            note = f"status {status}"
        elif got != size:
            errors["short"] += 1
            note = f"got {got} of {size} bytes"
    except (OSError, TimeoutError, Closed, ProtocolError, ValueError) as exc:
        errors[_classify(exc)] += 1
        note = f"{type(exc).__name__}: {exc}"
    return stream_result(size, time.perf_counter() - start, errors, note)


def _blocks(size: int) -> Iterator[bytes]:
    # The same 64 KiB block again and again: the upload is streamed, never built in memory.
    block = b"u" * CHUNK
    full, rest = divmod(size, CHUNK)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


async def upload(port: int, path: str, size: int, timeout: float) -> Measurement:
    """POST `size` bytes with a Content-Length; the app answers with the count it read."""
    errors: Counter[str] = Counter()
    note = ""
    extra = f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            conn = await Connection.open(port)
            try:
                await conn.send(_request("POST", path, port, extra))
                for block in _blocks(size):
                    await conn.send(block)
                status, headers, _ = await conn.response(head_only=True)
                answer = await conn.small_body(headers)
            finally:
                conn.close()
        if status != 200:
            errors["status"] += 1
            note = f"status {status}"
        elif answer.strip() != str(size).encode():
            errors["short"] += 1
            note = f"app read {answer[:40]!r} of {size} bytes"
    except (OSError, TimeoutError, Closed, ProtocolError, ValueError) as exc:
        errors[_classify(exc)] += 1
        note = f"{type(exc).__name__}: {exc}"
    return stream_result(size, time.perf_counter() - start, errors, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["http", "download", "upload"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--close", action="store_true", help="send Connection: close")
    parser.add_argument("--bytes", type=int, default=200 * MIB, help="streamed size")
    parser.add_argument("--timeout", type=float, default=2.0, help="per request (http) or total")
    args = parser.parse_args()
    if args.mode == "http":
        coro = http_load(
            args.port, args.path, args.connections, args.duration, args.close, args.timeout
        )
    elif args.mode == "download":
        coro = download(args.port, args.path, args.bytes, args.timeout)
    else:
        coro = upload(args.port, args.path, args.bytes, args.timeout)
    print(json.dumps(asyncio.run(coro).to_json()))


if __name__ == "__main__":
    main()
