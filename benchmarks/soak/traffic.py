"""The soak's mixed traffic: asyncio workers, each one kind of client, each answer checked.

Every worker loops until `stop_at`, and every operation in it is bounded by OP_TIMEOUT; a
worker only starts an operation before `stop_at`, so the whole load stops within OP_TIMEOUT
of it. Kinds (WSGI and ASGI routes alike, at random):

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

A request on a reused keep-alive connection that is closed before any answer byte is retried
once on a new connection (RFC 9112 section 9.3.1: the server may close an idle connection as
the request arrives); anything else that is not the right answer counts as a wrong answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from benchmarks.apps.soak import HELLO, blocks
from benchmarks.soak.wire import BadAnswer, Conn, Cut, Head

__all__ = ["Tally", "Traffic"]

OP_TIMEOUT = 30.0
MIB = 1 << 20
SWEEP_SLACK = 2.5  # the server's deadline sweep runs about once a second; scheduling slack
MAX_SAMPLES = 20
RAISE_PAUSE = 0.05
MAX_OPERATIONS = 10_000_000  # per worker: a bound besides the time, never reached
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
        self, port: int, keep_alive: float, head_timeout: float, tally: Tally, seed: int
    ) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.head_timeout = head_timeout
        self.tally = tally
        self.seed = seed
        self.stop_at = 0.0

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

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
        }
        tasks = []
        for index, (kind, count) in enumerate(WORKERS.items()):
            for copy in range(count):
                rng = random.Random(f"{self.seed}-{index}-{copy}-{self.stop_at}")
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
                self.tally.bad(kind, f"no answer within {OP_TIMEOUT:g} s")
            except (BadAnswer, Cut, OSError) as exc:
                self.tally.bad(kind, _why(exc))

    @staticmethod
    def _route(rng: random.Random, path: str) -> str:
        return ("/asgi" if rng.random() < 0.5 else "") + path

    # -- well-behaved clients --------------------------------------------------------------

    async def _hello(self, rng: random.Random) -> None:
        conn = await Conn.open(self.port)
        try:
            for _ in range(rng.randint(20, 300)):
                if not self.running():
                    return
                paths = [self._route(rng, "/hello") for _ in range(3 if rng.random() < 0.1 else 1)]
                batch = b"".join(
                    b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % p.encode() for p in paths
                )
                try:
                    answers = await self._exchange(conn, batch, len(paths))
                except (Cut, ConnectionResetError, BrokenPipeError) as exc:
                    if not conn.used or (isinstance(exc, Cut) and exc.started):
                        raise
                    # The server closed the idle connection as the request went out: retry.
                    self.tally.retried["hello"] += 1
                    conn.close()
                    conn = await Conn.open(self.port)
                    answers = await self._exchange(conn, batch, len(paths))
                for head, body in answers:
                    if head.status != 200 or body != HELLO:
                        self.tally.bad("hello", f"{head.status} {body[:60]!r}")
                        return
                self.tally.ok("hello", len(answers))
        finally:
            conn.close()

    @staticmethod
    async def _exchange(conn: Conn, batch: bytes, count: int) -> list[tuple[Head, bytes]]:
        await conn.send(batch)
        return [await conn.response() for _ in range(count)]

    async def _upload(self, rng: random.Random) -> None:
        size = rng.choice([0, rng.randint(1, 4096), rng.randint(1, 2 * MIB)])
        data = rng.randbytes(size)
        path = self._route(rng, "/upload").encode()
        conn = await Conn.open(self.port)
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
            head, body = await conn.response()
        finally:
            conn.close()
        expected = {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
        if head.status != 200 or json.loads(body) != expected:
            self.tally.bad("upload", f"{head.status} {body[:100]!r} for {size} bytes")
        else:
            self.tally.ok("upload")

    async def _download(
        self, rng: random.Random, receive_buffer: int = 0, pace: float = 0.0
    ) -> None:
        kind = "slow-read" if pace else "download"
        size = rng.randint(MIB // 2, MIB) if pace else rng.choice([0, rng.randint(1, 8 * MIB)])
        seed = rng.randrange(1000)
        path = self._route(rng, f"/download?size={size}&seed={seed}").encode()
        conn = await Conn.open(self.port, receive_buffer)
        try:
            await conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path)
            head = await conn.head()
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
            self.tally.bad(kind, f"{head.status}, {got} of {size} bytes, or a wrong hash")
        else:
            self.tally.ok(kind)

    async def _slow_read(self, rng: random.Random) -> None:
        await self._download(rng, receive_buffer=8192, pace=0.01)

    # -- clients that misbehave --------------------------------------------------------------

    async def _vanish_upload(self, rng: random.Random) -> None:
        path = self._route(rng, "/upload").encode()
        conn = await Conn.open(self.port)
        try:
            await conn.send(
                b"POST %s HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % (path, 4 * MIB)
            )
            await conn.send(rng.randbytes(rng.randint(0, MIB)))
            await asyncio.sleep(rng.random() * 0.05)
        finally:
            conn.close(reset=rng.random() < 0.5)
        self.tally.ok("vanish-upload", 0)

    async def _vanish_download(self, rng: random.Random) -> None:
        path = self._route(rng, f"/download?size={64 * MIB}&seed=7").encode()
        conn = await Conn.open(self.port)
        try:
            await conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path)
            head = await conn.head()
            if head.status != 200:
                self.tally.bad("vanish-download", f"status {head.status}")
                return
            want, got = rng.randint(0, 2 * MIB), 0
            while got < want and (data := await conn.read_some()):
                got += len(data)
        finally:
            conn.close(reset=rng.random() < 0.5)
        self.tally.ok("vanish-download", 0)

    async def _idle(self, rng: random.Random) -> None:
        # A few idle connections at a time, each checked on its own.
        async def one(after_request: bool) -> None:
            conn = await Conn.open(self.port)
            try:
                if after_request:
                    await conn.send(b"GET /hello HTTP/1.1\r\nHost: soak\r\n\r\n")
                    head, body = await conn.response()
                    if head.status != 200 or body != HELLO:
                        self.tally.bad("idle", f"{head.status} {body[:60]!r}")
                        return
                since = time.monotonic()
                bound = self.keep_alive + SWEEP_SLACK
                try:
                    async with asyncio.timeout(bound):
                        rest = await conn.until_closed()
                except TimeoutError:
                    self.tally.bad("idle", f"an idle connection still open after {bound:g} s")
                    return
                waited = time.monotonic() - since
                if rest or waited < self.keep_alive - 0.5:
                    self.tally.bad("idle", f"closed after {waited:.1f} s with {rest[:60]!r}")
                else:
                    self.tally.ok("idle", int(after_request))
            finally:
                conn.close()

        await asyncio.gather(*(one(rng.random() < 0.5) for _ in range(rng.randint(1, 6))))

    async def _half_open(self, rng: random.Random) -> None:
        conn = await Conn.open(self.port)
        try:
            if rng.random() < 0.5:
                await conn.send(b"GET /hello HTTP/1.1\r\nHost: soak\r\n")  # and nothing more
                since = time.monotonic()
                head, _ = await conn.response()
                waited = time.monotonic() - since
                rest = await conn.until_closed()
                bound = self.head_timeout + SWEEP_SLACK
                if head.status != 408 or rest or not self.head_timeout - 0.5 < waited < bound:
                    self.tally.bad(
                        "half-open", f"{head.status} after {waited:.1f} s, then {rest[:40]!r}"
                    )
                    return
            else:
                await conn.send(
                    b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % self._route(rng, "/hello").encode()
                )
                conn.half_close()
                head, body = await conn.response()
                rest = await conn.until_closed()
                if head.status != 200 or body != HELLO or rest:
                    self.tally.bad(
                        "half-open", f"half-closed: {head.status} {body[:40]!r} {rest[:40]!r}"
                    )
                    return
        finally:
            conn.close()
        self.tally.ok("half-open")

    async def _garbage(self, rng: random.Random) -> None:
        # A first byte no request line starts with (a control byte other than CR or LF).
        first = rng.choice([b for b in range(32) if b not in (10, 13)] + [0x7F])
        data = bytes([first]) + rng.randbytes(rng.randint(0, 2048))
        conn = await Conn.open(self.port)
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
            self.tally.bad("garbage", f"answered {answer[:60]!r}")
        else:
            self.tally.ok("garbage")

    async def _raise(self, rng: random.Random) -> None:
        await asyncio.sleep(RAISE_PAUSE)  # each one logs a traceback: keep the log readable
        path = rng.choice(["/raise", "/asgi/raise", "/raise-late"])
        conn = await Conn.open(self.port)
        try:
            await conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path.encode())
            head = await conn.head()
            if path == "/raise-late":
                # The head went out before the application raised: the body must be cut short.
                try:
                    await conn.body(head, lambda _: None)
                except Cut:
                    self.tally.ok("raise")
                    return
                self.tally.bad("raise", "a response whose application raised came out whole")
                return
            body = bytearray()
            await conn.body(head, body.extend)
        finally:
            conn.close()
        if head.status != 500:
            self.tally.bad("raise", f"{path}: {head.status} {bytes(body[:60])!r}")
        else:
            self.tally.ok("raise")
