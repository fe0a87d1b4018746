"""HTTP/2 throughput: dualgate against hypercorn and granian, measured by h2load.

    python -m benchmarks.h2bench [--seconds 5] [--rounds 3] [--servers dualgate,hypercorn,granian]

Each server runs one process pinned to CPU 0 (`taskset -c 0`), h2load to CPU 1, on loopback;
for each of h2c (prior knowledge) and TLS (ALPN h2, a trustme certificate made here), the WSGI
and the ASGI hello app (benchmarks/apps), with `-c10 -m10` (10 connections, 10 streams each)
and `-c1 -m1`. Every run is bounded: h2load runs for `--seconds` after a 1-second warm-up.
Servers take turns within a round, the order rotated each round, and each cell is the median
over rounds, so a noisy machine moves every server alike. The table gives requests per second
and how many failed; a server that cannot serve a case shows its error instead of a number.
hypercorn ends an HTTP/2 connection after `keep_alive_max_requests` (1,000 by default) and
h2load does not reconnect, so it runs with that limit lifted, as the others have none.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import trustme

APPS = {
    "wsgi": "benchmarks.apps.hello:application",
    "asgi": "benchmarks.apps.asgi_hello:app",
}
LOADS = {"c10m10": ("-c10", "-m10"), "c1m1": ("-c1", "-m1")}
SERVERS = ("dualgate", "hypercorn", "granian")
START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_argv(
    name: str, kind: str, port: int, tls: tuple[str, str] | None, directory: str
) -> list[str]:
    app = APPS[kind]
    if name == "dualgate":
        argv = [sys.executable, "-m", "dualgate", "serve", app, "--port", str(port)]
        argv += ["--http2", "on", "--no-access-log"]
        if tls:
            argv += ["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]]
        return argv
    if name == "hypercorn":
        config = Path(directory, "hypercorn.toml")
        config.write_text("keep_alive_max_requests = 1000000000\n")
        argv = [sys.executable, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
        argv += ["--config", str(config)]
        if tls:
            argv += ["--certfile", tls[0], "--keyfile", tls[1]]
        return argv
    module, _, attr = app.partition(":")
    argv = [sys.executable, "-m", "granian", f"{module}:{attr}", "--interface", kind]
    argv += ["--port", str(port), "--http", "2", "--no-ws", "--workers", "1", "--no-log"]
    if tls:
        argv += ["--ssl-certificate", tls[0], "--ssl-keyfile", tls[1]]
    return argv


@contextlib.contextmanager
def running(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        ["taskset", "-c", "0", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("did not start")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def h2load(url: str, load: tuple[str, ...], seconds: int) -> tuple[float, int]:
    argv = ["taskset", "-c", "1", "h2load", *load, "-D", str(seconds), "--warm-up-time", "1"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    rate = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    failed = re.search(r"requests: .*? (\d+) failed", out)
    if rate is None or failed is None:
        raise RuntimeError(out.strip().splitlines()[-1] if out.strip() else done.stderr.strip())
    return float(rate.group(1)), int(failed.group(1))


def measure(
    name: str, kind: str, load: tuple[str, ...], tls: tuple[str, str] | None, args: Namespace
) -> tuple[float, int] | str:
    port = free_port()
    scheme = "https" if tls else "http"
    try:
        with running(server_argv(name, kind, port, tls, args.directory), port):
            return h2load(f"{scheme}://127.0.0.1:{port}/", load, args.seconds)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"error: {exc}"[:60]


def cell(results: list[tuple[float, int] | str]) -> tuple[str, float | None]:
    rates = [r[0] for r in results if isinstance(r, tuple)]
    if not rates:
        return str(results[-1]), None
    failed = sum(r[1] for r in results if isinstance(r, tuple))
    rate = statistics.median(rates)
    errors = len(results) - len(rates)
    note = f" ({failed} failed)" if failed else ""
    note += f" ({errors} rounds errored)" if errors else ""
    return f"{rate:,.0f}{note}", rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args(argv)
    servers = args.servers.split(",")
    with tempfile.TemporaryDirectory() as directory:
        args.directory = directory
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        env_path = os.getcwd()
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (env_path, os.environ.get("PYTHONPATH", "")) if p
        )
        print("| transport | app | load | " + " | ".join(servers) + " | dualgate / hypercorn |")
        print("| --- | --- | --- | " + " | ".join("---" for _ in servers) + " | --- |")
        for transport in ("h2c", "tls"):
            tls = (str(cert), str(key)) if transport == "tls" else None
            for kind in APPS:
                for load_name, load in LOADS.items():
                    results: dict[str, list[tuple[float, int] | str]] = {n: [] for n in servers}
                    for round_index in range(args.rounds):
                        shift = round_index % len(servers)
                        for name in servers[shift:] + servers[:shift]:
                            results[name].append(measure(name, kind, load, tls, args))
                    cells = {name: cell(results[name]) for name in servers}
                    ratio = ""
                    dualgate, hypercorn = cells.get("dualgate"), cells.get("hypercorn")
                    if dualgate and hypercorn and dualgate[1] and hypercorn[1]:
                        ratio = f"{dualgate[1] / hypercorn[1]:.2f}x"
                    line = " | ".join(cells[name][0] for name in servers)
                    print(f"| {transport} | {kind} | {load_name} | {line} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
