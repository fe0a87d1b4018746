"""Bounded memory: big bodies both ways against a slow peer, measured in the server process.

The server runs as a subprocess (`python -m dualgate serve ...`) so its VmRSS / VmHWM in
/proc are its own. Each test streams 256 MB with one side slow for a couple of seconds (so the
server has to hold the other side back) and then fast, and asserts the server's peak RSS grew
by less than a generous bound: without backpressure the slow phase alone would buffer far more.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SOCKET_TIMEOUT

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

TOTAL = 256 * 1024 * 1024
CHUNK = 64 * 1024
SLOW_SECONDS = 2.0
MAX_GROWTH = 64 * 1024 * 1024

APP = textwrap.dedent(
    """
    import time
    import zlib

    CHUNK = b"\\xab" * 65536


    def _download(total):
        # A fresh object per chunk, as real data is: a transport that keeps references to
        # what it could not send yet (uvloop's does) would hide buffering of one shared chunk.
        sent = 0
        while sent < total:
            piece = bytes(bytearray(CHUNK[: total - sent]))
            sent += len(piece)
            yield piece


    def application(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/download":
            total = int(environ["QUERY_STRING"])
            start_response(
                "200 OK",
                [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))],
            )
            return _download(total)
        if path == "/upload":
            slow_until = time.monotonic() + float(environ["QUERY_STRING"])
            stream = environ["wsgi.input"]
            size = crc = 0
            while True:
                chunk = stream.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
                if time.monotonic() < slow_until:
                    time.sleep(0.01)
            body = b"%d %d" % (size, crc)
        else:
            body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    """
)


class ServerProcess:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM of the server process, in bytes."""
        values = {}
        with open(f"/proc/{self.process.pid}/status") as file:
            for line in file:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0]) * 1024
        return values

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux 4.0+); False when not allowed."""
        try:
            with open(f"/proc/{self.process.pid}/clear_refs", "w") as file:
                file.write("5")
        except OSError:
            return False
        return True

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT)
        sock.settimeout(SOCKET_TIMEOUT)
        return sock


@pytest.fixture
def mem_server(tmp_path: Path) -> Iterator[ServerProcess]:
    (tmp_path / "memapp.py").write_text(APP)
    command = [
        sys.executable,
        "-m",
        "dualgate",
        "serve",
        "memapp:application",
        "--port",
        "0",
        "--app-dir",
        str(tmp_path),
        "--no-access-log",
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        lines: queue.Queue[str] = queue.Queue()

        def drain() -> None:  # keeps the pipe from filling; first lines go to the queue
            assert process.stderr is not None
            for line in process.stderr:
                lines.put(line)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            port = _port_from(lines)
            yield ServerProcess(process, port)
        finally:
            process.terminate()
            try:
                process.wait(timeout=SOCKET_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=SOCKET_TIMEOUT)
            reader.join(SOCKET_TIMEOUT)


def _port_from(lines: queue.Queue[str]) -> int:
    seen = []
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        match = re.search(r"Serving WSGI app .* on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"the server did not report its port: {seen!r}")


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {buffer!r}"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def _get(server: ServerProcess, path: str) -> bytes:
    with server.connect() as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, rest = _read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
        while chunk := sock.recv(65536):
            rest += chunk
        return rest


def _baseline(server: ServerProcess) -> int:
    """The RSS after a warm-up; VmHWM is reset to it when the kernel allows."""
    assert _get(server, "/") == b"ok"
    assert len(_get(server, f"/download?{4 * 1024 * 1024}")) == 4 * 1024 * 1024
    server.reset_peak()
    return server.status()["VmRSS"]


def test_slow_reader_download_keeps_server_memory_bounded(mem_server: ServerProcess) -> None:
    baseline = _baseline(mem_server)
    started = time.monotonic()
    received = 0
    buffer = bytearray(1 << 20)
    with mem_server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /download?{TOTAL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, rest = _read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert f"content-length: {TOTAL}".encode() in head.lower()
        received = len(rest)
        # Slow: a little at a time, while the application could produce all 256 MB.
        slow_until = time.monotonic() + SLOW_SECONDS
        while time.monotonic() < slow_until:
            received += len(sock.recv(4096))
            time.sleep(0.02)
        slow_received = received
        during_slow = mem_server.status()
        # Then fast.
        while received < TOTAL:
            count = sock.recv_into(buffer)
            assert count, f"closed after {received} of {TOTAL} bytes"
            received += count
    elapsed = time.monotonic() - started
    after = mem_server.status()
    growth = after["VmHWM"] - baseline
    print(
        f"\ndownload: baseline RSS {baseline / 2**20:.1f} MiB, RSS during the slow phase "
        f"{during_slow['VmRSS'] / 2**20:.1f} MiB, peak {after['VmHWM'] / 2**20:.1f} MiB "
        f"(+{growth / 2**20:.1f} MiB); {slow_received} bytes in the slow phase; "
        f"{TOTAL / 2**20:.0f} MiB in {elapsed:.1f} s"
    )
    assert received == TOTAL
    assert slow_received < TOTAL // 4, "the slow phase was not slow"
    assert growth < MAX_GROWTH, f"server peak RSS grew by {growth / 2**20:.1f} MiB"


def test_slow_app_upload_keeps_server_memory_bounded(mem_server: ServerProcess) -> None:
    baseline = _baseline(mem_server)
    blocks = [bytes([value]) * CHUNK for value in range(7)]
    crc = 0
    started = time.monotonic()
    with mem_server.connect() as sock:
        sock.sendall(
            f"POST /upload?{SLOW_SECONDS} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {TOTAL}\r\n\r\n".encode()
        )
        peak_during_send = 0
        for index in range(TOTAL // CHUNK):
            block = blocks[index % len(blocks)]
            sock.sendall(block)
            crc = zlib.crc32(block, crc)
            if index % 512 == 0:
                peak_during_send = max(peak_during_send, mem_server.status()["VmRSS"])
        head, rest = _read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
        match = re.search(rb"(?i)content-length: (\d+)", head)
        assert match, head
        length = int(match.group(1))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
    elapsed = time.monotonic() - started
    after = mem_server.status()
    growth = after["VmHWM"] - baseline
    print(
        f"\nupload: baseline RSS {baseline / 2**20:.1f} MiB, highest sampled RSS while sending "
        f"{peak_during_send / 2**20:.1f} MiB, peak {after['VmHWM'] / 2**20:.1f} MiB "
        f"(+{growth / 2**20:.1f} MiB); {TOTAL / 2**20:.0f} MiB in {elapsed:.1f} s"
    )
    assert rest == b"%d %d" % (TOTAL, crc), "the application did not get the exact body"
    assert elapsed > SLOW_SECONDS * 0.8, "the application was not slow at first"
    assert growth < MAX_GROWTH, f"server peak RSS grew by {growth / 2**20:.1f} MiB"
