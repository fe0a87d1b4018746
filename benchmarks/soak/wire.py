"""The soak client's side of the wire: one asyncio connection and an HTTP/1.1 response reader.

Small and strict on purpose: a status line that is not HTTP/1.1, a head without CRLF CRLF,
a bad chunk line or a body cut short raises `BadAnswer` or `Cut`, which the traffic counts as
a wrong answer. Bodies go to a sink (a hash, a counter), never into memory whole.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["LOOPBACK", "BadAnswer", "Conn", "Cut", "Endpoint", "Head"]

LOOPBACK = "127.0.0.1"
READ = 65536
MAX_HEAD = 65536


class BadAnswer(Exception):
    """The server's bytes are not a valid HTTP/1.1 response."""


class Cut(Exception):
    """The connection ended before the response did (or before it began)."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message)
        self.started = started  # some response bytes had arrived


@dataclass(frozen=True)
class Endpoint:
    """One server under soak: its port, and under TLS the client's contexts (they trust the
    soak's own CA), one offering HTTP/1.1 by ALPN and one offering h2."""

    name: str  # "plain" or "tls"
    port: int
    h1_tls: ssl.SSLContext | None = None
    h2_tls: ssl.SSLContext | None = None

    @property
    def tls(self) -> bool:
        return self.h1_tls is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class Head(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated name keeps its last value


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = False  # a response came back on it already (keep-alive reuse)

    @classmethod
    async def open(cls, endpoint: Endpoint, receive_buffer: int = 0, h2: bool = False) -> Conn:
        """A connection to `endpoint`; under TLS the handshake is done (ALPN h2 with `h2`)."""
        context = endpoint.h2_tls if h2 else endpoint.h1_tls
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if receive_buffer:
            # Before connecting, so the window the server sees is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, endpoint.port))
            reader, writer = await asyncio.open_connection(
                sock=sock,
                limit=MAX_HEAD * 2,
                ssl=context,
                server_hostname="localhost" if context is not None else None,
            )
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    @property
    def alpn(self) -> str | None:
        """The protocol ALPN chose under TLS (None on a plain connection)."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        return None if ssl_object is None else ssl_object.selected_alpn_protocol()

    def half_close(self) -> bool:
        """Send EOF, where the transport can (TLS cannot: asyncio has no half-close there)."""
        if not self.writer.can_write_eof():
            return False
        self.writer.write_eof()
        return True

    def close(self, reset: bool = False) -> None:
        """Close; `reset` sends an RST (SO_LINGER 0), as a client that crashes does."""
        if reset:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()

    async def read_some(self, size: int = READ) -> bytes:
        return await self.reader.read(size)

    async def head(self) -> Head:
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise Cut(
                f"closed before a head ({len(exc.partial)} bytes)", bool(exc.partial)
            ) from None
        except asyncio.LimitOverrunError:
            raise BadAnswer("no end of head within 128 KiB") from None
        except ConnectionResetError:
            raise Cut("reset before a head", False) from None
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
            raise BadAnswer(f"status line {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadAnswer(f"header line {line[:80]!r}")
            headers[name.lower()] = value.strip()
        self.used = True
        return Head(int(parts[1]), headers)

    async def body(self, head: Head, sink: Callable[[bytes], object], method: str = "GET") -> int:
        """Read the body `head` announces into `sink`; returns its size."""
        if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            return 0
        if "chunked" in head.headers.get("transfer-encoding", "").lower():
            return await self._chunked(sink)
        if "content-length" in head.headers:
            return await self._exactly(int(head.headers["content-length"]), sink)
        total = 0
        while data := await self._read():
            sink(data)
            total += len(data)
        return total

    async def _read(self) -> bytes:
        try:
            return await self.reader.read(READ)
        except ConnectionResetError:
            return b""

    async def _exactly(self, size: int, sink: Callable[[bytes], object]) -> int:
        left = size
        while left > 0:
            data = await self.reader.read(min(left, READ))
            if not data:
                raise Cut(f"body cut at {size - left} of {size} bytes", True)
            sink(data)
            left -= len(data)
        return size

    async def _line(self) -> bytes:
        try:
            return (await self.reader.readuntil(b"\r\n"))[:-2]
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise Cut("chunked body cut", True) from None

    async def _chunked(self, sink: Callable[[bytes], object]) -> int:
        total = 0
        while True:
            line = await self._line()
            try:
                size = int(line.split(b";")[0], 16)
            except ValueError:
                raise BadAnswer(f"chunk line {line[:40]!r}") from None
            if size == 0:
                break
            await self._exactly(size, sink)
            total += size
            if await self._line() != b"":
                raise BadAnswer("chunk data not followed by CRLF")
        while await self._line():  # trailer fields, up to the empty line
            pass
        return total

    async def response(self, method: str = "GET") -> tuple[Head, bytes]:
        """A whole small response."""
        head = await self.head()
        parts: list[bytes] = []
        await self.body(head, parts.append, method)
        return head, b"".join(parts)

    async def until_closed(self, limit: int = 1 << 20) -> bytes:
        """Everything the server sends until it closes (bounded)."""
        data = bytearray()
        while len(data) <= limit and (chunk := await self._read()):
            data += chunk
        return bytes(data)
