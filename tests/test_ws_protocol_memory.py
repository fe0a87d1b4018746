"""WebSocketProtocol in memory: frames in, frames out, no sockets.

A fake transport records what the server writes and takes pause/resume/close as asyncio's does;
wsproto's client side builds the frames sent and reads those that come back; the application
runs as a task on the test's own event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from dualgate import Config
from dualgate.http.state import ServerState
from dualgate.logs import error_logger
from dualgate.ws.phases import Phase
from dualgate.ws.protocol import WebSocketProtocol
from tests.conftest import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from asgiref.typing import ASGI3Application

# RFC 6455 section 5.2: FIN + RSV1 + text, with no extension negotiated to give RSV1 a meaning.
RSV1_TEXT_FRAME = b"\xc1\x80\x00\x00\x00\x00"
# A valid client frame ("abc", masked with a zero key), for after wsproto's client has closed.
MASKED_TEXT_FRAME = b"\x81\x83\x00\x00\x00\x00abc"


class FakeTransport(asyncio.Transport):
    """What the protocol writes and asks of its transport, recorded; closing ends the connection
    on the next loop turn, as asyncio's transports do once their buffer is flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.protocol: WebSocketProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # asyncio's transports refuse a write after write_eof(), and drop one after close().
        assert not self.closed and not self.eof_written, "written after close or EOF"
        self.written += data

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._end()

    def abort(self) -> None:
        self.aborted = True
        self._end()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@dataclass
class HandshakeRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: bytes


def parse_request(data: bytes) -> HandshakeRequest:
    """The request head as the HTTP core hands it over: names lowercased, as h11 gives them."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    method, target, version = head[0].split(b" ")
    headers = []
    for line in head[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return HandshakeRequest(method, target, headers, version.removeprefix(b"HTTP/"))


class Peer:
    """A server-side WebSocketProtocol on a fake transport, and a wsproto client talking to it."""

    def __init__(self, app: ASGIApp, *, version: bytes = b"13", **options: Any) -> None:
        self.client = WSConnection(ConnectionType.CLIENT)
        request = parse_request(self.client.send(Request(host="example.com", target="/chat")))
        if version != b"13":
            request.headers = [
                (name, version if name == b"sec-websocket-version" else value)
                for name, value in request.headers
            ]
        config = Config(app="unused:app", **options)
        self.state = ServerState(config, handler=lambda cycle: None)
        self.transport = FakeTransport()
        self.protocol = WebSocketProtocol(
            request,
            state=self.state,
            client=("192.0.2.1", 50000),
            server=("192.0.2.2", 8000),
            scheme="ws",
            app=cast("ASGI3Application", app),
            root_path="",
            lifespan_state=None,
        )
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)

    def send(self, event: Event) -> None:
        self.feed(self.client.send(event))

    def feed(self, data: bytes) -> None:
        """Bytes from the client, read the way a transport reads: into the protocol's buffer."""
        while data:
            buffer = self.protocol.get_buffer(len(data))
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            data = data[size:]
            self.protocol.buffer_updated(size)

    def events(self) -> list[Event]:
        """What the server wrote since the last call, as the client's wsproto reads it."""
        data = self.transport.take()
        if data:  # b"" would be an EOF to wsproto's handshake reader
            self.client.receive_data(data)
        return list(self.client.events())

    async def wait_for(self, kind: type[Event], count: int = 1) -> list[Event]:
        """What the server writes, read until `count` events of `kind` are among it."""
        events: list[Event] = []
        async with asyncio.timeout(2.0):
            while sum(isinstance(event, kind) for event in events) < count:
                await asyncio.sleep(0)
                events += self.events()
        return events

    async def opened(self) -> None:
        events = await self.wait_for(AcceptConnection)
        assert len(events) == 1, events


async def until(condition: Callable[[], object], seconds: float = 2.0) -> None:
    """Let the loop run (the application, the transport's callbacks) until `condition` holds."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({**message, "type": "websocket.send"})


class Recording:
    """An application that accepts and records what it receives (with a rule for when to stop)."""

    def __init__(self, receiving: bool = True) -> None:
        self.received: list[Message] = []
        self.receiving = asyncio.Event()
        if receiving:
            self.receiving.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await self.receiving.wait()
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                return


@pytest.mark.asyncio
async def test_accept_then_text_and_binary_are_echoed() -> None:
    peer = Peer(echo)
    await until(lambda: peer.transport.written)
    head = bytes(peer.transport.written)
    assert head.startswith(b"HTTP/1.1 101 ")
    # The server's Date and Server headers, as HTTP responses carry them.
    assert b"\r\ndate: " in head.lower() and b"\r\nserver: dualgate\r\n" in head.lower()
    await peer.opened()
    assert peer.protocol.phase is Phase.OPEN
    peer.send(TextMessage(data="héllo"))
    peer.send(BytesMessage(data=b"\x00\xff"))
    events = await peer.wait_for(BytesMessage)
    assert events == [TextMessage(data="héllo"), BytesMessage(data=b"\x00\xff")]


@pytest.mark.asyncio
async def test_fragments_are_assembled_into_one_message() -> None:
    app = Recording()
    peer = Peer(app)
    await peer.opened()
    peer.send(TextMessage(data="frag", message_finished=False))
    peer.send(Ping(payload=b"between"))  # a control frame may come between fragments
    peer.send(TextMessage(data="mentéd", message_finished=True))
    peer.send(BytesMessage(data=b"\x01", message_finished=False))
    peer.send(BytesMessage(data=b"\x02\x03", message_finished=True))
    await until(lambda: len(app.received) == 2)
    assert app.received == [
        {"type": "websocket.receive", "text": "fragmentéd"},
        {"type": "websocket.receive", "bytes": b"\x01\x02\x03"},
    ]


@pytest.mark.asyncio
async def test_a_ping_is_answered_with_a_pong_of_the_same_payload() -> None:
    peer = Peer(Recording())
    await peer.opened()
    peer.send(Ping(payload=b"are you there"))
    assert peer.events() == [Pong(payload=b"are you there")]


@pytest.mark.asyncio
async def test_the_peer_closes_and_the_server_answers_with_its_code() -> None:
    app = Recording()
    peer = Peer(app)
    await peer.opened()
    peer.send(CloseConnection(code=4001, reason="bye"))
    assert peer.events() == [CloseConnection(code=4001, reason="bye")]
    assert peer.transport.closed and not peer.transport.aborted  # RFC 6455 7.1.1: server first
    await until(lambda: app.received)
    assert app.received == [{"type": "websocket.disconnect", "code": 4001, "reason": "bye"}]
    await until(lambda: peer.protocol not in peer.state.connections)


@pytest.mark.asyncio
async def test_the_application_closes_and_the_peer_answers() -> None:
    disconnect: list[Message] = []

    async def closer(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4002, "reason": "done"})
        disconnect.append(await receive())

    peer = Peer(closer)
    await until(lambda: peer.protocol.phase is Phase.CLOSING)
    events = peer.events()
    assert isinstance(events[0], AcceptConnection)
    close = events[1]
    assert close == CloseConnection(code=4002, reason="done") and len(events) == 2
    assert isinstance(close, CloseConnection)
    assert not peer.transport.closed  # the peer's Close is awaited
    peer.send(close.response())
    assert peer.transport.closed and not peer.transport.aborted
    await until(lambda: disconnect)
    assert disconnect == [{"type": "websocket.disconnect", "code": 4002, "reason": "done"}]


@pytest.mark.asyncio
async def test_a_message_over_the_limit_fails_the_connection_with_1009() -> None:
    app = Recording()
    peer = Peer(app, ws_max_size=16)
    await peer.opened()
    peer.send(TextMessage(data="x" * 10, message_finished=False))
    peer.send(TextMessage(data="x" * 7, message_finished=True))  # 17 bytes in all
    assert peer.events() == [CloseConnection(code=1009, reason="message too big")]
    assert peer.transport.eof_written and not peer.transport.closed
    await until(lambda: app.received)
    assert app.received == [
        {"type": "websocket.disconnect", "code": 1009, "reason": "message too big"}
    ]
    assert type(app.received[0]["code"]) is int


@pytest.mark.asyncio
async def test_a_frame_with_an_unnegotiated_reserved_bit_fails_with_1002() -> None:
    app = Recording()
    peer = Peer(app)
    await peer.opened()
    peer.feed(RSV1_TEXT_FRAME)
    events = peer.events()
    assert len(events) == 1 and isinstance(events[0], CloseConnection)
    assert events[0].code == 1002
    await until(lambda: app.received)
    assert app.received[0]["code"] == 1002
    # Failed: what the peer still sends is dropped, and its EOF ends the connection.
    peer.feed(MASKED_TEXT_FRAME)
    assert peer.transport.take() == b"" and len(app.received) == 1
    assert peer.protocol.eof_received() is False


@pytest.mark.asyncio
async def test_close_before_accept_is_a_bare_403() -> None:
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close"})

    peer = Peer(refuse)
    await until(lambda: peer.transport.closed)
    wire = peer.transport.take()
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"\r\ncontent-length: 0" in head and b"\r\nconnection: close" in head
    assert body == b""


class Records(logging.Handler):
    """The records of one logger, whatever an earlier test did to its propagation."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.asyncio
async def test_an_application_raising_before_accept_is_a_500() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("boom")

    records = Records()
    error_logger.addHandler(records)
    try:
        peer = Peer(broken)
        await until(lambda: peer.transport.closed)
    finally:
        error_logger.removeHandler(records)
    events = peer.events()
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 500
    assert b"".join(e.data for e in events if isinstance(e, RejectData)) == (
        b"Internal Server Error\n"
    )
    assert [str(r.exc_info[1]) for r in records.records if r.exc_info] == ["boom"]
    await until(lambda: peer.protocol not in peer.state.connections)


@pytest.mark.asyncio
async def test_a_handshake_of_another_version_is_refused_426_naming_13() -> None:
    peer = Peer(echo, version=b"8")
    assert peer.transport.closed
    head, _, body = peer.transport.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"\r\nsec-websocket-version: 13" in head
    assert body == b"Sec-WebSocket-Version must be 13\n"


@pytest.mark.asyncio
async def test_a_denial_response_goes_out_instead_of_the_101() -> None:
    async def deny(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"who", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b" are you"})

    peer = Peer(deny)
    await until(lambda: peer.transport.closed)
    events = peer.events()
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 401
    assert b"".join(e.data for e in events if isinstance(e, RejectData)) == b"who are you"


@pytest.mark.asyncio
async def test_send_waits_while_the_transport_is_paused() -> None:
    sent: list[int] = []

    async def source(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for index in range(3):
            await send({"type": "websocket.send", "bytes": b"%d" % index})
            sent.append(index)

    peer = Peer(source)
    peer.protocol.pause_writing()
    events = await peer.wait_for(BytesMessage)  # the 101 and the first frame
    for _ in range(50):
        await asyncio.sleep(0)
    assert sent == []  # the frame is written; send() has not returned
    assert events[1:] == [BytesMessage(data=b"0")] and peer.events() == []
    peer.protocol.resume_writing()
    await until(lambda: sent == [0, 1, 2])
    assert peer.events() == [
        BytesMessage(data=b"1"),
        BytesMessage(data=b"2"),
        CloseConnection(code=1000, reason=""),  # the application returned
    ]


@pytest.mark.asyncio
async def test_a_peer_that_takes_no_bytes_is_dropped_after_the_write_timeout() -> None:
    errors: list[BaseException] = []

    async def source(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await send({"type": "websocket.send", "text": "stuck"})
        except OSError as exc:
            errors.append(exc)

    peer = Peer(source, ws_write_timeout=0.05)
    peer.protocol.pause_writing()
    await until(lambda: errors)
    assert peer.transport.aborted
    assert type(errors[0]).__name__ == "WebSocketClosed"


@pytest.mark.asyncio
async def test_reading_pauses_while_the_queue_is_full_and_resumes_as_it_empties() -> None:
    app = Recording(receiving=False)
    peer = Peer(app, ws_max_queue=2)
    await peer.opened()
    peer.send(TextMessage(data="one"))
    assert peer.transport.reading
    peer.send(TextMessage(data="two"))
    assert not peer.transport.reading
    app.receiving.set()
    await until(lambda: len(app.received) == 2)
    assert peer.transport.reading
