"""The SIGTERM check: requests put in flight, SIGTERM, each must finish right and the server
exit 0, refusing new connections meanwhile.

In flight on each server: slow WSGI and ASGI handlers, an upload still arriving, a slow
download; with HTTP/2 on, one connection with a slow WSGI and a slow ASGI stream (the server
must say GOAWAY, PING, GOAWAY and finish both); with WebSockets on, an open echo session (the
server must close it with 1012 and the client's Close answer end it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import time

from wsproto.events import CloseConnection, Request, TextMessage

from benchmarks.apps.soak import blocks
from benchmarks.soak.h2client import H2Conn
from benchmarks.soak.ledger import Ledger
from benchmarks.soak.target import GRACEFUL, Target, get
from benchmarks.soak.verdicts import Verdict, graceful_stop
from benchmarks.soak.wire import Conn, Endpoint
from benchmarks.soak.wstraffic import Session

__all__ = ["sigterm"]

NAMES = ["slow-wsgi-1", "slow-wsgi-2", "slow-wsgi-3", "slow-asgi-1", "slow-asgi-2",
         "upload-trickling", "download-slow"]  # fmt: skip


async def _slow(endpoint: Endpoint, name: str) -> str:
    path = ("/asgi" if "asgi" in name else "") + "/slow?seconds=2"
    status, body = await get(endpoint, path)
    return "ok" if (status, body) == (200, b"slept 2") else f"{status} {body[:40]!r}"


async def _upload(endpoint: Endpoint, signalled: asyncio.Event) -> str:
    data = random.Random("upload-trickling").randbytes(256 * 1024)
    conn = await Conn.open(endpoint)
    try:
        await conn.send(
            b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % len(data)
        )
        await conn.send(data[:65536])
        await signalled.wait()
        for start in range(65536, len(data), 32768):  # the rest after SIGTERM
            await asyncio.sleep(0.2)
            await conn.send(data[start : start + 32768])
        head, body = await conn.response()
    finally:
        conn.close()
    expected = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ok = head.status == 200 and json.loads(body) == expected
    return "ok" if ok else f"{head.status} {body[:60]!r}"


async def _download(endpoint: Endpoint) -> str:
    # 1 MiB through an 8 KiB receive buffer, 4 KiB every 10 ms.
    size, seed = 1 << 20, 11
    conn = await Conn.open(endpoint, receive_buffer=8192)
    digest, got = hashlib.sha256(), 0
    try:
        await conn.send(
            b"GET /download?size=%d&seed=%d HTTP/1.1\r\nHost: soak\r\n\r\n" % (size, seed)
        )
        head = await conn.head()
        while got < size and (data := await conn.read_some(4096)):
            digest.update(data)
            got += len(data)
            await asyncio.sleep(0.01)
    finally:
        conn.close()
    want = hashlib.sha256(b"".join(blocks(size, seed))).hexdigest()
    ok = head.status == 200 and got == size and digest.hexdigest() == want
    return "ok" if ok else f"{head.status}, {got} bytes"


async def _h2(endpoint: Endpoint) -> str:
    """Two slow streams on one connection; the graceful GOAWAYs must let both finish."""
    conn = await H2Conn.open(endpoint, Ledger())  # after the metrics check: its own ledger
    try:
        bodies = [bytearray(), bytearray()]
        streams = [
            conn.request("GET", path, sink=body.extend)
            for path, body in zip(("/slow?seconds=2", "/asgi/slow?seconds=2"), bodies, strict=True)
        ]
        await conn.flush()
        for stream in streams:
            await conn.response(stream)
        answers = [(s.status, bytes(b)) for s, b in zip(streams, bodies, strict=True)]
        if answers != [(200, b"slept 2")] * 2:
            return f"answers {answers}"
        await conn.closed.wait()  # the server closes once its final GOAWAY's streams are done
        if conn.goaway is None or conn.goaway.error_code != 0:
            return f"ended without a graceful GOAWAY ({conn.goaway!r})"
        return "ok"
    finally:
        conn.close()


async def _ws(endpoint: Endpoint, signalled: asyncio.Event) -> str:
    """An open echo session: closed by the server with 1012, answered, then the TCP close."""
    conn = await Conn.open(endpoint)
    session = Session(conn)
    try:
        await session.send(Request(host="soak", target="/asgi/ws"))
        await session.event()  # accepted
        await signalled.wait()
        await session.send(TextMessage(data="still here"))
        while True:
            event = await session.event()
            if isinstance(event, CloseConnection):
                break
        if event.code != 1012:
            return f"closed with {event.code}"
        await session.send(event.response())
        await session.until_eof()
        return "ok"
    finally:
        conn.close()


async def _one(target: Target, name: str, signalled: asyncio.Event) -> str:
    endpoint = target.endpoint
    try:
        async with asyncio.timeout(GRACEFUL + 10):
            if name.startswith("slow"):
                return await _slow(endpoint, name)
            if name == "upload-trickling":
                return await _upload(endpoint, signalled)
            if name == "download-slow":
                return await _download(endpoint)
            if name == "h2-slow-streams":
                return await _h2(endpoint)
            return await _ws(endpoint, signalled)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:160]


async def sigterm(target: Target, h2: bool, ws: bool) -> Verdict:
    names = [*NAMES, *(["h2-slow-streams"] if h2 else []), *(["ws-open"] if ws else [])]
    signalled = asyncio.Event()
    tasks = {name: asyncio.create_task(_one(target, name, signalled)) for name in names}
    await asyncio.sleep(0.8)  # every request sent and started (the slow ones take 2 s)
    started = time.monotonic()
    os.kill(target.proc.pid, signal.SIGTERM)
    signalled.set()
    await asyncio.sleep(0.3)
    try:
        conn = await Conn.open(target.endpoint)
    except OSError:
        refused = True
    else:
        conn.close()
        refused = False
    results = {name: await task for name, task in tasks.items()}
    code: int | None = None
    deadline = time.monotonic() + GRACEFUL + 10
    while time.monotonic() < deadline and (code := target.proc.poll()) is None:
        await asyncio.sleep(0.1)
    return graceful_stop(results, code, refused, time.monotonic() - started)
