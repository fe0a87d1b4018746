"""The soak's mixed traffic: asyncio workers, each one kind of client, each answer checked.

One `Traffic` per server under soak (the plain one; the TLS one, whose kinds are named
"tls:KIND"). Every worker loops until `stop_at`, and every operation in it is bounded by
OP_TIMEOUT; a worker only starts an operation before `stop_at`, so the whole load stops within
OP_TIMEOUT of it. Every request is a ticket in the server's ledger (ledger.py), so the server's
/metrics can be checked against what the clients sent and saw. HTTP/1.1 kinds (WSGI and ASGI
routes alike, at random):

- hello: keep-alive connections, sometimes three requests pipelined; the body must match.
- upload: up to 2 MiB, Content-Length or chunked in random chunks; the app's sha256 must match.
- download: up to 8 MiB; the body's sha256 must match what the seed makes.
- slow-read: a 0.5-1 MiB download read 4 KiB at a time through an 8 KiB receive buffer.
- vanish-upload / vanish-download: the client leaves (FIN or RST) part way through.
- idle: a connection opened (sometimes after one request) and left idle; the server must close
  it within the keep-alive timeout (plus the deadline sweep and some slack).
- half-open: half a request head, then silence (408 within the head timeout); or a whole
  request and then a half-close (the answer must still arrive).
- garbage: random bytes that cannot begin a request; only a 4xx/5xx answer, or none.
- raise: routes that raise before answering (500) and mid-body (the response broken off).

HTTP/2 (h2, h2-reset: h2traffic.py) and WebSocket (ws-echo, ws-drop: wstraffic.py) kinds run
beside them. Under TLS every kind runs but half-open (asyncio cannot half-close TLS).

A request on a reused keep-alive connection that is closed before any answer byte is retried
once on a new connection (RFC 9112 section 9.3.1: the server may close an idle connection as
the request arrives); anything else that is not the right answer counts as a wrong answer.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from h2.exceptions import H2Error

from benchmarks.apps.soak import HELLO, blocks
from benchmarks.soak.h2traffic import h2_resets, h2_session
from benchmarks.soak.ledger import Ledger, Ticket
from benchmarks.soak.wire import BadAnswer, Conn, Cut, Endpoint, Head
from benchmarks.soak.wstraffic import ws_drop, ws_echo

__all__ = ["Tally", "Traffic", "kinds"]

OP_TIMEOUT = 30.0
MIB = 1 << 20
SWEEP_SLACK = 2.5  # the server's deadline sweep runs about once a second; scheduling slack
MAX_SAMPLES = 20
RAISE_PAUSE = 0.05
MAX_OPERATIONS = 10_000_000  # per worker: a bound besides the time, never reached
# Workers of each kind on the plain server; HTTP/2 and WebSocket kinds when they are on.
WORKERS = {
    "hello": 6,
    "upload": 2,
    "download": 2,
    "slow-read": 1,
    "vanish-upload": 1,
    "vanish-download": 1,
    "idle": 1,
    "half-open": 1,
    "garbage": 1,
    "raise": 1,
}
H2_WORKERS = {"h2": 3, "h2-reset": 1}
WS_WORKERS = {"ws-echo": 2, "ws-drop": 1}
# The TLS server's: fewer (the handshakes cost), and no half-open.
TLS_WORKERS = {
    "hello": 2,
    "upload": 1,
    "download": 1,
    "slow-read": 1,
    "vanish-upload": 1,
    "vanish-download": 1,
    "idle": 1,
    "garbage": 1,
    "raise": 1,
}
TLS_H2_WORKERS = {"h2": 2, "h2-reset": 1}
TLS_WS_WORKERS = {"ws-echo": 1, "ws-drop": 1}


def kinds(tls: bool, h2: bool, ws: bool) -> dict[str, int]:
    """The workers of each kind for one server."""
    out = dict(TLS_WORKERS if tls else WORKERS)
    if h2:
        out.update(TLS_H2_WORKERS if tls else H2_WORKERS)
    if ws:
        out.update(TLS_WS_WORKERS if tls else WS_WORKERS)
    return out


@dataclass
class Tally:
    """What the clients saw: operations done and wrong answers by kind, answers per second."""

    started: float = field(default_factory=time.monotonic)
    done: Counter[str] = field(default_factory=Counter)
    wrong: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    per_second: Counter[int] = field(default_factory=Counter)

    def ok(self, kind: str, answers: int = 1) -> None:
        self.done[kind] += 1
        self.per_second[int(time.monotonic() - self.started)] += answers

    def bad(self, kind: str, why: str) -> None:
        self.wrong[kind] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(f"{kind}: {why}")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _sha(size: int, seed: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(size, seed):
        digest.update(block)
    return digest.hexdigest()


class Traffic:
    def __init__(
        self,
        endpoint: Endpoint,
        ledger: Ledger,
        workers: dict[str, int],
        keep_alive: float,
        head_timeout: float,
        tally: Tally,
        seed: int,
    ) -> None:
        self.endpoint = endpoint
        self.ledger = ledger
        self.workers = workers
        self.keep_alive = keep_alive
        self.head_timeout = head_timeout
        self.tally = tally
        self.seed = seed
        self.stop_at = 0.0
        self.prefix = "tls:" if endpoint.tls else ""

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    def names(self) -> list[str]:
        """The kinds as the tally names them."""
        return [self.prefix + kind for kind in self.workers]

    # The Client protocol (h2traffic.py): the tally, under this server's names.
    def ok(self, kind: str, answers: int = 1) -> None:
        self.tally.ok(self.prefix + kind, answers)

    def bad(self, kind: str, why: str) -> None:
        self.tally.bad(self.prefix + kind, why)

    def retried(self, kind: str) -> None:
        self.tally.retried[self.prefix + kind] += 1

    def _ticket(self, path: bytes | str) -> Ticket:
        return self.ledger.request("1.1", path.decode() if isinstance(path, bytes) else path)

    async def _open(self, receive_buffer: int = 0) -> Conn:
        return await Conn.open(self.endpoint, receive_buffer)

    async def run(self, seconds: float) -> None:
        """Every worker, until `seconds` from now (and their last operations) have passed."""
        self.stop_at = time.monotonic() + seconds
        workers: dict[str, Callable[[random.Random], Awaitable[None]]] = {
            "hello": self._hello,
            "upload": self._upload,
            "download": self._download,
            "slow-read": self._slow_read,
            "vanish-upload": self._vanish_upload,
            "vanish-download": self._vanish_download,
            "idle": self._idle,
            "half-open": self._half_open,
            "garbage": self._garbage,
            "raise": self._raise,
            "h2": functools.partial(h2_session, self),
            "h2-reset": functools.partial(h2_resets, self),
            "ws-echo": functools.partial(ws_echo, self),
            "ws-drop": functools.partial(ws_drop, self),
        }
        tasks = []
        for index, (kind, count) in enumerate(self.workers.items()):
            for copy in range(count):
                rng = random.Random(f"{self.seed}-{self.prefix}{index}-{copy}-{self.stop_at}")
                tasks.append(asyncio.create_task(self._loop(kind, workers[kind], rng)))
        await asyncio.gather(*tasks)

    async def _loop(
        self, kind: str, operation: Callable[[random.Random], Awaitable[None]], rng: random.Random
    ) -> None:
        for _ in range(MAX_OPERATIONS):
            if not self.running():
                return
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    await operation(rng)
            except TimeoutError:
                self.bad(kind, f"no answer within {OP_TIMEOUT:g} s")
            except (BadAnswer, Cut, OSError, H2Error, ValueError) as exc:  # ValueError: bad JSON
                self.bad(kind, _why(exc))

    @staticmethod
    def _route(rng: random.Random, path: str) -> str:
        return ("/asgi" if rng.random() < 0.5 else "") + path

    # -- well-behaved clients --------------------------------------------------------------

    async def _hello(self, rng: random.Random) -> None:
        conn = await self._open()
        try:
            for _ in range(rng.randint(20, 300)):
                if not self.running():
                    return
                paths = [self._route(rng, "/hello") for _ in range(3 if rng.random() < 0.1 else 1)]
                batch = b"".join(
                    b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % p.encode() for p in paths
                )
                try:
                    answers = await self._exchange(conn, batch, paths)
                except (Cut, ConnectionResetError, BrokenPipeError) as exc:
                    if not conn.used or (isinstance(exc, Cut) and exc.started):
                        raise
                    # The server closed the idle connection as the request went out: retry.
                    # (Those tickets stay unsure: the server may or may not have read them.)
                    self.retried("hello")
                    conn.close()
                    conn = await self._open()
                    answers = await self._exchange(conn, batch, paths)
                for head, body in answers:
                    if head.status != 200 or body != HELLO:
                        self.bad("hello", f"{head.status} {body[:60]!r}")
                        return
                self.ok("hello", len(answers))
        finally:
            conn.close()

    async def _exchange(
        self, conn: Conn, batch: bytes, paths: list[str]
    ) -> list[tuple[Head, bytes]]:
        tickets = [self._ticket(path) for path in paths]
        await conn.send(batch)
        return [await self._response(conn, ticket) for ticket in tickets]

    @staticmethod
    async def _response(conn: Conn, ticket: Ticket) -> tuple[Head, bytes]:
        head = await conn.head()
        ticket.answered(head.status)
        parts: list[bytes] = []
        await conn.body(head, parts.append)
        return head, b"".join(parts)

    async def _upload(self, rng: random.Random) -> None:
        size = rng.choice([0, rng.randint(1, 4096), rng.randint(1, 2 * MIB)])
        data = rng.randbytes(size)
        path = self._route(rng, "/upload").encode()
        conn = await self._open()
        ticket = self._ticket(path)
        try:
            if rng.random() < 0.5:
                await conn.send(
                    b"POST %s HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % (path, size)
                )
                for start in range(0, size, 256 * 1024):
                    await conn.send(data[start : start + 256 * 1024])
            else:
                await conn.send(
                    b"POST %s HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n" % path
                )
                start = 0
                while start < size:
                    piece = data[start : start + rng.randint(1, 300 * 1024)]
                    start += len(piece)
                    await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                await conn.send(b"0\r\n\r\n")
            head, body = await self._response(conn, ticket)
        finally:
            conn.close()
        expected = {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
        if head.status != 200 or json.loads(body) != expected:
            self.bad("upload", f"{head.status} {body[:100]!r} for {size} bytes")
        else:
            self.ok("upload")

    async def _download(
        self, rng: random.Random, receive_buffer: int = 0, pace: float = 0.0
    ) -> None:
        kind = "slow-read" if pace else "download"
        size = rng.randint(MIB // 2, MIB) if pace else rng.choice([0, rng.randint(1, 8 * MIB)])
        seed = rng.randrange(1000)
        path = self._route(rng, f"/download?size={size}&seed={seed}").encode()
        conn = await self._open(receive_buffer)
        ticket = self._ticket(path)
        try:
            await conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path)
            head = await conn.head()
            ticket.answered(head.status)
            digest = hashlib.sha256()
            if pace:
                got = 0
                expected_length = int(head.headers.get("content-length", "-1"))
                while got < expected_length and (data := await conn.read_some(4096)):
                    digest.update(data)
                    got += len(data)
                    await asyncio.sleep(pace)
            else:
                got = await conn.body(head, digest.update)
        finally:
            conn.close()
        if head.status != 200 or got != size or digest.hexdigest() != _sha(size, seed):
            self.bad(kind, f"{head.status}, {got} of {size} bytes, or a wrong hash")
        else:
            self.ok(kind)

    async def _slow_read(self, rng: random.Random) -> None:
        await self._download(rng, receive_buffer=8192, pace=0.01)

    # -- clients that misbehave --------------------------------------------------------------

    async def _vanish_upload(self, rng: random.Random) -> None:
        path = self._route(rng, "/upload").encode()
        conn = await self._open()
        self._ticket(path)  # unsure: whether the server read the head before the client went
        try:
            await conn.send(
                b"POST %s HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % (path, 4 * MIB)
            )
            await conn.send(rng.randbytes(rng.randint(0, MIB)))
            await asyncio.sleep(rng.random() * 0.05)
        finally:
            conn.close(reset=rng.random() < 0.5)
        self.ok("vanish-upload", 0)

    async def _vanish_download(self, rng: random.Random) -> None:
        path = self._route(rng, f"/download?size={64 * MIB}&seed=7").encode()
        conn = await self._open()
        ticket = self._ticket(path)
        try:
            await conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path)
            head = await conn.head()
            ticket.answered(head.status)
            if head.status != 200:
                self.bad("vanish-download", f"status {head.status}")
                return
            want, got = rng.randint(0, 2 * MIB), 0
            while got < want and (data := await conn.read_some()):
                got += len(data)
        finally:
            conn.close(reset=rng.random() < 0.5)
        self.ok("vanish-download", 0)

    async def _idle(self, rng: random.Random) -> None:
        # A few idle connections at a time, each checked on its own.
        async def one(after_request: bool) -> None:
            conn = await self._open()
            try:
                if after_request:
                    ticket = self._ticket("/hello")
                    await conn.send(b"GET /hello HTTP/1.1\r\nHost: soak\r\n\r\n")
                    head, body = await self._response(conn, ticket)
                    if head.status != 200 or body != HELLO:
                        self.bad("idle", f"{head.status} {body[:60]!r}")
                        return
                since = time.monotonic()
                bound = self.keep_alive + SWEEP_SLACK
                try:
                    async with asyncio.timeout(bound):
                        rest = await conn.until_closed()
                except TimeoutError:
                    self.bad("idle", f"an idle connection still open after {bound:g} s")
                    return
                waited = time.monotonic() - since
                if rest or waited < self.keep_alive - 0.5:
                    self.bad("idle", f"closed after {waited:.1f} s with {rest[:60]!r}")
                else:
                    self.ok("idle", int(after_request))
            finally:
                conn.close()

        await asyncio.gather(*(one(rng.random() < 0.5) for _ in range(rng.randint(1, 6))))

    async def _half_open(self, rng: random.Random) -> None:
        conn = await self._open()
        try:
            if rng.random() < 0.5:
                await conn.send(b"GET /hello HTTP/1.1\r\nHost: soak\r\n")  # and nothing more
                self.ledger.unsure_of("refusals_timeout")
                since = time.monotonic()
                head, _ = await conn.response()
                if head.status == 408:
                    self.ledger.resolve("refusals_timeout")
                waited = time.monotonic() - since
                rest = await conn.until_closed()
                bound = self.head_timeout + SWEEP_SLACK
                if head.status != 408 or rest or not self.head_timeout - 0.5 < waited < bound:
                    self.bad("half-open", f"{head.status} after {waited:.1f} s, then {rest[:40]!r}")
                    return
            else:
                path = self._route(rng, "/hello")
                ticket = self._ticket(path)
                await conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path.encode())
                conn.half_close()
                head, body = await self._response(conn, ticket)
                rest = await conn.until_closed()
                if head.status != 200 or body != HELLO or rest:
                    self.bad("half-open", f"half-closed: {head.status} {body[:40]!r} {rest[:40]!r}")
                    return
        finally:
            conn.close()
        self.ok("half-open")

    async def _garbage(self, rng: random.Random) -> None:
        # A first byte no request line starts with (a control byte other than CR or LF).
        first = rng.choice([b for b in range(32) if b not in (10, 13)] + [0x7F])
        data = bytes([first]) + rng.randbytes(rng.randint(0, 2048))
        conn = await self._open()
        try:
            try:
                await conn.send(data)
                conn.half_close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed before it was all sent
            answer = await conn.until_closed()
        finally:
            conn.close()
        if answer and not (answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 5")):
            self.bad("garbage", f"answered {answer[:60]!r}")
        else:
            # 400 once a line ends; 408 when none did within the head timeout (under TLS,
            # where the client cannot half-close); no answer: refused, reset before it was read.
            if answer.startswith(b"HTTP/1.1 400"):
                self.ledger.sure("refusals_malformed")
            elif answer.startswith(b"HTTP/1.1 408"):
                self.ledger.sure("refusals_timeout")
            else:
                self.ledger.unsure_of("refusals_malformed")
            self.ok("garbage")

    async def _raise(self, rng: random.Random) -> None:
        await asyncio.sleep(RAISE_PAUSE)  # each one logs a traceback: keep the log readable
        path = rng.choice(["/raise", "/asgi/raise", "/raise-late"])
        conn = await self._open()
        ticket = self._ticket(path)
        try:
            await conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path.encode())
            head = await conn.head()
            ticket.answered(head.status)
            if path == "/raise-late":
                # The head went out before the application raised: the body must be cut short.
                try:
                    await conn.body(head, lambda _: None)
                except Cut:
                    self.ok("raise")
                    return
                self.bad("raise", "a response whose application raised came out whole")
                return
            body = bytearray()
            await conn.body(head, body.extend)
        finally:
            conn.close()
        if head.status != 500:
            self.bad("raise", f"{path}: {head.status} {bytes(body[:60])!r}")
        else:
            self.ok("raise")
