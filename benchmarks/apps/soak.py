"""The soak's applications: a WSGI app at / and an ASGI app mounted at /asgi, one process.

    dualgate serve --mount /asgi=benchmarks.apps.soak:asgi_app \
                   --mount /=benchmarks.apps.soak:application

Routes (the ASGI app has the same under /asgi, but /counters and /raise-late):
    /hello                 a fixed 20-byte body
    /upload                reads the body; answers {"size": n, "sha256": hex}
    /download?size=N&seed=S  N bytes of `payload(S)` in 64 KiB chunks, with a Content-Length
    /raise                 raises before answering (the server answers 500)
    /raise-late            yields three chunks of a Content-Length body, then raises
    /slow?seconds=S        answers "slept S" after S seconds (the SIGTERM check)
    /counters              the counters below and the process id, as JSON (one process's:
                           under --workers the soak asks until it has every worker's)
    /asgi/ws               a WebSocket echo: every message back as it came; the text "close"
                           makes the app close (1000); counted opened, closed and lost

Every streamed WSGI body is a `CountedStream`, whose close() the server must call however the
response ends (PEP 3333): done, the client gone, or the application raising. The ASGI
streams count the same in a `finally`. The soak compares the counters once load has stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["HELLO", "application", "asgi_app", "payload"]

HELLO = b"<h1>Hello, soak!</h1>"
BLOCK = 64 * 1024
_payloads: dict[int, bytes] = {}
_payload_lock = threading.Lock()


def payload(seed: int) -> bytes:
    """The 64 KiB block a download with this seed repeats (the client makes the same)."""
    with _payload_lock:
        block = _payloads.get(seed)
        if block is None:
            block = _payloads[seed] = random.Random(seed).randbytes(BLOCK)
            if len(_payloads) > 64:
                _payloads.pop(next(iter(_payloads)))
        return block


def blocks(size: int, seed: int) -> Iterator[bytes]:
    block = payload(seed)
    while size > 0:
        piece = block[: min(size, BLOCK)]
        size -= len(piece)
        yield bytes(piece)  # a fresh object each, as a real application's are


class Counters:
    """Thread-safe counters, shared by both apps (the ASGI side runs on the loop thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._counts[name] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


counters = Counters()


class CountedStream:
    """A response body that counts its opening, its end and its close()."""

    def __init__(self, chunks: Iterator[bytes], kind: str) -> None:
        self._chunks = chunks
        self._kind = kind
        self._finished = False
        counters.add(f"{kind}_opened")

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        self._finished = True

    def close(self) -> None:
        counters.add(f"{self._kind}_closed")
        if not self._finished:
            counters.add(f"{self._kind}_dropped")


def _query(environ_query: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(environ_query).items()}


def _raising_late() -> Iterator[bytes]:
    for _ in range(3):
        yield b"x" * 1024
    raise RuntimeError("soak: raising mid-response, on purpose")


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    query = _query(environ.get("QUERY_STRING", ""))
    counters.add("wsgi_requests")
    if path == "/hello":
        start_response(
            "200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(HELLO)))]
        )
        return [HELLO]
    if path == "/upload":
        digest, size = hashlib.sha256(), 0
        stream = environ["wsgi.input"]
        try:
            while data := stream.read(BLOCK):
                digest.update(data)
                size += len(data)
        except OSError:
            counters.add("uploads_aborted")  # the client went away mid-body
            raise
        counters.add("uploads_done")
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/download":
        size, seed = int(query.get("size", "0")), int(query.get("seed", "0"))
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        start_response("200 OK", headers)
        return CountedStream(blocks(size, seed), "streams")
    if path == "/raise":
        counters.add("raised")
        raise RuntimeError("soak: raising before the response, on purpose")
    if path == "/raise-late":
        counters.add("raised")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10000")])
        return CountedStream(_raising_late(), "streams")
    if path == "/slow":
        seconds = float(query.get("seconds", "1"))
        time.sleep(seconds)
        body = f"slept {seconds:g}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/counters":
        body = json.dumps({**counters.snapshot(), "pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such route\n"]


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _read_body(receive: Receive) -> tuple[bytes, int] | None:
    """(sha256 digest, size) of the request body; None if the client went away."""
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        data = message.get("body", b"")
        digest.update(data)
        size += len(data)
        if not message.get("more_body", False):
            return digest.digest(), size


async def _answer(send: Send, status: int, body: bytes, kind: bytes = b"text/plain") -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The WebSocket echo (module docstring); every session accepted is counted closed in the
    `finally`, and "lost" when the client went without a close frame of its own."""
    message = await receive()  # websocket.connect
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    counters.add("ws_opened")
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code", 1005) not in (1000, 1001):
                    counters.add("ws_lost")
                return
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 1000})
                return
            message["type"] = "websocket.send"
            await send(message)
    finally:
        counters.add("ws_closed")


async def asgi_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await _echo(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    counters.add("asgi_requests")
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]  # the route under the mount, whichever way the path is given
    query = {k.decode(): v[0].decode() for k, v in parse_qs(scope["query_string"]).items()}
    if path == "/hello":
        await _answer(send, 200, HELLO, b"text/html")
    elif path == "/upload":
        body = await _read_body(receive)
        if body is None:
            counters.add("asgi_uploads_aborted")
            return
        counters.add("asgi_uploads_done")
        answer = {"size": body[1], "sha256": body[0].hex()}
        await _answer(send, 200, json.dumps(answer).encode(), b"application/json")
    elif path == "/download":
        size, seed = int(query.get("size", "0")), int(query.get("seed", "0"))
        counters.add("asgi_streams_opened")
        finished = False
        try:
            headers = [(b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for block in blocks(size, seed):
                await send({"type": "http.response.body", "body": block, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            finished = True
        finally:
            counters.add("asgi_streams_closed")
            if not finished:
                counters.add("asgi_streams_dropped")
    elif path == "/raise":
        counters.add("raised")
        raise RuntimeError("soak: raising before the response, on purpose (ASGI)")
    elif path == "/slow":
        seconds = float(query.get("seconds", "1"))
        await asyncio.sleep(seconds)
        await _answer(send, 200, f"slept {seconds:g}".encode())
    else:
        await _answer(send, 404, b"no such route\n")
