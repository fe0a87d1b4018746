"""BoundedDeflate in memory, beneath the socket tests: a wsproto server Connection fed bytes."""

from __future__ import annotations

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping

from dualgate.ws.deflate import BoundedDeflate
from tests.ws_support import BINARY, CONTINUATION, PING, deflate, frame


def server(max_size: int) -> Connection:
    extension = BoundedDeflate(max_size)
    assert extension.accept("permessage-deflate") == ""
    return Connection(ConnectionType.SERVER, [extension])


def feed(connection: Connection, data: bytes) -> list[Event]:
    connection.receive_data(data)
    return list(connection.events())


def test_a_message_at_the_limit_inflates_and_one_byte_more_fails() -> None:
    events = feed(server(1000), frame(BINARY, deflate(b"a" * 1000), rsv=4))
    assert [type(e) for e in events] == [BytesMessage]
    assert events[0].data == b"a" * 1000  # type: ignore[attr-defined]
    events = feed(server(1000), frame(BINARY, deflate(b"a" * 1001), rsv=4))
    assert events == [CloseConnection(code=1009, reason="error in extension")]


def test_a_bomb_is_stopped_after_inflating_the_limit_only() -> None:
    connection = server(64 * 1024)
    events = feed(connection, frame(BINARY, deflate(bytes(50_000_000)), rsv=4))
    delivered = sum(len(e.data) for e in events if isinstance(e, BytesMessage))
    assert delivered <= 64 * 1024
    assert events[-1] == CloseConnection(code=1009, reason="error in extension")


def test_the_limit_is_per_message() -> None:
    connection = server(1000)
    for _ in range(5):
        events = feed(connection, frame(BINARY, deflate(b"b" * 900), rsv=4))
        assert [type(e) for e in events] == [BytesMessage]


def test_a_ping_between_compressed_fragments_keeps_the_message_compressed() -> None:
    payload = deflate(b"fragmented and compressed " * 20)
    cut = len(payload) // 2
    data = frame(BINARY, payload[:cut], rsv=4, fin=False) + frame(PING, b"p")
    data += frame(CONTINUATION, payload[cut:])
    events = feed(server(1 << 20), data)
    assert isinstance(events[1], Ping)
    message = b"".join(e.data for e in events if isinstance(e, BytesMessage))
    assert message == b"fragmented and compressed " * 20
