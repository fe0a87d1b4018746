"""Backpressure both ways, and the write timeout, over a raw socket against a real server."""

from __future__ import annotations

import socket
import threading
import time

from tests.conftest import Receive, Scope, Send, ServeFactory
from tests.ws_support import (
    BINARY,
    Recorder,
    frame,
    open_websocket,
    text,
    wait_for_thread_event,
    websocket_app,
)

FRAME = 64 * 1024
# More than the kernel's socket buffers on both ends can hold (a few MiB each on loopback).
TOTAL_FRAMES = 512


def push_until_stalled(sock: socket.socket, data: bytes, stall: float = 0.5) -> int:
    """Send without blocking until the peer takes nothing for `stall` seconds; bytes sent."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    last_progress = time.monotonic()
    deadline = last_progress + 20
    try:
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(view[sent : sent + 1024 * 1024])
                last_progress = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last_progress > stall:
                    break
                time.sleep(0.01)
    finally:
        sock.setblocking(True)
    return sent


def test_reading_pauses_while_the_application_does_not_receive(serve: ServeFactory) -> None:
    release = threading.Event()
    recorder = Recorder()

    async def sink(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await wait_for_thread_event(release)
        count = 0
        while True:
            message = await receive()
            if message.get("text") == "end":
                await send({"type": "websocket.send", "text": str(count)})
            elif message["type"] == "websocket.receive":
                count += 1
            else:
                recorder.put(count)
                return

    port = serve(websocket_app(sink), ws_max_queue=4).port
    data = frame(BINARY, b"m" * FRAME) * TOTAL_FRAMES
    with open_websocket(port) as peer:
        sent = push_until_stalled(peer.sock, data)
        assert sent < len(data), "the server kept reading with the application not receiving"
        release.set()
        peer.sock.sendall(data[sent:])
        peer.send(text("end"))
        assert peer.recv_data().payload == str(TOTAL_FRAMES).encode()


def test_send_waits_while_the_peer_does_not_read(serve: ServeFactory) -> None:
    sent: list[int] = []

    async def source(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        block = b"s" * FRAME
        for index in range(TOTAL_FRAMES):
            await send({"type": "websocket.send", "bytes": block})
            sent.append(index)
        await send({"type": "websocket.close"})

    port = serve(websocket_app(source)).port
    with open_websocket(port) as peer:
        time.sleep(0.5)
        stalled_at = len(sent)
        time.sleep(0.3)
        assert len(sent) == stalled_at < TOTAL_FRAMES, "send() did not wait for the peer"
        received = 0
        while True:
            got = peer.recv_data()
            if got.opcode != BINARY:
                break
            received += len(got.payload)
        assert received == FRAME * TOTAL_FRAMES
        assert got.close_code == 1000


def test_the_write_timeout_drops_a_peer_that_does_not_read(serve: ServeFactory) -> None:
    recorder = Recorder()

    async def source(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        started = time.monotonic()
        try:
            while time.monotonic() - started < 20:
                await send({"type": "websocket.send", "bytes": b"w" * FRAME})
        except OSError as exc:
            recorder.put((type(exc).__name__, time.monotonic() - started))

    port = serve(websocket_app(source), ws_write_timeout=0.5).port
    with open_websocket(port) as peer:
        name, seconds = recorder.get()
        assert name == "WebSocketClosed"
        assert seconds < 5
        peer.sock.settimeout(5)
        try:
            while peer.sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass  # aborted: what a peer that stopped reading deserves
