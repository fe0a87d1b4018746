"""Instructions per request with metrics off and on, counted by valgrind: a figure that other
work on a shared machine cannot move.

    python -m benchmarks.metrics_instructions          # needs valgrind (apt-get install valgrind)

Each variant is a real `dualgate.Server` (the seed's hello app with neither, either or both of
--metrics-address and --health-path), started in this process; the requests go through the
protocol its listener builds, over a transport that only counts what is written, so no socket
or kernel work is in the figure, only the server's own. The whole process is run under
`valgrind --tool=cachegrind` twice, with FEW and MANY requests, and the difference in
instructions divided by MANY - FEW: start-up and shutdown cancel out. Timers that run by the
clock (the deadline sweep, the Date header, the lag probe) count for however long valgrind
takes, which makes the figure for metrics on a little higher than it is.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualgate.config import HTTPParser

ROOT = Path(__file__).resolve().parent.parent
FEW, MANY = 300, 3300
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n\r\n"
_VARIANTS: dict[str, dict[str, Any]] = {
    "off": {},
    "metrics": {"metrics_address": "127.0.0.1:0"},
    "health": {"health_path": "/healthz"},
    "both": {"metrics_address": "127.0.0.1:0", "health_path": "/healthz"},
}


class _Transport:
    """Enough of an asyncio transport for one keep-alive connection: it counts the writes."""

    def __init__(self) -> None:
        self.responses = 0
        self.written: asyncio.Event | None = None

    def write(self, data: bytes) -> None:
        self.responses += 1
        if self.written is not None:
            self.written.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def drive(variant: str, count: int, http: HTTPParser) -> None:
    """Serve `count` hello requests on one connection through a real Server's protocol."""
    from benchmarks.apps.hello import application
    from dualgate import Config, Server

    config = Config(
        app=application, port=0, loop="asyncio", access_log=False, http=http, **_VARIANTS[variant]
    )
    server = Server(config)

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve())
        while not server.started.is_set():
            await asyncio.sleep(0.01)
        # The protocol the server accepts with: an Acceptor's on asyncio's own loop, else the
        # asyncio.Server's.
        protocol: Any  # fed a counting stand-in for a transport, below
        if server._acceptors:
            protocol = server._acceptors[0]._factory()
        else:
            protocol = server._listeners[0]._protocol_factory()  # type: ignore[attr-defined]
        transport = _Transport()
        protocol.connection_made(transport)
        for _ in range(count):
            transport.written = written = asyncio.Event()
            protocol.data_received(REQUEST)
            await written.wait()
        assert transport.responses == count
        server.shutdown()
        await serving

    asyncio.run(main())


def instructions(variant: str, count: int, http: HTTPParser) -> int:
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    argv += [sys.executable, "-m", "benchmarks.metrics_instructions", "--drive", variant]
    argv += ["--count", str(count), "--http", http]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind failed ({done.returncode}): {done.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.metrics_instructions", description=__doc__
    )
    parser.add_argument("--drive", choices=list(_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=FEW, help=argparse.SUPPRESS)
    parser.add_argument(
        "--http",
        choices=["h11", "httptools"],
        default="h11",
        help="the head parser (default h11, the figure comparable across versions)",
    )
    args = parser.parse_args(argv)
    if args.drive:
        drive(args.drive, args.count, args.http)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    per_request: dict[str, float] = {}
    results: dict[tuple[str, int], int] = {}

    def count(variant: str, requests: int) -> None:
        results[(variant, requests)] = instructions(variant, requests, args.http)

    # Two valgrind runs at a time (each is one thread's work, mostly).
    for variant in _VARIANTS:
        threads = [threading.Thread(target=count, args=(variant, n)) for n in (FEW, MANY)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for variant in _VARIANTS:
        per_request[variant] = (results[(variant, MANY)] - results[(variant, FEW)]) / (MANY - FEW)
        line = f"{variant:<8} {per_request[variant]:10,.0f} instructions per request"
        if variant != "off":
            more = per_request[variant] - per_request["off"]
            line += f", {more:+,.0f} ({more / per_request['off'] * 100:+.2f}%) against off"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
