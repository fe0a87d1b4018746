"""python -m benchmarks.soak [--minutes M] [--workers N] [--no-h2] [--no-tls] [--no-ws] ...

Runs dualgate servers it starts (a plain one, and one under TLS) under mixed HTTP/1.1, HTTP/2
and WebSocket traffic for a bounded time (benchmarks/soak/traffic.py), samples their RSS,
descriptors and threads every second, checks their /metrics against what its clients counted,
then prints one verdict per check (benchmarks/soak/verdicts.py) and writes soak.json and
soak.png. Exit status: 0 when every check passes, 1 when one fails, 2 when the soak could not
run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from benchmarks.soak.run import ROOT, Options, SetupError, soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the soak (default 3)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the report goes"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    parser.add_argument("--seed", type=int, default=10, help="seed of the traffic's choices")
    parser.add_argument("--keep-alive", type=float, default=2.0, help="server keep-alive timeout")
    parser.add_argument("--head-timeout", type=float, default=3.0, help="server head timeout")
    parser.add_argument("--threads", type=int, default=16, help="server worker threads")
    parser.add_argument(
        "--max-rss-slope", type=float, default=1.0, help="allowed RSS trend, MiB/min (default 1)"
    )
    parser.add_argument(
        "--max-rss-step",
        type=float,
        default=4.0,
        help="allowed RSS growth over a short window, MiB (default 4)",
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="one more dualgate flag (repeatable)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run each server as a supervisor with N worker processes (default: one process)",
    )
    parser.add_argument("--no-h2", action="store_true", help="no HTTP/2 traffic (--http2 off)")
    parser.add_argument("--no-tls", action="store_true", help="no TLS server (no trustme needed)")
    parser.add_argument("--no-ws", action="store_true", help="no WebSocket sessions")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be 0 (one process) or more")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        print(
            "the chart needs matplotlib: pip install '.[bench]', or pass --no-plot",
            file=sys.stderr,
        )
        return 2
    options = Options(
        minutes=args.minutes,
        out=args.out,
        plot=not args.no_plot,
        seed=args.seed,
        keep_alive=args.keep_alive,
        head_timeout=args.head_timeout,
        threads=args.threads,
        max_slope=args.max_rss_slope,
        max_step=args.max_rss_step,
        server_args=tuple(args.server_arg),
        h2=not args.no_h2,
        tls=not args.no_tls,
        ws=not args.no_ws,
        workers=args.workers,
    )
    try:
        return soak(options)
    except SetupError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
