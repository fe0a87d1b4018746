"""An HTTP/2 client over a real socket for the tests, driven frame by frame with h2's client
state machine: plain (prior knowledge), or TLS with ALPN h2, optionally after a PROXY header.

Every byte written and read is counted (`sent`, `received`), so a test can hold the server's
byte counters against what really crossed the socket.

h2's client takes a server's first GOAWAY for the end of the connection and then refuses the
PING of the two-step graceful stop (RFC 9113 section 6.8) that follows it; with `hide_goaways`
the GOAWAY frames are kept from it and gathered in `goaways` as (last stream id, error code),
and the client goes on with the streams they spare, as a real client does.
"""

from __future__ import annotations

import socket
import ssl
import time

import h2.events
from h2.connection import H2Connection

from dualgate.http.grammar import Headers
from tests.h2.support import client_connection

__all__ = ["Client", "tls_socket"]

TIMEOUT = 10.0
_GOAWAY = 0x7
_FRAME_HEADER = 9


def tls_socket(raw: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
    """`raw` (connected, and past a PROXY header if one was sent) under TLS, ALPN h2 chosen."""
    context.set_alpn_protocols(["h2", "http/1.1"])
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    return sock


class Client:
    """One HTTP/2 connection over a socket; events are gathered per stream.

    `target`: a port on 127.0.0.1 to connect to, or a socket already connected (and, for TLS,
    wrapped by `tls_socket`)."""

    def __init__(self, target: int | socket.socket, conn: H2Connection | None = None) -> None:
        if isinstance(target, int):
            target = socket.create_connection(("127.0.0.1", target), timeout=TIMEOUT)
        self.sock = target
        self.sock.settimeout(TIMEOUT)
        self.conn = conn or client_connection()
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.statuses: dict[int, bytes] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.hide_goaways = False
        self.goaways: list[tuple[int, int]] = []
        self._partial = b""  # the start of a frame not yet whole (hide_goaways only)
        self.sent = 0  # bytes written to the socket, all told
        self.received = 0  # bytes read from it
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def read(self, ack: bool = True) -> None:
        """One read; `ack`: give the stream's window back for DATA received (a fast reader).
        The connection's window is always given back: a slow reader of one stream still reads
        the connection."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        self.received += len(data)
        if self.hide_goaways:
            data = self._without_goaways(data)
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.statuses[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                if ack:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif event.flow_controlled_length:
                    self.conn.increment_flow_control_window(event.flow_controlled_length)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()

    def _without_goaways(self, data: bytes) -> bytes:
        data = self._partial + data
        kept = []
        start = 0
        while len(data) - start >= _FRAME_HEADER:
            end = start + _FRAME_HEADER + int.from_bytes(data[start : start + 3], "big")
            if end > len(data):
                break
            if data[start + 3] == _GOAWAY:
                payload = data[start + _FRAME_HEADER : end]
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self.goaways.append((last, int.from_bytes(payload[4:8], "big")))
            else:
                kept.append(data[start:end])
            start = end
        self._partial = data[start:]
        return b"".join(kept)

    def until(self, done: object, ack: bool = True) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not (callable(done) and done()) and not self.closed:
            assert time.monotonic() < deadline, "the server did not answer in time"
            self.read(ack)

    def get(self, path: bytes, stream_id: int, end: bool = True) -> None:
        self.send(stream_id, b"GET", path, end=end)

    def send(
        self,
        stream_id: int,
        method: bytes,
        path: bytes,
        *extra: tuple[bytes, bytes],
        body: bytes = b"",
        end: bool = True,
        scheme: bytes = b"http",
    ) -> None:
        """A request on `stream_id`, with `extra` header fields and a body within the window."""
        headers: Headers = [
            (b":method", method),
            (b":scheme", scheme),
            (b":authority", b"example.com"),
            (b":path", path),
            *extra,
        ]
        self.conn.send_headers(stream_id, headers, end_stream=end and not body)
        size = self.conn.max_outbound_frame_size
        for start in range(0, len(body), size):
            last = start + size >= len(body)
            self.conn.send_data(stream_id, body[start : start + size], end_stream=end and last)
        self.flush()

    def answer(self, stream_id: int) -> bytes:
        """The body of `stream_id`, read until the stream ends; its status must be 200."""
        self.until(lambda: stream_id in self.ended or stream_id in self.resets)
        assert stream_id in self.ended, (self.resets, self.goaway)
        assert self.statuses[stream_id] == b"200", self.statuses[stream_id]
        return bytes(self.bodies.get(stream_id, b""))

    def close(self) -> None:
        self.sock.close()
