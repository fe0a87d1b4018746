"""The applications the HTTP/2 tests serve over real sockets: one WSGI, one ASGI, alike.

Paths: /info answers "<protocol> <host> <scheme>"; /echo answers the request body's length and
SHA-256; /big?N answers N bytes; /slow sleeps a second first (a stream in flight); /headers
answers with hop-by-hop headers set, which HTTP/2 must drop.

`view_wsgi` and `view_asgi` answer what the application saw, as JSON (`View`): the process, the
protocol, the client, the scheme, the host, the root path and the path. Their /hold waits
(30 seconds at most) for a file named `release` in the current directory, after saying so on
stderr: a stream held in flight for as long as a test needs. The module imports nothing but
the standard library, so the process tests copy it next to the servers they start.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["asgi_app", "big_body", "view_asgi", "view_wsgi", "wsgi_app"]


def big_body(size: int) -> bytes:
    """`size` bytes that are not all alike, so a misplaced frame shows."""
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


def _answer(protocol: str, host: str, scheme: str, path: str, query: str, body: bytes) -> bytes:
    # Matched by the end: under a --mount the path an ASGI app sees starts with its prefix.
    if path.endswith("/echo"):
        return f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    if path.endswith("/big"):
        return big_body(int(query))
    return f"{protocol} {host} {scheme}".encode()


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    body = environ["wsgi.input"].read()
    if path.endswith("/slow"):
        time.sleep(1.0)
    out = _answer(
        environ["SERVER_PROTOCOL"],
        environ.get("HTTP_HOST", ""),
        environ["wsgi.url_scheme"],
        path,
        environ["QUERY_STRING"],
        body,
    )
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [out]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path.endswith("/slow"):
        await asyncio.sleep(1.0)
    headers = dict(scope["headers"])
    out = _answer(
        "HTTP/" + scope["http_version"],
        headers.get(b"host", b"").decode(),
        scope["scheme"],
        path,
        scope["query_string"].decode(),
        b"".join(chunks),
    )
    response_headers = [(b"content-type", b"application/octet-stream")]
    if path == "/headers":
        response_headers += [
            (b"connection", b"keep-alive"),
            (b"keep-alive", b"timeout=5"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2c"),
        ]
    await send({"type": "http.response.start", "status": 200, "headers": response_headers})
    # In pieces, more_body and all: a response of unknown length, framed by HTTP/2 alone.
    for start in range(0, len(out), 100000):
        await send(
            {"type": "http.response.body", "body": out[start : start + 100000], "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


# -- what the application saw ---------------------------------------------------------------

_HOLD_MOST = 30.0


def _hold() -> None:
    print("holding in", os.getpid(), file=sys.stderr, flush=True)
    deadline = time.monotonic() + _HOLD_MOST
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.02)


def _view(protocol: str, client: Any, scheme: str, host: str, root: str, path: str) -> bytes:
    seen = {
        "pid": os.getpid(),
        "protocol": protocol,
        "client": list(client) if client else None,
        "scheme": scheme,
        "host": host,
        "root": root,
        "path": path,
    }
    return json.dumps(seen).encode()


def view_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"].endswith("/hold"):
        _hold()
    port = environ.get("REMOTE_PORT")
    body = _view(
        environ["SERVER_PROTOCOL"],
        (environ["REMOTE_ADDR"], int(port) if port else None),
        environ["wsgi.url_scheme"],
        environ.get("HTTP_HOST", ""),
        environ["SCRIPT_NAME"],
        environ["PATH_INFO"],
    )
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


async def view_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"].endswith("/hold"):
        await asyncio.get_running_loop().run_in_executor(None, _hold)
    body = _view(
        "HTTP/" + scope["http_version"],
        scope["client"],
        scope["scheme"],
        dict(scope["headers"]).get(b"host", b"").decode(),
        scope["root_path"],
        scope["path"],
    )
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
