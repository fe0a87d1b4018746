"""The soak's WebSocket clients: echo sessions over wsproto's client side (RFC 6455 checked both
ways), on /asgi/ws of the soak's ASGI app (benchmarks/apps/soak.py).

- ws-echo: a handshake (half of them offering permessage-deflate), 1 to 40 text and binary
  messages up to 256 KiB, each echoed back whole, then a clean close: the client's Close (most)
  or the server's (the text "close" asks the app to close), answered, and the TCP close after.
- ws-drop: a handshake, a few echoes, then the client goes without a Close (FIN or RST), now
  and then with a message of its own still on the way.
The handshake is a ticket in the server's ledger (interface "websocket", a 101).
"""

from __future__ import annotations

import asyncio
import random

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from benchmarks.soak.h2traffic import Client
from benchmarks.soak.wire import BadAnswer, Conn, Cut

__all__ = ["Session", "ws_drop", "ws_echo"]

PATH = "/asgi/ws"
READ = 65536


class Session:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._events: list[Event] = []
        self._parts: list[str | bytes] = []

    async def send(self, event: Event) -> None:
        await self.conn.send(self.ws.send(event))

    async def event(self) -> Event:
        """The next event but pings (answered here); Cut at EOF."""
        while True:
            while self._events:
                event = self._events.pop(0)
                if isinstance(event, Ping):
                    await self.send(event.response())
                    continue
                return event
            data = await self.conn.read_some(READ)
            try:
                self.ws.receive_data(data or None)
                self._events.extend(self.ws.events())
            except RemoteProtocolError as exc:
                raise BadAnswer(f"WebSocket protocol error from the server: {exc}") from None
            if not data and not self._events:
                raise Cut("the server closed the WebSocket's connection", True)

    async def message(self) -> str | bytes:
        """One whole message (its fragments joined)."""
        parts: list[str | bytes] = []
        while True:
            event = await self.event()
            if not isinstance(event, Message):
                raise BadAnswer(f"a message expected, {event!r} came")
            parts.append(event.data)
            if event.message_finished:
                if isinstance(event, TextMessage):
                    return "".join(p for p in parts if isinstance(p, str))
                return b"".join(p for p in parts if isinstance(p, bytes))

    async def until_eof(self) -> None:
        while await self.conn.read_some(READ):
            pass


async def _open(client: Client, rng: random.Random, kind: str) -> Session | None:
    conn = await Conn.open(client.endpoint)
    session = Session(conn)
    extensions = [PerMessageDeflate()] if rng.random() < 0.5 else []
    ticket = client.ledger.request("1.1", PATH, "websocket")
    try:
        await session.send(Request(host="soak", target=PATH, extensions=extensions))
        event = await session.event()
    except BaseException:
        conn.close()
        raise
    if isinstance(event, RejectConnection):
        ticket.answered(event.status_code)
        conn.close()
        client.bad(kind, f"handshake refused: {event.status_code}")
        return None
    if not isinstance(event, AcceptConnection):
        conn.close()
        raise BadAnswer(f"handshake answered with {event!r}")
    ticket.answered(101)
    return session


def _payload(rng: random.Random) -> str | bytes:
    size = rng.choice([0, rng.randint(1, 125), rng.randint(126, 65535), rng.randint(1, 256 * 1024)])
    if rng.random() < 0.5:
        return "".join(rng.choice("soak wébsocket ✓ ") for _ in range(min(size, 4096)))
    return rng.randbytes(size)


async def _echoes(session: Session, rng: random.Random, count: int) -> str | None:
    for _ in range(count):
        data = _payload(rng)
        if data == "close":
            continue
        if isinstance(data, str):
            await session.send(TextMessage(data=data))
        else:
            await session.send(BytesMessage(data=data))
        back = await session.message()
        if back != data:
            return f"echo of {len(data)} came back as {len(back)} ({type(back).__name__})"
    return None


async def ws_echo(client: Client, rng: random.Random) -> None:
    session = await _open(client, rng, "ws-echo")
    if session is None:
        return
    try:
        wrong = await _echoes(session, rng, rng.randint(1, 40))
        if wrong is not None:
            client.bad("ws-echo", wrong)
            return
        if rng.random() < 0.7:
            await session.send(CloseConnection(code=1000, reason="done"))
            event = await session.event()
            if not isinstance(event, CloseConnection) or event.code != 1000:
                client.bad("ws-echo", f"the client's close answered with {event!r}")
                return
        else:
            await session.send(TextMessage(data="close"))
            event = await session.event()
            if not isinstance(event, CloseConnection) or event.code != 1000:
                client.bad("ws-echo", f"the app's close came as {event!r}")
                return
            await session.send(event.response())
        await session.until_eof()  # the server closes the TCP connection first
        client.ok("ws-echo")
    except LocalProtocolError as exc:
        client.bad("ws-echo", f"the client's wsproto refused: {exc}")
    finally:
        session.conn.close()


async def ws_drop(client: Client, rng: random.Random) -> None:
    session = await _open(client, rng, "ws-drop")
    if session is None:
        return
    reset = rng.random() < 0.5
    try:
        wrong = await _echoes(session, rng, rng.randint(0, 5))
        if wrong is not None:
            client.bad("ws-drop", wrong)
            return
        if rng.random() < 0.3:
            await session.send(BytesMessage(data=rng.randbytes(rng.randint(1, 200_000))))
        await asyncio.sleep(rng.random() * 0.02)
        client.ok("ws-drop")
    finally:
        session.conn.close(reset=reset)
