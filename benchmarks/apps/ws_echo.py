"""The WebSocket scenarios' ASGI app: /echo, /download and /upload, with lifespan support.

/echo sends every message back as it came. /download sends the stream size (STREAM_BYTES_ENV)
in 64 KiB binary messages, a fresh object each as real data is, then the text "end".
/upload counts the bytes of binary messages until the text "end" and answers with the count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.apps import CHUNK, stream_bytes

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()
    await send({"type": "websocket.accept"})
    path = scope["path"]
    if path == "/echo":
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            message["type"] = "websocket.send"
            await send(message)
    elif path == "/download":
        size = int(scope["query_string"] or stream_bytes())
        while size > 0:
            block = bytes(bytearray(min(size, CHUNK)))
            size -= len(block)
            await send({"type": "websocket.send", "bytes": block})
        await send({"type": "websocket.send", "text": "end"})
        await receive()
    elif path == "/upload":
        received = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                received += len(data)
            else:
                await send({"type": "websocket.send", "text": str(received)})
