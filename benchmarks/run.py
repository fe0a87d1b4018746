"""`python -m benchmarks`: start each server, drive each load, report medians and ratios."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Literal

from benchmarks import procs, report
from benchmarks.apps import STREAM_BYTES_ENV
from benchmarks.floor import Floor, median_floor
from benchmarks.load import HTTP_LOADS, WS_LOADS, Load, LoadRunner
from benchmarks.measurement import Measurement
from benchmarks.scenarios import SCENARIOS, Scenario
from benchmarks.servers import SERVERS, AppRef, Options, Server

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
READY_DEADLINE = 30.0  # seconds a server gets to accept connections
FLOOR_DEADLINE = 120.0
VERSIONS = (
    "dualgate", "h11", "uvloop", "waitress", "gunicorn", "uvicorn", "hypercorn", "a2wsgi",
    "asgiref", "flask", "matplotlib", "wsproto", "websockets", "httptools", "zttp",
    "gunicorn_h1c", "granian",
)  # fmt: skip


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    servers = ", ".join(s.name for s in SERVERS)
    scenarios = ", ".join(s.name for s in SCENARIOS)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark dualgate against other WSGI/ASGI servers on 127.0.0.1.",
        epilog=f"servers: {servers}\nscenarios: {scenarios}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--servers", type=_names, help="comma-separated servers (default: all)")
    parser.add_argument("--scenarios", type=_names, help="comma-separated scenarios")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per server")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, server order rotated")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 1 s, small scenarios only"
    )
    parser.add_argument("--threads", type=int, help="threads for dualgate, waitress, gthread")
    parser.add_argument("--stream-mb", type=int, default=200, help="MiB for download/upload")
    parser.add_argument(
        "--stream-timeout", type=float, default=180.0, help="seconds one transfer may take"
    )
    parser.add_argument(
        "--load",
        choices=["auto", "wrk", "builtin"],
        default="auto",
        help="request-load tool: wrk when installed (auto), or the built-in asyncio client",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory"
    )
    parser.add_argument("--list", action="store_true", help="show what would run, and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 1.0
        if args.scenarios is None:
            args.scenarios = [s.name for s in SCENARIOS if s.quick]
    for option, known in (("servers", SERVERS), ("scenarios", SCENARIOS)):
        chosen = getattr(args, option)
        valid = {x.name for x in known}
        if chosen is not None and (bad := [n for n in chosen if n not in valid]):
            parser.error(f"unknown {option}: {', '.join(bad)} (valid: {', '.join(sorted(valid))})")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.stream_mb < 1:
        parser.error("--rounds, --duration and --stream-mb must be positive")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Step:
    round: int
    scenario: Scenario
    server: Server | None  # None for the floor
    app: AppRef | None
    estimate: float


@dataclass
class State:
    samples: list[report.Sample] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: set[tuple[str, str]] = field(default_factory=set)


class Harness:
    def __init__(
        self, args: argparse.Namespace, servers: list[Server], tool: str, tls: bool = False
    ) -> None:
        self.args = args
        self.servers = servers
        self.cores = procs.Cores.plan()
        self.stream_bytes: int = int(args.stream_mb) * MIB
        self.duration = float(args.duration)
        self.workdir = Path(tempfile.mkdtemp(prefix="dualgate-bench-"))
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env[STREAM_BYTES_ENV] = str(self.stream_bytes)
        self.runner = LoadRunner(
            "wrk" if tool == "wrk" else "builtin", self.cores.load, ROOT, self.env
        )
        # For scenarios with several worker processes: a 2-CPU machine cannot give each worker
        # a core and the load generator another, so every process shares every CPU.
        self.unpinned_runner = LoadRunner(
            "wrk" if tool == "wrk" else "builtin", None, ROOT, self.env
        )
        certfile, keyfile = _certificate(self.workdir) if tls else (None, None)
        self.options = Options(args.threads, self.workdir, self.stream_bytes, certfile, keyfile)
        self.state = State()

    def plan(self, scenarios: list[Scenario]) -> list[Step]:
        steps = []
        for rnd in range(self.args.rounds):
            # Rotating the order each round spreads any drift of the machine over all servers.
            shift = rnd % len(self.servers)
            order = self.servers[shift:] + self.servers[:shift]
            for scenario in scenarios:
                if scenario.kind == "floor":
                    steps.append(Step(rnd, scenario, None, None, 6.0))
                    continue
                for server in order:
                    app = server.app_for(scenario)
                    if app is not None:
                        steps.append(Step(rnd, scenario, server, app, self._estimate(scenario)))
        return steps

    def _estimate(self, scenario: Scenario) -> float:
        startup = 2.0 + float(self.args.warmup)
        if scenario.kind == "http":
            return startup + len(HTTP_LOADS) * (max(1, round(self.duration)) + 0.3)
        if scenario.kind == "ws-echo":
            return startup + len(WS_LOADS) * (self.duration + 1.0)
        return startup + 1.0 + self.stream_bytes / (150 * MIB)

    def execute(self, steps: list[Step]) -> None:
        started = time.monotonic()
        planned = sum(s.estimate for s in steps)
        done_estimate = 0.0
        for index, step in enumerate(steps, 1):
            elapsed = time.monotonic() - started
            # Scale the remaining estimate by how the finished steps compared with theirs.
            pace = elapsed / done_estimate if done_estimate else 1.0
            eta = (planned - done_estimate) * pace
            name = step.server.name if step.server else "(in-process)"
            say(
                f"[{index}/{len(steps)} round {step.round + 1}/{self.args.rounds} "
                f"ETA {_clock(eta)}] {step.scenario.name} · {name}"
            )
            if step.server is None:
                self.floor(step)
            else:
                self.session(step)
            done_estimate += step.estimate

    def floor(self, step: Step) -> None:
        argv = [sys.executable, "-m", "benchmarks.floor"]
        done = procs.run_bounded(
            argv, timeout=FLOOR_DEADLINE, cpus=self.cores.server, env=self.env, cwd=ROOT
        )
        try:
            result = Floor(**json.loads(done.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError, TypeError):
            self.note(f"floor failed in round {step.round + 1}: {done.stderr.strip()[-300:]}")
            return
        self.state.floors.append(result)
        say(
            f"    parse {result.parse_us:.2f} µs + send {result.send_us:.2f} µs = "
            f"{result.total_us:.2f} µs → {result.requests_per_s:,.0f} req/s"
        )

    def note(self, text: str) -> None:
        if text not in self.state.notes:
            self.state.notes.append(text)
        say("    note: " + text)

    def session(self, step: Step) -> None:
        assert step.server is not None and step.app is not None
        server, scenario = step.server, step.scenario
        key = (server.name, scenario.name)
        if key in self.state.failed:
            say("    skipped: failed to start in an earlier round")
            return
        port = procs.free_port()
        options = dataclasses.replace(self.options, processes=scenario.processes)
        argv = server.argv(step.app, port, options, scenario.tls)
        log_path = self.workdir / f"{server.name}-{scenario.name}-{step.round}.log"
        cpus = self.cores.server if scenario.processes == 1 else None
        with log_path.open("wb") as log:
            proc = procs.spawn(argv, cpus=cpus, env=self.env, cwd=ROOT, stdout=log, stderr=log)
        try:
            why = procs.wait_ready(proc, port, READY_DEADLINE)
            if why is not None:
                self.state.failed.add(key)
                self.note(
                    f"{server.name} skipped for {scenario.name}: {why}; command: "
                    f"`{shlex.join(argv)}`; last output: {procs.tail(log_path, 4)!r}"
                )
                return
            first = len(self.state.samples)
            self.drive(step, port, proc.pid)
            rss = procs.peak_rss_kib(proc.pid)
            if proc.poll() is not None:
                self.note(
                    f"{server.name} exited during {scenario.name} (status {proc.returncode}): "
                    f"{procs.tail(log_path, 4)!r}"
                )
        finally:
            procs.stop(proc)
        if rss:
            # Samples are recorded as each load ends (so an interrupted run keeps them) and get
            # the peak RSS once the whole session is over.
            samples = self.state.samples
            samples[first:] = [
                dataclasses.replace(s, rss_kib=rss[0], processes=rss[1]) for s in samples[first:]
            ]
            say(f"    peak RSS {rss[0] / 1024:.1f} MiB over {rss[1]} process(es)")

    def record(self, step: Step, load: str, session: int, run: Callable[[], Measurement]) -> None:
        """Run one timed load and record it with the CPU time the server's tree spent on it."""
        assert step.server is not None
        # Read right before the load tool starts and right after it ends: the server is idle
        # outside that window (the warm-up is over), so the difference is the load's cost.
        before = procs.cpu_seconds(session)
        m = run()
        after = procs.cpu_seconds(session)
        cpu = after - before if before is not None and after is not None else None
        _show(load, m, report.cpu_us(m, cpu))
        self.state.samples.append(
            report.Sample(
                step.round, step.server.name, step.scenario.name, load, m, None, None, cpu
            )
        )

    def drive(self, step: Step, port: int, session: int) -> None:
        scenario = step.scenario
        if scenario.kind == "http":
            runner = self.runner if scenario.processes == 1 else self.unpinned_runner
            if self.args.warmup > 0:
                warmup = Load("warmup", 10, False)
                runner.http(port, scenario.path, warmup, self.args.warmup, scenario.tls)
            for load in HTTP_LOADS:
                self.record(
                    step,
                    load.name,
                    session,
                    functools.partial(
                        runner.http, port, scenario.path, load, self.duration, scenario.tls
                    ),
                )
            return
        if scenario.websocket:
            self.drive_websocket(step, port, session)
            return
        mode: Literal["download", "upload"] = "upload"
        if scenario.kind == "download":
            mode = "download"
        warm = min(self.stream_bytes, 8 * MIB)
        warm_path = f"{scenario.path}?bytes={warm}" if mode == "download" else scenario.path
        timeout = float(self.args.stream_timeout)
        self.runner.stream(mode, port, warm_path, warm, timeout)
        self.record(
            step,
            report.STREAM_LOAD,
            session,
            functools.partial(
                self.runner.stream, mode, port, scenario.path, self.stream_bytes, timeout
            ),
        )

    def drive_websocket(self, step: Step, port: int, session: int) -> None:
        scenario = step.scenario
        if scenario.kind == "ws-echo":
            if self.args.warmup > 0:
                self.runner.ws_echo(
                    port, scenario.path, Load("warmup", 10, False), self.args.warmup
                )
            for load in WS_LOADS:
                self.record(
                    step,
                    load.name,
                    session,
                    functools.partial(
                        self.runner.ws_echo, port, scenario.path, load, self.duration
                    ),
                )
            return
        mode: Literal["download", "upload"] = (
            "download" if scenario.kind == "ws-download" else "upload"
        )
        timeout = float(self.args.stream_timeout)
        self.runner.ws_stream(mode, port, scenario.path, min(self.stream_bytes, 8 * MIB), timeout)
        self.record(
            step,
            report.STREAM_LOAD,
            session,
            functools.partial(
                self.runner.ws_stream, mode, port, scenario.path, self.stream_bytes, timeout
            ),
        )


def _certificate(directory: Path) -> tuple[Path, Path]:
    """One certificate for 127.0.0.1 (from a throw-away trustme CA) that every server serves;
    the load generator does not verify it."""
    import trustme

    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


def _show(load: str, m: Measurement, cpu_us: float | None) -> None:
    latency = f", p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms" if m.p99_ms is not None else ""
    cpu = f", CPU {cpu_us:,.1f} µs/{report.cpu_per(m.unit)}" if cpu_us is not None else ""
    errors = f", {m.errors} errors {m.error_detail}" if m.errors else ""
    extra = f" [{m.note}]" if m.note else ""
    say(f"    {load:<10} {m.value:>12,.1f} {m.unit}{latency}{cpu}{errors}{extra}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    return f"{minutes}m{secs:02d}s"


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    wrk = LoadRunner.wrk_path()
    if wrk:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(
                [wrk, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            found["wrk"] = text.split()[1] if len(text.split()) > 1 else "?"
    return found


def cpu_model() -> str:
    """The CPU's model name, for the machine line of a results file."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = [s for s in SCENARIOS if args.scenarios is None or s.name in args.scenarios]
    wanted = [
        s
        for s in SERVERS
        if (args.servers is None and not s.opt_in)
        or (args.servers is not None and s.name in args.servers)
        or s.baseline
    ]
    notes: list[str] = []
    if args.servers is not None and "wsgiref" not in args.servers:
        notes.append("wsgiref added: every ratio is to wsgiref in the same round")
    servers = []
    for server in wanted:
        why = server.unavailable()
        if why:
            notes.append(f"{server.name} skipped: {why}")
        else:
            servers.append(server)
    tool = args.load
    if tool in ("auto", "wrk") and LoadRunner.wrk_path() is None:
        notes.append("wrk not found (apt-get install wrk): request loads use the built-in client")
        tool = "builtin"
    tool = "wrk" if tool == "auto" else tool
    harness = Harness(args, servers, tool, tls=any(s.tls for s in scenarios))
    harness.state.notes.extend(notes)
    for text in notes:
        say("note: " + text)
    steps = harness.plan(scenarios)
    cores = harness.cores
    pinning = (
        f"server on CPU {sorted(cores.server)}, load generator on CPU {sorted(cores.load)}"
        if cores.server is not None and cores.load is not None
        else "none (fewer than two CPUs)"
    )
    say(f"{len(steps)} steps, about {_clock(sum(s.estimate for s in steps))}; {pinning}")
    if args.list:
        for step in steps:
            name = step.server.name if step.server else "(in-process)"
            target = step.app.target if step.app else ""
            say(f"  round {step.round + 1} {step.scenario.name:<11} {name:<20} {target}")
        return 0
    # SIGINT explicitly too: a shell starting the harness in the background sets it to ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    try:
        harness.execute(steps)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping every process started, writing partial results")
    finally:
        procs.stop_all()
        # Server logs only matter while a failure is reported; their tails are in the notes.
        shutil.rmtree(harness.workdir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])]),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pinning": pinning,
        "load_tool": tool,
        "rounds": args.rounds,
        "duration": args.duration,
        "warmup": args.warmup,
        "threads": args.threads,
        "stream_mib": args.stream_mb,
        "versions": _versions(),
        "interrupted": interrupted,
    }
    write(args.out, harness, meta, [s.name for s in servers])
    return 130 if interrupted else 0


def write(out: Path, harness: Harness, meta: dict[str, object], order: list[str]) -> None:
    state = harness.state
    rows = report.summarise(state.samples)
    floor = median_floor(state.floors) if state.floors else None
    loads = [ld.name for ld in (*HTTP_LOADS, *WS_LOADS)] + [report.STREAM_LOAD]
    out.mkdir(parents=True, exist_ok=True)
    why = report.chart(rows, out / "latest.png", order, loads)
    if why:
        state.notes.append(why)
    text = report.markdown(rows, floor, dict(meta), state.notes, order, loads)
    (out / "latest.md").write_text(text)
    report.write_json(
        out / "latest.json", dict(meta), state.samples, rows, floor, state.floors, state.notes
    )
    print(text)
    say(f"wrote {out / 'latest.md'}, {out / 'latest.json'}" + ("" if why else ", latest.png"))
