"""Bounded memory for WebSockets: 200 MB each way with a slow reader on the other side.

The server runs as a subprocess so its VmHWM (peak RSS) in /proc is its own. Each test first
warms the server up with a small transfer (imports, buffers), takes VmHWM as the baseline, then
streams 200 MB in 64 KiB messages with the reader slow for a while and fast after, and asserts
the peak grew by less than 32 MB. Without backpressure the slow phase alone would buffer most of
the stream: the client writes far faster than the slow side takes.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.ws_support import BINARY, TEXT, frame, open_websocket, text

TOTAL = 200 * 1024 * 1024
MESSAGE = 64 * 1024
SLOW_SECONDS = 1.5
MAX_GROWTH_KB = 32 * 1024

APP = textwrap.dedent(
    """
    import asyncio
    import time


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await receive()
        await send({"type": "websocket.accept"})
        total, slow = scope["query_string"].decode().split(",")
        slow_until = time.monotonic() + float(slow)
        if scope["path"] == "/upload":
            received = 0
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") == "end":
                    await send({"type": "websocket.send", "text": str(received)})
                    continue
                received += len(message["bytes"])
                if time.monotonic() < slow_until:
                    await asyncio.sleep(0.01)  # a slow consumer, for a while
        else:
            left = int(total)
            while left > 0:
                # A fresh object per message, as real data is.
                block = bytes(bytearray(min(left, 65536)))
                left -= len(block)
                await send({"type": "websocket.send", "bytes": block})
            await send({"type": "websocket.send", "text": "end"})
            await receive()
    """
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    (tmp_path / "ws_memory_app.py").write_text(APP)
    argv = [sys.executable, "-m", "dualgate", "serve", "ws_memory_app:app", "--port", "0"]
    argv += ["--app-dir", str(tmp_path), "--no-access-log"]
    with ServerProcess(argv, cwd=tmp_path) as process:
        port = process.wait_for_port()
        # Warm up both ways, so imports and first buffers are in the baseline.
        upload(port, 4 * MESSAGE, 0.0)
        download(port, 4 * MESSAGE, 0.0)
        yield process, port


def upload(port: int, total: int, slow: float) -> None:
    # One masked frame sent again and again: the client's own cost stays out of the way.
    message = frame(BINARY, os.urandom(MESSAGE), mask=os.urandom(4))
    with open_websocket(port, f"/upload?{total},{slow}") as peer:
        for _ in range(total // MESSAGE):
            peer.sock.sendall(message)
        peer.send(text("end"))
        answer = peer.recv_data()
        assert (answer.opcode, answer.payload) == (TEXT, str(total).encode())


def download(port: int, total: int, slow: float) -> None:
    with open_websocket(port, f"/download?{total},{slow}") as peer:
        slow_until = time.monotonic() + slow
        while time.monotonic() < slow_until:
            chunk = peer.sock.recv(16 * 1024)
            assert chunk
            peer.reader.buffer += chunk
            time.sleep(0.01)
        received = 0
        while True:
            got = peer.recv_data()
            if got.opcode == TEXT:
                break
            received += len(got.payload)
        assert (received, got.payload) == (total, b"end")


def test_a_client_streaming_200_mb_to_a_slow_application(
    server: tuple[ServerProcess, int],
) -> None:
    process, port = server
    before = process.status_kb("VmHWM")
    upload(port, TOTAL, SLOW_SECONDS)
    growth = process.status_kb("VmHWM") - before
    print(f"upload: peak RSS {before / 1024:.1f} MiB, grew by {growth / 1024:.1f} MiB")
    assert growth < MAX_GROWTH_KB


def test_an_application_streaming_200_mb_to_a_slow_client(
    server: tuple[ServerProcess, int],
) -> None:
    process, port = server
    before = process.status_kb("VmHWM")
    download(port, TOTAL, SLOW_SECONDS)
    growth = process.status_kb("VmHWM") - before
    print(f"download: peak RSS {before / 1024:.1f} MiB, grew by {growth / 1024:.1f} MiB")
    assert growth < MAX_GROWTH_KB
