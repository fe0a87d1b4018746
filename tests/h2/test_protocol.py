"""`H2Protocol` on a real event loop with a fake transport: the take-over from the first bytes,
handlers as tasks, one write per loop turn, transport pauses, deadlines, stopping, closing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)

from dualgate.h2.phases import Phase
from dualgate.h2.preface import PREFACE, Sniffed, sniff
from dualgate.h2.protocol import H2Protocol
from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream
from dualgate.h2.stream import StreamReset as Reset
from tests.h2.support import GET, FakeTransport, Host, client_connection, request


class Wire:
    """A protocol taken over from the first bytes read, and h2's client at the other end."""

    def __init__(
        self,
        handler: Callable[[Stream], None],
        settings: H2Settings | None = None,
        host: Host | None = None,
    ) -> None:
        self.host = host or Host()
        self.transport = FakeTransport()
        self.protocol = H2Protocol(
            self.host, settings or H2Settings(), handler, asyncio.get_running_loop()
        )
        self.client: H2Connection = client_connection()
        self.events: list[Event] = []
        first = self.client.data_to_send()
        # What an HTTP/1.1 connection does once its first bytes sniff as the preface.
        assert first.startswith(PREFACE) and sniff(first) is Sniffed.HTTP2
        self.protocol.take_over(self.transport, first)

    async def turn(self, times: int = 3) -> list[Event]:
        """Let the loop run; carry bytes both ways; the client's new events."""
        new: list[Event] = []
        for _ in range(times):
            await asyncio.sleep(0)
            data = self.transport.take()
            if data:
                new += self.client.receive_data(data)
                for event in new:
                    if isinstance(event, DataReceived) and event.flow_controlled_length:
                        self.client.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
            outgoing = self.client.data_to_send()
            if outgoing and not self.transport.closed:
                self.protocol.data_received(outgoing)
        self.events += new
        return new

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            e.data for e in self.events if isinstance(e, DataReceived) and e.stream_id == stream_id
        )

    def ended(self, stream_id: int) -> bool:
        return any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in self.events)


def echo_task(stream: Stream) -> None:
    async def run() -> None:
        stream.send_head(200, [(b"content-type", b"application/octet-stream")])
        while data := await stream.receive_body():
            stream.send_body(data)
            await stream.drained()
        stream.end()

    asyncio.get_running_loop().create_task(run())


@pytest.mark.asyncio
async def test_a_connection_taken_over_serves_streams_from_tasks() -> None:
    wire = Wire(echo_task)
    assert wire.transport.protocol is wire.protocol
    assert wire.protocol in wire.host.connections
    stream_id = wire.client.get_next_available_stream_id()
    wire.client.send_headers(stream_id, request(b"POST", b"/echo"))
    body = b"0123456789" * 30_000  # 300 KB: several windows each way
    sent = 0
    for _ in range(400):
        window = min(
            wire.client.local_flow_control_window(stream_id), wire.client.max_outbound_frame_size
        )
        if sent < len(body) and window:
            piece = body[sent : sent + window]
            sent += len(piece)
            wire.client.send_data(stream_id, piece, end_stream=sent == len(body))
        await wire.turn()
        if wire.ended(stream_id):
            break
    assert wire.body(stream_id) == body
    # Default headers come from the host, read at each response.
    response = next(e for e in wire.events if isinstance(e, ResponseReceived))
    assert (b"server", b"dualgate") in response.headers


@pytest.mark.asyncio
async def test_the_writes_of_many_streams_in_one_turn_go_out_in_one_write() -> None:
    writes: list[int] = []
    wire = Wire(lambda stream: None)
    original = wire.protocol._send  # the transport's write, taken once per connection

    def counting(data: bytes) -> None:
        writes.append(1)
        original(data)

    wire.protocol._send = counting
    held: list[Stream] = []
    wire.protocol.handler = held.append
    for _ in range(10):
        wire.client.send_headers(wire.client.get_next_available_stream_id(), GET, end_stream=True)
    await wire.turn(1)
    writes.clear()
    for stream in held:
        stream.send_head(200, [])
        stream.send_body(b"x")
        stream.end()
    await wire.turn()
    assert len(held) == 10 and len(writes) == 1


@pytest.mark.asyncio
async def test_a_handler_that_raises_resets_its_stream_only() -> None:
    def handler(stream: Stream) -> None:
        if stream.head.target == b"/boom":
            raise RuntimeError("boom")
        stream.send_head(200, [])
        stream.end()

    wire = Wire(handler)
    boom = wire.client.get_next_available_stream_id()
    wire.client.send_headers(boom, request(b"GET", b"/boom"), end_stream=True)
    fine = wire.client.get_next_available_stream_id()
    wire.client.send_headers(fine, request(b"GET", b"/fine"), end_stream=True)
    await wire.turn()
    resets = [e for e in wire.events if isinstance(e, StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(boom, ErrorCodes.INTERNAL_ERROR)]
    assert wire.ended(fine)


@pytest.mark.asyncio
async def test_while_the_transport_is_paused_writers_wait_and_then_go_on() -> None:
    progress: list[str] = []

    def handler(stream: Stream) -> None:
        async def run() -> None:
            stream.send_head(200, [])
            await stream.drained()
            progress.append("drained")
            stream.send_body(b"after")
            stream.end()

        asyncio.get_running_loop().create_task(run())

    wire = Wire(handler)
    wire.protocol.pause_writing()
    stream_id = wire.client.get_next_available_stream_id()
    wire.client.send_headers(stream_id, GET, end_stream=True)
    await wire.turn()
    assert progress == []
    wire.protocol.resume_writing()
    await wire.turn()
    assert progress == ["drained"] and wire.body(stream_id) == b"after"


@pytest.mark.asyncio
async def test_a_client_that_takes_no_bytes_is_cut_off() -> None:
    wire = Wire(lambda stream: None, H2Settings(timeout_write=0.05))
    wire.protocol.pause_writing()
    await asyncio.sleep(0.1)
    assert wire.transport.aborted
    assert wire.protocol.timeouts == {"write": 1}
    assert wire.protocol not in wire.host.connections


@pytest.mark.asyncio
async def test_the_sweep_closes_an_idle_connection() -> None:
    wire = Wire(lambda stream: None, H2Settings(timeout_keep_alive=5.0))
    await wire.turn()
    loop_now = asyncio.get_running_loop().time()
    wire.protocol.check_deadline(loop_now + 1)
    assert not wire.transport.closed
    wire.protocol.check_deadline(loop_now + 11)  # the head deadline first: nothing asked yet
    assert wire.transport.closed
    assert wire.protocol.timeouts == {"head": 1}
    assert wire.protocol not in wire.host.connections
    events = wire.client.receive_data(wire.transport.take())
    assert any(isinstance(e, ConnectionTerminated) for e in events)


@pytest.mark.asyncio
async def test_a_connection_made_during_a_stop_is_told_at_once() -> None:
    host = Host()
    host.shutting_down = True
    wire = Wire(lambda stream: None, host=host)
    data = wire.transport.take()
    assert b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x7f\xff\xff\xff" in data  # GOAWAY 2^31-1
    assert not wire.transport.closed


@pytest.mark.asyncio
async def test_shutdown_then_close_once_the_last_stream_is_done() -> None:
    held: list[Stream] = []
    wire = Wire(held.append)
    stream_id = wire.client.get_next_available_stream_id()
    wire.client.send_headers(stream_id, GET, end_stream=True)
    await wire.turn()
    wire.protocol.shutdown()
    await asyncio.sleep(0)
    # What h2's client reads of it: the first GOAWAY ends its state machine; a real client
    # answers the PING and the stream goes on, as tests/h2/test_shutdown.py shows in memory.
    data = wire.transport.take()
    assert data.count(b"\x07\x00\x00\x00\x00\x00") == 1
    wire.protocol.data_received(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00dualgate")  # PING ACK
    assert not wire.transport.closed
    held[0].send_head(200, [])
    held[0].end()
    await asyncio.sleep(0)
    assert wire.transport.closed
    assert wire.protocol not in wire.host.connections


@pytest.mark.asyncio
async def test_force_close_tells_every_handler() -> None:
    resets: list[int] = []

    def handler(stream: Stream) -> None:
        async def run() -> None:
            try:
                await stream.receive_body()
            except Reset as exc:
                resets.append(exc.code)
            stream.end()

        asyncio.get_running_loop().create_task(run())

    wire = Wire(handler)
    stream_id = wire.client.get_next_available_stream_id()
    wire.client.send_headers(stream_id, request(b"POST", b"/"))
    await wire.turn()
    wire.protocol.force_close()
    await asyncio.sleep(0)
    assert wire.transport.aborted and resets == [ErrorCodes.CANCEL]
    assert wire.protocol not in wire.host.connections


@pytest.mark.asyncio
async def test_eof_closes_and_tells_the_handlers() -> None:
    held: list[Stream] = []
    wire = Wire(held.append)
    wire.client.send_headers(wire.client.get_next_available_stream_id(), GET, end_stream=True)
    await wire.turn()
    assert wire.protocol.eof_received() is False  # asyncio closes the transport
    assert wire.protocol not in wire.host.connections
    assert held[0].reset_code == ErrorCodes.CANCEL
    wire.protocol.connection_lost(None)  # then reports the loss: nothing more happens
    assert wire.protocol.core.phase is Phase.CLOSED
