"""`HTTPProtocol` with its `RequestCycle` in memory: a fake transport, a real loop, no sockets.

The transport records what the connection does to it (bytes written, reading paused, closed),
so each test states the exact bytes and calls a client would see. The handlers are trivial:
an echo of the body, or a response written in steps the test controls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dualgate.config import Config
from dualgate.http.connection import HTTPProtocol
from dualgate.http.cycle import RequestCycle
from dualgate.http.phases import MOVES, ConnectionPhase
from dualgate.http.state import RequestHandler, ServerState


class FakeTransport(asyncio.Transport):
    """What asyncio's socket transport offers a protocol, recording instead of doing."""

    def __init__(self) -> None:
        super().__init__({"peername": ("203.0.113.7", 50000), "sockname": ("127.0.0.1", 8000)})
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.buffer_size = 0
        self.limits: tuple[int | None, int | None] = (None, None)
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "a write after close"
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data


class Echo:
    """Answers each request with its whole body, once it has all arrived."""

    def __init__(self) -> None:
        self.gone: list[RequestCycle] = []  # cycles whose client went away mid-body

    def __call__(self, cycle: RequestCycle) -> None:
        body = bytearray()

        def pump() -> None:
            data, more = cycle.take_body()
            body.extend(data)
            if more:
                cycle.when_body_ready(pump)
            elif cycle.disconnected:
                self.gone.append(cycle)
            else:
                cycle.respond(200, [(b"content-type", b"text/plain")], b"echo:" + bytes(body))

        pump()


def connect(handler: RequestHandler) -> tuple[HTTPProtocol, FakeTransport]:
    config = Config(app="unused:app", date_header=False, server_header=False)
    state = ServerState(config, handler)
    state.access_log = False
    protocol = HTTPProtocol(state, asyncio.get_running_loop())
    transport = FakeTransport()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return protocol, transport


def ok(body: bytes, *, close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        connection,
        body,
    )


@pytest.mark.asyncio
async def test_two_pipelined_requests_get_two_answers_in_order_and_the_connection_stays() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
    )
    assert transport.take() == ok(b"echo:one") + ok(b"echo:two")
    assert not transport.closed
    assert transport.reading
    assert protocol in protocol.state.connections


@pytest.mark.asyncio
async def test_a_content_length_body_in_pieces() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhel")
    assert transport.take() == b""
    protocol.data_received(b"lo wo")
    protocol.data_received(b"rld")
    assert transport.take() == ok(b"echo:hello world")
    assert not transport.closed


@pytest.mark.asyncio
async def test_a_chunked_body() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    protocol.data_received(b"3\r\nabc\r\n2;name=value\r\nde\r\n")
    assert transport.take() == b""
    protocol.data_received(b"0\r\n\r\n")
    assert transport.take() == ok(b"echo:abcde")
    assert not transport.closed


@pytest.mark.asyncio
async def test_100_continue_is_sent_when_the_handler_asks_for_the_body() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    protocol.data_received(b"data")
    assert transport.take() == ok(b"echo:data")


@pytest.mark.asyncio
async def test_a_malformed_head_gets_400_and_the_connection_closes() -> None:
    handled: list[RequestCycle] = []
    protocol, transport = connect(handled.append)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
    written = transport.take()
    assert written.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close\r\n" in written
    assert transport.closed
    assert handled == []
    assert protocol not in protocol.state.connections


@pytest.mark.asyncio
async def test_a_head_request_gets_the_head_a_get_would_and_no_body() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    # The body the handler gave is dropped; its length is not guessed into a Content-Length
    # (only one the application gave is kept), and the connection goes on.
    assert transport.take() == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.take() == ok(b"echo:")


@pytest.mark.asyncio
async def test_pause_writing_makes_the_cycle_wait_for_drain() -> None:
    cycles: list[RequestCycle] = []
    protocol, transport = connect(cycles.append)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (cycle,) = cycles
    cycle.send_head(200, [])
    cycle.send_body(b"one")
    protocol.pause_writing()
    assert cycle.writing_paused
    resumed: list[str] = []

    def go_on() -> None:
        resumed.append("now")
        cycle.send_body(b"two")
        cycle.finish()

    cycle.when_writable(go_on)
    assert transport.take() == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n"
    )
    assert resumed == []
    protocol.resume_writing()
    assert resumed == ["now"]
    assert transport.take() == b"3\r\ntwo\r\n0\r\n\r\n"
    assert not cycle.writing_paused
    assert not transport.closed


@pytest.mark.asyncio
async def test_a_file_waits_for_drain_between_blocks_without_os_sendfile(tmp_path: Any) -> None:
    cycles: list[RequestCycle] = []
    protocol, transport = connect(cycles.append)
    protocol.can_sendfile = False  # as under TLS or uvloop: read and write in blocks
    path = tmp_path / "big"
    path.write_bytes(b"x" * 300_000)  # two blocks of 256 KiB at most
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (cycle,) = cycles
    cycle.send_head(200, [(b"content-length", b"300000")])
    protocol.pause_writing()
    with path.open("rb") as file:
        task = asyncio.get_running_loop().create_task(cycle.sendfile(file, 0, 300_000))
        await asyncio.sleep(0)
        head = transport.take()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        # The first block went out; the second waits for the client to take bytes.
        assert head.endswith(b"x" * 262144)
        assert not task.done()
        protocol.resume_writing()
        await task
    assert transport.take() == b"x" * (300_000 - 262144)
    cycle.finish()
    assert not transport.closed


@pytest.mark.asyncio
async def test_client_eof_mid_body_closes_and_tells_the_handler() -> None:
    echo = Echo()
    protocol, transport = connect(echo)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    protocol.eof_received()
    assert transport.closed
    assert transport.take() == b""
    (cycle,) = echo.gone
    assert cycle.disconnected
    assert not cycle.body_complete


@pytest.mark.asyncio
async def test_a_response_short_of_its_content_length_closes_the_connection() -> None:
    cycles: list[RequestCycle] = []
    protocol, transport = connect(cycles.append)
    protocol.data_received(
        b"GET /short HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    (cycle,) = cycles
    cycle.send_head(200, [(b"content-length", b"10")])
    cycle.send_body(b"abc")
    cycle.finish()  # 7 bytes short: response_failed
    assert transport.closed
    assert transport.take() == b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"
    assert len(cycles) == 1  # the pipelined request behind it is never served


@pytest.mark.asyncio
async def test_an_upgrade_hands_the_transport_and_the_bytes_after_the_head_over() -> None:
    taken: list[tuple[str, Any]] = []

    class Taker(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            taken.append(("made", transport))

        def data_received(self, data: bytes) -> None:
            taken.append(("data", data))

    def upgrade(cycle: RequestCycle) -> None:
        def takeover(state: ServerState) -> asyncio.BaseProtocol:
            # The old protocol has left the live connections; the new one joins them itself.
            taken.append(("joined", protocol in state.connections))
            return Taker()

        cycle.upgrade(takeover)

    protocol, transport = connect(upgrade)
    protocol.data_received(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: other\r\n\r\nearly"
    )
    assert isinstance(transport.protocol, Taker)
    assert taken == [
        ("joined", False),
        ("made", transport),
        ("data", b"early"),
    ]
    assert transport.take() == b""
    assert not transport.closed


class Walked(HTTPProtocol):
    """An HTTPProtocol that records every phase it moves between, however the move is made
    (`_move` checks the table; the moves every request makes are plain assignments)."""

    moves: set[tuple[ConnectionPhase, ConnectionPhase]]

    @property
    def phase(self) -> ConnectionPhase:
        return self._phase

    @phase.setter
    def phase(self, phase: ConnectionPhase) -> None:
        before = getattr(self, "_phase", None)
        if before is not None and before is not phase:
            self.moves.add((before, phase))
        self._phase = phase


def walk(handler: RequestHandler, *chunks: bytes, eof: bool = False) -> Walked:
    config = Config(app="unused:app", date_header=False, server_header=False)
    state = ServerState(config, handler)
    state.access_log = False
    protocol = Walked(state, asyncio.get_running_loop())
    protocol.moves = set()
    transport = FakeTransport()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    for chunk in chunks:
        protocol.data_received(chunk)
    if eof:
        protocol.eof_received()
    return protocol


@pytest.mark.asyncio
async def test_every_move_a_connection_makes_is_in_the_phase_table() -> None:
    def answer_at_once(cycle: RequestCycle) -> None:
        cycle.respond(200, [], b"ok")  # before a body has arrived: the rest is drained

    def upgrade(cycle: RequestCycle) -> None:
        cycle.upgrade(lambda state: asyncio.Protocol())

    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
    walks = [
        walk(answer_at_once, get, get + get[:5], get[5:]),  # idle, pipelined, in pieces
        walk(Echo(), post, b"abc", post + b"ab", b"c"),
        walk(answer_at_once, post, b"a", b"bc", get),
        walk(answer_at_once, get[:10], eof=True),
        walk(Echo(), post + b"a", eof=True),
        walk(upgrade, get),
    ]
    seen = set().union(*(protocol.moves for protocol in walks))
    for before, after in seen:
        assert after in MOVES[before], (before, after)
    _idle, _head, _body, _responding, _draining, _upgraded, _closed = ConnectionPhase
    # Every move a request makes on the way through, the plain assignments among them.
    assert {
        (_idle, _head),
        (_head, _responding),
        (_head, _body),
        (_body, _responding),
        (_body, _draining),
        (_draining, _idle),
        (_responding, _idle),
        (_responding, _head),
        (_responding, _upgraded),
        (_head, _closed),
    } <= seen


def test_reading_class_adds_buffered_reads_on_asyncio_only() -> None:
    import uvloop

    from dualgate.http.connection import reading_class

    asyncio_loop, uv_loop = asyncio.new_event_loop(), uvloop.new_event_loop()
    try:
        assert reading_class(HTTPProtocol, uv_loop) is HTTPProtocol
        buffered = reading_class(HTTPProtocol, asyncio_loop)
        assert issubclass(buffered, asyncio.BufferedProtocol)
        assert buffered.__mro__[1] is HTTPProtocol  # HTTPProtocol's methods come first
        assert reading_class(HTTPProtocol, asyncio_loop) is buffered  # made once
        # Bytes read into the shared buffer reach data_received as a copy.
        config = Config(app="unused:app", date_header=False, server_header=False)
        got: list[bytes] = []
        protocol = buffered(ServerState(config, lambda cycle: None), asyncio_loop)
        protocol.data_received = got.append  # type: ignore[method-assign, assignment]
        assert isinstance(protocol, asyncio.BufferedProtocol)
        view = memoryview(protocol.get_buffer(-1))
        view[:3] = b"abc"
        protocol.buffer_updated(3)
        view[:3] = b"xyz"
        assert got == [b"abc"]
    finally:
        asyncio_loop.close()
        uv_loop.close()


@pytest.mark.asyncio
async def test_the_head_deadline_runs_only_while_a_head_waits_for_more_bytes() -> None:
    from dualgate.http.flow import Deadline

    def answer(cycle: RequestCycle) -> None:
        cycle.respond(200, [], b"ok")

    protocol, transport = connect(answer)

    def kind() -> Deadline:  # read afresh each time (mypy would keep the first narrowing)
        return protocol.flow.deadline_kind

    assert kind() is Deadline.KEEP_ALIVE
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # whole: answered at once
    assert transport.take().startswith(b"HTTP/1.1 200 OK")
    assert kind() is Deadline.KEEP_ALIVE
    protocol.data_received(b"GET / HTTP/1.1\r\n")  # a head left waiting: its deadline runs
    assert kind() is Deadline.HEAD
    first = protocol.flow.deadline
    protocol.data_received(b"Host: x\r\n")  # more of it: the deadline is not pushed back
    assert protocol.flow.deadline == first
    protocol.data_received(b"\r\n")
    assert transport.take().startswith(b"HTTP/1.1 200 OK")
    assert kind() is Deadline.KEEP_ALIVE
