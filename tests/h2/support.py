"""In-memory HTTP/2 for the tests: the server's core (or protocol) on one side, h2's client state
machine on the other, bytes carried between them by hand. No sockets, no real time.

`Link` drives the sans-IO core (dualgate/h2/core.py) with a fake clock: `exchange()` carries
bytes both ways until neither side has any, and collects the client's events. Raw frames (for
what h2's client would refuse to send) go through `send_frames`, HPACK-encoded with the
client's own encoder so both ends' tables stay in step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame

from dualgate.h2.core import H2Core
from dualgate.h2.phases import Phase
from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream
from dualgate.http.grammar import Headers
from dualgate.metrics.counters import Metrics

GET: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"example.com"),
    (b":path", b"/"),
]


def request(method: bytes = b"GET", path: bytes = b"/", *extra: tuple[bytes, bytes]) -> Headers:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"example.com"),
        (b":path", path),
        *extra,
    ]


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """Any frame, as bytes (hyperframe's ExtensionFrame does not serialise its length)."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_connection() -> H2Connection:
    """h2's client, told to send what it is given: the tests send malformed requests too."""
    config = H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    client = H2Connection(config=config)
    client.initiate_connection()
    return client


class Link:
    """The server's core and h2's client, joined in memory."""

    def __init__(
        self,
        settings: H2Settings | None = None,
        handler: Callable[[Stream], None] | None = None,
        default_headers: Headers | None = None,
    ) -> None:
        self.clock = Clock()
        self.settings = settings or H2Settings()
        self.handler = handler
        self.started: list[Stream] = []
        self.default_headers: Headers = default_headers or []
        self.core = H2Core(self.settings, self, self.clock, lambda: self.default_headers)
        self.client = client_connection()
        self.events: list[Event] = []
        self.server_bytes = 0  # bytes the server wrote, all told
        self.pumps = 0
        # Whether the client hands back the window of response bytes it receives (a client
        # that never does is one of the attacks).
        self.client_acks = True
        # The server's GOAWAY frames as (last stream id, error code). With `hide_goaways`
        # they are kept from h2's client, which stops sending anything once it reads one,
        # where a real client goes on with the streams the GOAWAY spares.
        self.goaways: list[tuple[int, int]] = []
        self.hide_goaways = False
        self.exchange()

    # -- the outlet ------------------------------------------------------------------------

    def output_ready(self) -> None:
        pass  # exchange() pumps every time anyway

    def start(self, stream: Stream) -> None:
        self.started.append(stream)
        if self.handler is not None:
            self.handler(stream)

    # -- carrying bytes --------------------------------------------------------------------

    def exchange(self, *, client_reads: bool = True) -> list[Event]:
        """Carry bytes both ways until both sides are quiet; the client's new events."""
        new: list[Event] = []
        for _ in range(10_000):
            outgoing = self.client.data_to_send()
            if outgoing:
                self.core.receive(outgoing)
            self.pumps += 1
            more = self.core.pump()
            data = self._note_goaways(self.core.data_to_send())
            self.server_bytes += len(data)
            if data and client_reads:
                events = self.client.receive_data(data)
                new += events
                if self.client_acks:
                    for event in events:
                        if isinstance(event, DataReceived) and event.flow_controlled_length:
                            self.client.acknowledge_received_data(
                                event.flow_controlled_length, event.stream_id
                            )
            if not outgoing and not data and not more:
                break
        self.events += new
        return new

    def _note_goaways(self, data: bytes) -> bytes:
        kept = bytearray()
        position = 0
        while position < len(data):
            length = int.from_bytes(data[position : position + 3], "big")
            end = position + 9 + length
            if data[position + 3] == 0x7:  # GOAWAY
                payload = data[position + 9 : end]
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self.goaways.append((last, int.from_bytes(payload[4:8], "big")))
                if self.hide_goaways:
                    position = end
                    continue
            kept += data[position:end]
            position = end
        return bytes(kept)

    def send_raw(self, data: bytes) -> list[Event]:
        """Bytes straight to the server (after whatever the client has queued)."""
        pending = self.client.data_to_send()
        self.core.receive(pending + data)
        return self.exchange()

    def send_frames(self, frames: Iterable[Frame]) -> list[Event]:
        return self.send_raw(b"".join(frame.serialize() for frame in frames))

    def send_block(self, block: bytes, *, end_stream: bool = True) -> int:
        """A request whose header block is `block`, byte for byte, sent by the client's own
        state machine (so it knows the stream and reads the answer)."""
        stream_id = self.client.get_next_available_stream_id()
        encoder = self.client.encoder

        class Fixed:
            def encode(self, headers: Any, huffman: bool = True) -> bytes:
                return block

        self.client.encoder = Fixed()  # type: ignore[assignment]
        try:
            self.client.send_headers(stream_id, [(b":method", b"GET")], end_stream=end_stream)
        finally:
            self.client.encoder = encoder
        self.exchange()
        return stream_id

    def encode(self, headers: Headers) -> bytes:
        """A header block from the client's encoder (its dynamic table stays in step)."""
        return self.client.encoder.encode(headers)

    def headers_frames(
        self, stream_id: int, headers: Headers, *, end_stream: bool, pieces: int = 1
    ) -> list[Frame]:
        """HEADERS then CONTINUATIONs carrying one block, in `pieces` parts."""
        block = self.encode(headers)
        size = -(-len(block) // pieces) if block else 0
        parts = [block[i : i + size] for i in range(0, len(block), size)] if size else [b""]
        first = HeadersFrame(stream_id, data=parts[0])
        if end_stream:
            first.flags.add("END_STREAM")
        frames: list[Frame] = [first]
        for part in parts[1:]:
            frames.append(ContinuationFrame(stream_id, data=part))
        frames[-1].flags.add("END_HEADERS")
        return frames

    # -- requests --------------------------------------------------------------------------

    def request(self, headers: Headers | None = None, body: bytes | None = None) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers or GET, end_stream=body is None)
        if body is None:
            self.exchange()
        else:
            self.upload(stream_id, body)
        return stream_id

    def upload(self, stream_id: int, body: bytes, *, end: bool = True) -> int:
        """Send as much of `body` as the server's windows allow, a frame at a time, carrying
        bytes between frames; the number of bytes sent (all of them, ended, if they fit)."""
        sent = 0
        self.exchange()
        while sent < len(body):
            window = min(
                self.client.local_flow_control_window(stream_id),
                self.client.max_outbound_frame_size,
            )
            if window <= 0:
                break
            piece = body[sent : sent + window]
            sent += len(piece)
            self.client.send_data(stream_id, piece, end_stream=end and sent == len(body))
            self.exchange()
        if end and not body:
            self.client.end_stream(stream_id)
            self.exchange()
        return sent

    # -- reading the client's events --------------------------------------------------------

    def response(self, stream_id: int) -> ResponseReceived | None:
        for event in self.events:
            if isinstance(event, ResponseReceived) and event.stream_id == stream_id:
                return event
        return None

    def status(self, stream_id: int) -> int | None:
        event = self.response(stream_id)
        if event is None:
            return None
        return int(dict(event.headers)[b":status"])

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            e.data for e in self.events if isinstance(e, DataReceived) and e.stream_id == stream_id
        )

    def ended(self, stream_id: int) -> bool:
        return any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in self.events)

    def reset_code(self, stream_id: int) -> int | None:
        for event in self.events:
            if isinstance(event, StreamReset) and event.stream_id == stream_id:
                return int(event.error_code)
        return None

    def goaway(self) -> ConnectionTerminated | None:
        for event in self.events:
            if isinstance(event, ConnectionTerminated):
                return event
        return None

    @property
    def closed(self) -> bool:
        return self.core.phase is Phase.CLOSED

    def stream(self, stream_id: int) -> Stream:
        return next(s for s in self.started if s.stream_id == stream_id)


def answer(status: int = 200, body: bytes = b"hello") -> Callable[[Stream], None]:
    """A handler that answers at once, whole."""

    def handle(stream: Stream) -> None:
        stream.send_head(status, [(b"content-type", b"text/plain")])
        stream.send_body(body)
        stream.end()

    return handle


def echo(stream: Stream) -> None:
    """A handler that answers with the body it reads, as it arrives (no task: callbacks)."""
    stream.send_head(200, [])

    def more() -> None:
        data, rest = stream.take_body()
        if data:
            stream.send_body(data)
        if stream.reset_code is not None:
            stream.end()
        elif rest:
            stream.on_body_ready = more
        else:
            stream.end()

    more()


class FakeTransport(asyncio.Transport):
    """What H2Protocol writes, and the pauses a real transport would tell it of."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        self.written += data

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return cast(asyncio.BaseProtocol, self.protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Host:
    """What a connection needs of its server (dualgate.h2.protocol.Host)."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.default_headers: Headers = [(b"server", b"dualgate")]
        self.shutting_down = False
        self.metrics = Metrics(metered=False)
