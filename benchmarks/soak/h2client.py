"""The soak's HTTP/2 client: h2's client state machine over one asyncio connection.

h2 frames and checks every byte both ways (a frame the server gets wrong is a ProtocolError, a
wrong answer); this module adds the I/O and what a well-behaved client does: it waits for the
server's SETTINGS before it counts the connection as HTTP/2, sends request bodies within the
server's windows, hands back the window of what it read (unless told not to: a stream whose
window stays shut cannot end, which is what makes a client reset of it certain to count), and
ends with a GOAWAY of its own, or waits for the server's when idle, or drops the connection.
Bodies go to a sink, never into memory whole.

GOAWAY frames are read here, never by h2: h2's client takes a GOAWAY as the end of the
connection (any frame after it is a ProtocolError), where RFC 9113 section 6.8 has the streams
up to its last stream id go on; a graceful stop's GOAWAY, PING, GOAWAY is exactly that. So the
reader splits the server's bytes into frames (a 9-byte header and its payload), keeps each
GOAWAY (its last stream id, its code) and feeds h2 the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from benchmarks.soak.ledger import Ledger, Ticket
from benchmarks.soak.wire import BadAnswer, Conn, Cut, Endpoint

__all__ = ["STREAM_WINDOW", "GoAway", "H2Conn", "H2Stream", "Refused"]

STREAM_WINDOW = 256 * 1024  # the client's receive window per stream (SETTINGS)
CONNECTION_WINDOW = 1 << 30  # the client's connection window: never what limits a stream
READ = 65536
FRAME_HEADER = 9
GOAWAY = 0x7


class GoAway(NamedTuple):
    last_stream_id: int
    error_code: int


class Refused(Exception):
    """The server's GOAWAY named a last stream below this one: it was never processed, and
    may be sent again on a new connection (RFC 9113 section 6.8)."""


class H2Stream:
    """One request on an H2Conn: its ticket, the response as it arrives."""

    def __init__(
        self, stream_id: int, ticket: Ticket | None, sink: Callable[[bytes], object], ack: bool
    ) -> None:
        self.stream_id = stream_id
        self.ticket = ticket
        self.sink = sink
        self.ack = ack  # hand the window back as data is read
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.received = 0
        self.window_updates = 0  # WINDOW_UPDATE frames for this stream: its handler took body
        self.reset_code: int | None = None  # the server's RST_STREAM
        self.reset_by_us = False
        self.head = asyncio.Event()
        self.ended = asyncio.Event()  # END_STREAM, a reset, or the connection's end
        self.refused = False
        self.complete = False  # END_STREAM arrived

    def finish(self) -> None:
        self.head.set()
        self.ended.set()


class H2Conn:
    def __init__(self, conn: Conn, ledger: Ledger, authority: bytes, scheme: bytes) -> None:
        self._conn = conn
        self._ledger = ledger
        self._authority = authority
        self._scheme = scheme
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, H2Stream] = {}
        self.settings_seen = asyncio.Event()
        self.closed = asyncio.Event()  # EOF, a reset or a protocol error
        self.error: str | None = None
        self.goaway: GoAway | None = None  # the last one the server sent
        self.goaways = 0
        self._frames = bytearray()  # the server's bytes not yet a whole frame
        self._window = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, endpoint: Endpoint, ledger: Ledger) -> H2Conn:
        """Connected, the prefaces exchanged: the server has taken it as HTTP/2 (counted)."""
        ledger.unsure_of("h2_connections")
        conn = await Conn.open(endpoint, h2=True)
        if endpoint.tls and conn.alpn != "h2":
            conn.close()
            raise BadAnswer(f"ALPN chose {conn.alpn!r}, not h2")
        self = cls(conn, ledger, b"soak", endpoint.scheme.encode())
        h2 = self.h2
        h2.initiate_connection()
        h2.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW, SettingCodes.ENABLE_PUSH: 0}
        )
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._reader = asyncio.create_task(self._read())
        try:
            await self.flush()
            await self._wait(self.settings_seen)
        except BaseException:
            self.close()
            raise
        ledger.resolve("h2_connections")
        return self

    # -- reading --------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while data := await self._conn.read_some(READ):
                events = self.h2.receive_data(self._split(data))
                for event in events:
                    self._on(event)
                await self.flush()
        except H2Error as exc:
            self.error = f"HTTP/2 protocol error from the server: {exc!r}"[:200]
        except OSError as exc:
            if self.goaway is None:
                self.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.closed.set()
            self._window.set()
            for stream in self.streams.values():
                stream.finish()

    def _split(self, data: bytes) -> bytes:
        """The whole frames of what has arrived, but GOAWAYs (kept, and counted)."""
        buffer = self._frames
        buffer += data
        out = bytearray()
        while len(buffer) >= FRAME_HEADER:
            end = FRAME_HEADER + int.from_bytes(buffer[:3], "big")
            if len(buffer) < end:
                break
            if buffer[3] == GOAWAY:
                payload = bytes(buffer[FRAME_HEADER:end])
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self._goaway(GoAway(last, int.from_bytes(payload[4:8], "big")))
            else:
                out += buffer[:end]
            del buffer[:end]
        return bytes(out)

    def _goaway(self, goaway: GoAway) -> None:
        self.goaway = goaway
        self.goaways += 1
        code = goaway.error_code
        self._ledger.sure("h2_goaways_no_error" if code == 0 else "h2_goaways_error")
        for stream_id, stream in self.streams.items():
            if stream_id > goaway.last_stream_id:
                stream.refused = True
                stream.finish()

    def _on(self, event: Any) -> None:
        streams = self.streams
        if isinstance(event, DataReceived):
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.sink(event.data)
                stream.received += len(event.data)
            if stream is None or stream.ack:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, ResponseReceived):
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.headers = dict(event.headers)
                stream.status = int(stream.headers[b":status"])
                if stream.ticket is not None:
                    stream.ticket.answered(stream.status)
                stream.head.set()
        elif isinstance(event, StreamEnded):
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.complete = True
                stream.finish()
        elif isinstance(event, StreamReset):
            stream = streams.get(event.stream_id)
            if event.remote_reset:
                self._ledger.sure("h2_resets_server")
            if stream is not None:
                stream.reset_code = int(event.error_code)
                stream.finish()
        elif isinstance(event, WindowUpdated):
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.window_updates += 1
            self._window.set()
        elif isinstance(event, RemoteSettingsChanged):
            self.settings_seen.set()
            self._window.set()

    async def _wait(self, event: asyncio.Event) -> None:
        if not event.is_set():
            closed = asyncio.ensure_future(self.closed.wait())
            waiting = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({closed, waiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                waiting.cancel()
        # Another writer may have cleared a shared event again: only a closed connection ends
        # the wait in failure; the callers look again at what they wait for.
        if not event.is_set() and self.closed.is_set():
            why = self.error or f"the server closed the HTTP/2 connection (GOAWAY: {self.goaway})"
            raise Cut(why, False)

    # -- writing --------------------------------------------------------------------------

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed.is_set():
            await self._conn.send(data)

    def request(
        self,
        method: str,
        path: str,
        *,
        body_size: int | None = None,
        sink: Callable[[bytes], object] = lambda _: None,
        ack: bool = True,
        ticket: Ticket | None = None,
    ) -> H2Stream:
        """HEADERS sent (flush to put them on the wire); the body, if any, with `send_body`."""
        if self.goaway is not None or self.closed.is_set():
            raise Refused("the connection is going away")
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", self._scheme),
            (b":authority", self._authority),
            (b":path", path.encode()),
        ]
        if body_size is not None:
            headers.append((b"content-length", b"%d" % body_size))
        stream = H2Stream(stream_id, ticket, sink, ack)
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, headers, end_stream=body_size is None)
        return stream

    async def send_body(
        self, stream: H2Stream, data: bytes, end: bool = True, until: int | None = None
    ) -> int:
        """Send `data` within the windows (the first `until` bytes only, if given); returns how
        many bytes went."""
        sid = stream.stream_id
        limit = len(data) if until is None else min(until, len(data))
        sent = 0
        while sent < limit:
            if stream.ended.is_set():
                raise Cut(f"stream {sid} ended during its upload", stream.status is not None)
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window <= 0:
                self._window.clear()
                await self._wait(self._window)
                continue
            piece = data[sent : sent + min(window, limit - sent)]
            self.h2.send_data(sid, piece)
            sent += len(piece)
            await self.flush()
        if end and sent == len(data):
            self.h2.end_stream(sid)
            await self.flush()
        return sent

    async def response(self, stream: H2Stream) -> None:
        """Until the stream ends; Refused, or Cut for a reset or a connection gone under it."""
        await stream.ended.wait()
        if stream.refused:
            raise Refused(f"stream {stream.stream_id} above the server's last stream")
        if stream.reset_code is not None:
            raise Cut(
                f"stream {stream.stream_id} reset by the server ({stream.reset_code:#x})",
                stream.status is not None,
            )
        if not stream.complete:
            raise Cut(self.error or "the connection ended under a stream", stream.received > 0)
        self.streams.pop(stream.stream_id, None)

    async def reset(self, stream: H2Stream) -> None:
        """RST_STREAM CANCEL from the client, as a client that no longer wants the answer."""
        self.h2.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
        stream.reset_by_us = True
        self.streams.pop(stream.stream_id, None)
        await self.flush()

    async def wait_window_update(self, stream: H2Stream) -> None:
        while not stream.window_updates:
            if stream.ended.is_set():
                raise Cut(f"stream {stream.stream_id} ended before any WINDOW_UPDATE", False)
            self._window.clear()
            await self._wait(self._window)

    # -- the end --------------------------------------------------------------------------

    async def goodbye(self) -> bytes:
        """GOAWAY of the client's, then read to EOF (the server closes): whatever the server
        said before is read, so a GOAWAY of its own in the bytes is counted."""
        self.h2.close_connection()
        await self.flush()
        await self.closed.wait()
        return b""

    async def idle_until_goaway(self) -> GoAway | None:
        """Open no stream and wait: the server ends an idle connection with GOAWAY."""
        await self.closed.wait()
        return self.goaway

    def close(self, reset: bool = False) -> None:
        self._conn.close(reset)
        if self._reader is not None:
            self._reader.cancel()
