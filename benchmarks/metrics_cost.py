"""What metrics cost dualgate per request: `python -m benchmarks.metrics_cost`.

The same hello app is served with metrics off and on (`--metrics-address 127.0.0.1:0
--health-path /healthz`), in alternating order, the server pinned to one core and wrk to the
other, as `python -m benchmarks` does. Two figures per run:

- requests per second, as wrk counts them;
- CPU time per request: the server process's utime + stime from /proc/PID/stat (all its
  threads) over the timed wrk run, divided by the requests wrk completed. On a shared machine
  this is the steadier figure: another process on the server's core takes wall-clock time from
  it, and so requests per second, but not CPU time per request.

`--recorders` also times, in this process, counting one request's figures the way metrics.py
does and the way prometheus-client would (a labelled Counter, a labelled Histogram and two
byte Counters), when prometheus-client is installed: the measurement behind writing the
exposition format ourselves.

The request head parser is compared the same way: `--variants h11,httptools` serves with
`--http h11` and `--http httptools` (metrics off); `--readers` also times, in this process,
typical GET requests through the request reader with each parser.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import procs
from benchmarks.load import parse_wrk

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")
_VARIANTS = {
    "off": [],
    "on": ["--metrics-address", "127.0.0.1:0", "--health-path", "/healthz"],
    # To tell the two apart, and (off against off-again) how far two runs of one build differ.
    "metrics": ["--metrics-address", "127.0.0.1:0"],
    "health": ["--health-path", "/healthz"],
    "off-again": [],
    # The request head parser (--http), metrics off.
    "h11": ["--http", "h11"],
    "httptools": ["--http", "httptools"],
}
# A typical request from a browser-less client (wrk's is shorter), for --readers.
_TYPICAL_GET = (
    b"GET /api/items?page=2 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n"
)


@dataclass
class Run:
    round: int
    variant: str
    requests_per_s: float
    cpu_us_per_request: float
    requests: int


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5), counted from 1 with the pid; here from 0 after the name.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def wrk(port: int, seconds: int, connections: int, close: bool, cpus: frozenset[int] | None) -> str:
    argv = ["wrk", "--threads=1", f"--connections={connections}", f"--duration={seconds}s"]
    if close:
        argv += ["--header", "Connection: close"]
    argv += ["--latency", f"http://{procs.LOOPBACK}:{port}/"]
    done = procs.run_bounded(argv, timeout=seconds + 10, cpus=cpus)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def measure(index: int, variant: str, args: argparse.Namespace, cores: procs.Cores) -> Run:
    port = procs.free_port()
    argv = [sys.executable, "-m", "dualgate", "serve", args.app, "--host", procs.LOOPBACK]
    argv += ["--port", str(port), "--no-access-log", "--interface", args.interface]
    argv += ["--loop", args.loop, *_VARIANTS[variant]]
    proc = procs.spawn(argv, cpus=cores.server, cwd=ROOT)
    try:
        why = procs.wait_ready(proc, port, 30)
        if why is not None:
            raise RuntimeError(f"dualgate ({variant}) {why}")
        wrk(port, args.warmup, args.connections, args.close, cores.load)
        before = cpu_seconds(proc.pid)
        text = wrk(port, args.duration, args.connections, args.close, cores.load)
        used = cpu_seconds(proc.pid) - before
    finally:
        procs.stop(proc)
    result = parse_wrk(text)
    if result.errors or not result.requests:
        raise RuntimeError(f"dualgate ({variant}): {result.errors} errors: {result.error_detail}")
    return Run(index, variant, result.value, used / result.requests * 1e6, result.requests)


def recorders(count: int = 200_000) -> None:
    """Counting one request's figures: metrics.py's way, and prometheus-client's."""
    from dualgate.metrics.counters import Metrics

    metrics = Metrics(metered=True)

    def ours() -> None:
        metrics.received_bytes += 80
        metrics.sent_bytes += 150
        metrics.response("wsgi", 200, 0.0004)

    timings = {"metrics.py (plain ints and lists)": ours}
    try:
        from prometheus_client import CollectorRegistry, Counter, Histogram
    except ImportError:
        print("prometheus-client is not installed: only metrics.py is timed")
    else:
        from dualgate.metrics.snapshot import DURATION_BOUNDS

        registry = CollectorRegistry()
        requests = Counter("r", "", ["interface", "status"], registry=registry)
        duration = Histogram("d", "", ["interface"], buckets=DURATION_BOUNDS, registry=registry)
        received = Counter("i", "", registry=registry)
        sent = Counter("o", "", registry=registry)
        child_requests = requests.labels("wsgi", "2xx")
        child_duration = duration.labels("wsgi")

        def client() -> None:
            received.inc(80)
            sent.inc(150)
            requests.labels("wsgi", "2xx").inc()
            duration.labels("wsgi").observe(0.0004)

        def client_cached() -> None:
            received.inc(80)
            sent.inc(150)
            child_requests.inc()
            child_duration.observe(0.0004)

        timings["prometheus-client, labels() per request"] = client
        timings["prometheus-client, labelled children cached"] = client_cached
    for name, record in timings.items():
        best = min(_time(record, count) for _ in range(5))
        print(f"{name:<48} {best:6.2f} µs per request")


def readers(count: int = 50_000) -> None:
    """One typical GET through the request reader, head to the next request, with each parser."""
    from dualgate.http.reader import RequestReader, head_parser

    for name in ("h11", "httptools"):
        reader = RequestReader(65536, 100, None, head_parser(name))

        def one(reader: RequestReader = reader) -> None:
            reader.feed(_TYPICAL_GET)
            reader.next_event()  # the Request
            reader.next_event()  # NEED_DATA
            reader.start_next()

        best = min(_time(one, count) for _ in range(5))
        print(f"reader with --http {name:<10} {best:6.2f} µs per GET ({len(_TYPICAL_GET)} bytes)")


def _time(record: object, count: int) -> float:
    assert callable(record)
    start = time.perf_counter()
    for _ in range(count):
        record()
    return (time.perf_counter() - start) / count * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant")
    parser.add_argument("--duration", type=int, default=3, help="seconds of each timed wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each")
    parser.add_argument("--connections", type=int, default=10, help="wrk connections")
    parser.add_argument(
        "--close", action="store_true", help="a new connection per request (Connection: close)"
    )
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--app", default="benchmarks.apps.hello:application")
    parser.add_argument("--interface", default="wsgi", choices=["wsgi", "asgi"])
    parser.add_argument("--recorders", action="store_true", help="also time the recorders")
    parser.add_argument(
        "--readers", action="store_true", help="also time the reader with each head parser"
    )
    parser.add_argument(
        "--variants",
        default="off,on",
        help=f"comma-separated, the first is the reference (of: {', '.join(_VARIANTS)})",
    )
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if len(variants) < 2 or any(v not in _VARIANTS for v in variants):
        parser.error(f"--variants takes two or more of {', '.join(_VARIANTS)}")
    if args.recorders:
        recorders()
    if args.readers:
        readers()
    cores = procs.Cores.plan()
    runs: list[Run] = []
    try:
        for index in range(args.rounds):
            # Alternate the order, so drift on a shared machine hits every variant alike.
            order = variants if index % 2 == 0 else variants[::-1]
            for variant in order:
                run = measure(index, variant, args, cores)
                runs.append(run)
                print(
                    f"round {index + 1} {variant:<9} {run.requests_per_s:9,.0f} req/s "
                    f"{run.cpu_us_per_request:7.2f} µs CPU per request ({run.requests} requests)",
                    flush=True,
                )
    finally:
        procs.stop_all()
    reference = variants[0]
    for variant in variants:
        mine = [run for run in runs if run.variant == variant]
        rate = statistics.median(run.requests_per_s for run in mine)
        cpu = statistics.median(run.cpu_us_per_request for run in mine)
        print(f"median {variant:<9} {rate:9,.0f} req/s {cpu:7.2f} µs CPU per request")
    for variant in variants[1:]:
        # Within each round, against the reference's run of that same round: a disturbance
        # that lasts a round moves both, and the median drops the round it hit unevenly.
        by_round = {run.round: run for run in runs if run.variant == reference}
        pairs = [(run, by_round[run.round]) for run in runs if run.variant == variant]
        faster = statistics.median(m.requests_per_s / t.requests_per_s - 1 for m, t in pairs)
        costlier = statistics.median(
            m.cpu_us_per_request / t.cpu_us_per_request - 1 for m, t in pairs
        )
        print(
            f"{variant} against {reference}, median of the {len(pairs)} rounds' ratios: "
            f"req/s {faster * 100:+.1f}%, CPU time per request {costlier * 100:+.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
