"""The soak's HTTP/2 clients (h2c by prior knowledge on the plain server, ALPN h2 under TLS).

- h2: a connection, then batches of 1 to 8 concurrent streams (hello, downloads up to 2 MiB
  and uploads up to 1 MiB checked by SHA-256, WSGI and ASGI routes, now and then a route that
  raises before its answer or after its head: the server resets that stream), then one of three
  ends: a GOAWAY of the client's (most), idle until the server's GOAWAY, or a dropped socket.
- h2-reset: streams the client resets (RST_STREAM CANCEL) as a client that no longer wants the
  answer does: a download whose window the client keeps shut, reset part way (so the server
  cannot have ended it: the reset is certain to count), and an upload reset once the server has
  taken some of its body (a stream WINDOW_UPDATE: its handler certainly started); between them
  a hello, to show the connection still serves.
Each request is a ticket in the server's ledger (ledger.py); every answer is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from typing import Protocol

from benchmarks.apps.soak import HELLO, blocks
from benchmarks.soak.h2client import STREAM_WINDOW, H2Conn, Refused
from benchmarks.soak.ledger import Ledger
from benchmarks.soak.wire import Endpoint

__all__ = ["Client", "h2_resets", "h2_session"]

MIB = 1 << 20
SWEEP_SLACK = 2.5


class Client(Protocol):
    """What a worker of the traffic (traffic.py) offers the HTTP/2 and WebSocket clients."""

    endpoint: Endpoint
    ledger: Ledger
    keep_alive: float

    def running(self) -> bool: ...
    def ok(self, kind: str, answers: int = 1) -> None: ...
    def bad(self, kind: str, why: str) -> None: ...
    def retried(self, kind: str) -> None: ...


def _sha(size: int, seed: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(size, seed):
        digest.update(block)
    return digest.hexdigest()


def _route(rng: random.Random, path: str) -> str:
    return ("/asgi" if rng.random() < 0.5 else "") + path


async def _one(client: Client, conn: H2Conn, rng: random.Random) -> str | None:
    """One stream of a batch; None when its answer was right, else why not."""
    ledger = client.ledger
    pick = rng.random()
    if pick < 0.45:
        path = _route(rng, "/hello")
        body = bytearray()
        stream = conn.request("GET", path, sink=body.extend, ticket=ledger.request("2", path))
        await conn.flush()
        await conn.response(stream)
        if stream.status != 200 or bytes(body) != HELLO:
            return f"hello: {stream.status} {bytes(body[:60])!r}"
    elif pick < 0.7:
        size = rng.choice([0, rng.randint(1, 4096), rng.randint(1, 2 * MIB)])
        seed = rng.randrange(1000)
        path = _route(rng, f"/download?size={size}&seed={seed}")
        digest = hashlib.sha256()
        stream = conn.request("GET", path, sink=digest.update, ticket=ledger.request("2", path))
        await conn.flush()
        await conn.response(stream)
        if (
            stream.status != 200
            or stream.received != size
            or digest.hexdigest() != _sha(size, seed)
        ):
            return f"download: {stream.status}, {stream.received} of {size} bytes or a wrong hash"
    elif pick < 0.95:
        size = rng.choice([0, rng.randint(1, 4096), rng.randint(1, MIB)])
        data = rng.randbytes(size)
        path = _route(rng, "/upload")
        answer = bytearray()
        stream = conn.request(
            "POST", path, body_size=size, sink=answer.extend, ticket=ledger.request("2", path)
        )
        await conn.send_body(stream, data)
        await conn.response(stream)
        expected = {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
        if stream.status != 200 or json.loads(answer or b"null") != expected:
            return f"upload: {stream.status} {bytes(answer[:80])!r} for {size} bytes"
    else:
        path = rng.choice(["/raise", "/asgi/raise", "/raise-late"])
        stream = conn.request("GET", path, ticket=ledger.request("2", path))
        await conn.flush()
        await stream.ended.wait()
        if stream.refused:
            raise Refused("a raising route above the server's last stream")
        if path == "/raise-late":
            # The head went out before the application raised: the stream must be reset.
            if stream.status != 200 or stream.reset_code is None:
                return f"raise-late: {stream.status}, reset {stream.reset_code}"
        elif stream.status != 500 or not stream.complete:
            return f"{path}: {stream.status}, complete {stream.complete}"
    return None


async def h2_session(client: Client, rng: random.Random) -> None:
    conn = await H2Conn.open(client.endpoint, client.ledger)
    try:
        for _ in range(rng.randint(3, 30)):
            if not client.running():
                break
            count = rng.randint(1, 8)
            try:
                results = await asyncio.gather(*(_one(client, conn, rng) for _ in range(count)))
            except Refused:
                # The server said GOAWAY (an idle connection's) as the batch went out: those
                # streams were never processed, and a client sends them again elsewhere.
                client.retried("h2")
                return
            wrong = [why for why in results if why is not None]
            if wrong:
                client.bad("h2", wrong[0])
                return
            client.ok("h2", count)
        end = rng.random()
        if end < 0.6:
            await conn.goodbye()
        elif end < 0.8:
            since = time.monotonic()
            bound = client.keep_alive + SWEEP_SLACK
            async with asyncio.timeout(bound):
                goaway = await conn.idle_until_goaway()
            waited = time.monotonic() - since
            if goaway is None or goaway.error_code != 0 or waited < client.keep_alive - 0.5:
                client.bad("h2", f"idle: closed after {waited:.1f} s with {goaway!r}")
                return
        else:
            conn.close(reset=rng.random() < 0.5)
            client.ledger.unsure_of("h2_goaways_no_error")  # one may have been on its way
    finally:
        conn.close()


async def h2_resets(client: Client, rng: random.Random) -> None:
    ledger = client.ledger
    conn = await H2Conn.open(client.endpoint, ledger)
    try:
        for _ in range(rng.randint(1, 6)):
            if not client.running():
                break
            if rng.random() < 0.5:
                # A download the client gives up on: it never hands the window back, so the
                # server can send at most STREAM_WINDOW of it and cannot have ended it.
                size = rng.randint(STREAM_WINDOW + 1, 4 * MIB)
                path = _route(rng, f"/download?size={size}&seed=5")
                stream = conn.request("GET", path, ack=False, ticket=ledger.request("2", path))
                await conn.flush()
                await stream.head.wait()
                if stream.status != 200:
                    client.bad("h2-reset", f"download: {stream.status}")
                    return
                want = rng.randint(0, STREAM_WINDOW // 2)
                while stream.received < want and not stream.ended.is_set():
                    await asyncio.sleep(0.005)
                if stream.ended.is_set():
                    client.bad("h2-reset", f"a download ended before its reset ({size} bytes)")
                    return
            else:
                # An upload the client abandons once the server has taken some of it.
                size = 2 * MIB
                path = _route(rng, "/upload")
                stream = conn.request(
                    "POST", path, body_size=size, ticket=ledger.request("2", path)
                )
                await conn.send_body(stream, rng.randbytes(256 * 1024), end=False, until=size)
                await conn.wait_window_update(stream)
                assert stream.ticket is not None
                stream.ticket.started()
            await conn.reset(stream)
            ledger.sure("h2_resets_client")
            # The connection still serves.
            body = bytearray()
            path = _route(rng, "/hello")
            hello = conn.request("GET", path, sink=body.extend, ticket=ledger.request("2", path))
            await conn.flush()
            await conn.response(hello)
            if hello.status != 200 or bytes(body) != HELLO:
                client.bad("h2-reset", f"hello after a reset: {hello.status}")
                return
            client.ok("h2-reset", 2)
        await conn.goodbye()
    except Refused:
        client.retried("h2-reset")
    finally:
        conn.close()
