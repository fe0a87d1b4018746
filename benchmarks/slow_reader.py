"""Peak memory of dualgate streaming a large download to a client that reads slowly, then fast.

    python -m benchmarks.slow_reader [--mb 1024] [--slow-seconds 10]

The server runs as a subprocess (`python -m dualgate serve`); the client reads 16 KiB every
10 ms for `--slow-seconds` (so the server must hold the application back), then the rest as
fast as it can. Every chunk the application yields is a new object. The figure that matters is
the server's VmHWM (peak RSS) from /proc, before and after.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLOW_READ = 16384
SLOW_PAUSE = 0.01


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None, "no VmHWM in /proc status"
    return int(match.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="MiB to download (default 1024)")
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="slow phase length")
    args = parser.parse_args()
    size = args.mb << 20
    command = [
        sys.executable, "-m", "dualgate", "serve", "benchmarks.apps.download:application",
        "--port", "0", "--no-access-log", "--app-dir", str(ROOT),
    ]  # fmt: skip
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT) as server:
        try:
            assert server.stderr is not None
            port = int(server.stderr.readline().rsplit(":", 1)[1])
            before = peak_rss_mib(server.pid)
            received, slow, seconds = _download(port, size, args.slow_seconds)
            after = peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(10)
    print(
        f"{received / 2**20:.0f} MiB in {seconds:.1f} s ({slow / 2**20:.1f} MiB in the "
        f"{args.slow_seconds:g} s slow phase); server peak RSS {before:.1f} MiB before, "
        f"{after:.1f} MiB after (+{after - before:.1f} MiB)"
    )


def _download(port: int, size: int, slow_seconds: float) -> tuple[int, int, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(
            b"GET /?fresh=1&bytes=%d HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % size
        )
        received = 0
        started = time.monotonic()
        while time.monotonic() - started < slow_seconds:
            received += len(sock.recv(SLOW_READ))
            time.sleep(SLOW_PAUSE)
        slow = received
        deadline = started + 600
        while (chunk := sock.recv(1 << 20)) and time.monotonic() < deadline:
            received += len(chunk)
        return received, slow, time.monotonic() - started


if __name__ == "__main__":
    main()
