"""The soak, phase by phase: start the server, warm up, baseline, load, settle, SIGTERM.

Phases (times for `--minutes M`, T = 60 M seconds):
    warm-up  10% of T (3 to 30 s) of the full traffic mix, so the allocator and the pools reach
             their working size before anything is measured (then its last operations end)
    quiet    until idle connections are closed and the descriptor count holds still: the
             baseline of descriptors and threads
    load     the rest of T but RESERVE seconds (at least 10 s): the traffic mix
    drain    the operations in progress when the load time is up finish (bounded: OP_TIMEOUT)
    settle   until descriptors and threads are back at the baseline (bounded), then the app's
             stream counters
    sigterm  requests put in flight, SIGTERM, each must finish right and the server exit 0
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.apps.soak import blocks
from benchmarks.procs import spawn, stop
from benchmarks.soak.sampler import Sample, Sampler, sample
from benchmarks.soak.traffic import SWEEP_SLACK, WORKERS, Tally, Traffic
from benchmarks.soak.verdicts import (
    Verdict,
    back_to_baseline,
    graceful_stop,
    memory_trend,
    no_unexpected_errors,
    no_wrong_answers,
    streams_closed,
)
from benchmarks.soak.wire import Conn

__all__ = ["Options", "soak"]

ROOT = Path(__file__).resolve().parent.parent.parent
RESERVE = 22.0  # seconds of T kept for the quiet, settle and sigterm phases
START_TIMEOUT = 20.0
GRACEFUL = 15.0  # --timeout-graceful-shutdown for the soak's server
PORT_LINE = re.compile(r"Serving .* on http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Options:
    minutes: float
    out: Path
    plot: bool
    seed: int
    keep_alive: float
    head_timeout: float
    threads: int
    max_slope: float
    max_step: float
    server_args: tuple[str, ...]

    def phases(self) -> tuple[float, float]:
        """Seconds of warm-up and of load."""
        total = self.minutes * 60
        warm = min(30.0, max(3.0, total / 10))
        return warm, max(10.0, total - warm - RESERVE)


class SetupError(Exception):
    """The server could not be started."""


def _server(options: Options, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    argv = [
        sys.executable, "-m", "dualgate", "serve",
        "--mount", "/asgi=benchmarks.apps.soak:asgi_app",
        "--mount", "/=benchmarks.apps.soak:application",
        "--app-dir", str(ROOT), "--host", "127.0.0.1", "--port", "0", "--no-access-log",
        "--threads", str(options.threads),
        "--timeout-keep-alive", f"{options.keep_alive:g}",
        "--timeout-request-head", f"{options.head_timeout:g}",
        "--timeout-graceful-shutdown", f"{GRACEFUL:g}",
        *options.server_args,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with log.open("wb") as sink:
        proc = spawn(argv, cpus=None, env=env, cwd=ROOT, stdout=sink)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = PORT_LINE.search(log.read_text(errors="replace"))
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise SetupError(
        f"the server did not start; its log:\n{log.read_text(errors='replace')[-2000:]}"
    )


async def _quiet(sampler: Sampler, keep_alive: float) -> Sample:
    """Once idle connections are closed and the descriptor count holds still: the baseline."""
    await asyncio.sleep(keep_alive + SWEEP_SLACK)
    last: Sample | None = None
    for _ in range(20):
        now = sample(sampler.pid, time.monotonic() - sampler.started, "quiet")
        if now is None:
            raise SetupError("the server exited during the soak")
        if last is not None and now.fds == last.fds and now.threads == last.threads:
            return now
        last = now
        await asyncio.sleep(0.5)
    assert last is not None
    return last


async def _settle(sampler: Sampler, baseline: Sample, bound: float) -> tuple[Sample | None, float]:
    """Poll until descriptors and threads are back at the baseline, or `bound` seconds."""
    started = time.monotonic()
    now: Sample | None = None
    while True:
        now = sample(sampler.pid, time.monotonic() - sampler.started, "settle")
        elapsed = time.monotonic() - started
        if now is None or (now.fds <= baseline.fds and now.threads <= baseline.threads):
            return now, elapsed
        if elapsed > bound:
            return now, elapsed
        await asyncio.sleep(0.5)


async def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = await Conn.open(port)
    try:
        await conn.send(
            b"GET %s HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n" % path.encode()
        )
        head, body = await conn.response()
    finally:
        conn.close()
    return head.status, body


async def _counters(port: int) -> dict[str, int]:
    """The app's counters, once two readings a moment apart agree (closes may still be landing)."""
    last: dict[str, int] | None = None
    for _ in range(10):
        status, body = await _get(port, "/counters")
        if status != 200:
            raise SetupError(f"/counters answered {status}")
        now: dict[str, int] = json.loads(body)
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.3)
    assert last is not None
    return last


async def _in_flight(port: int, name: str, signalled: asyncio.Event) -> str:
    """One request that is in flight when SIGTERM arrives; "ok" if it finishes right."""
    rng = random.Random(name)
    try:
        async with asyncio.timeout(GRACEFUL + 10):
            if name.startswith("slow"):
                path = ("/asgi" if "asgi" in name else "") + "/slow?seconds=2"
                status, body = await _get(port, path)
                return "ok" if (status, body) == (200, b"slept 2") else f"{status} {body[:40]!r}"
            if name == "upload-trickling":
                data = rng.randbytes(256 * 1024)
                conn = await Conn.open(port)
                try:
                    await conn.send(
                        b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n"
                        % len(data)
                    )
                    await conn.send(data[:65536])
                    await signalled.wait()
                    for start in range(65536, len(data), 32768):  # the rest after SIGTERM
                        await asyncio.sleep(0.2)
                        await conn.send(data[start : start + 32768])
                    head, body = await conn.response()
                finally:
                    conn.close()
                expected = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                return (
                    "ok"
                    if head.status == 200 and json.loads(body) == expected
                    else f"{head.status} {body[:60]!r}"
                )
            # download-slow: 1 MiB through an 8 KiB receive buffer, 4 KiB every 10 ms.
            size, seed = 1 << 20, 11
            conn = await Conn.open(port, receive_buffer=8192)
            digest, got = hashlib.sha256(), 0
            try:
                await conn.send(
                    b"GET /download?size=%d&seed=%d HTTP/1.1\r\nHost: soak\r\n\r\n" % (size, seed)
                )
                head = await conn.head()
                while got < size and (data := await conn.read_some(4096)):
                    digest.update(data)
                    got += len(data)
                    await asyncio.sleep(0.01)
            finally:
                conn.close()
            want = hashlib.sha256(b"".join(blocks(size, seed))).hexdigest()
            return (
                "ok"
                if head.status == 200 and got == size and digest.hexdigest() == want
                else f"{head.status}, {got} bytes"
            )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:160]


async def _sigterm(proc: subprocess.Popen[bytes], port: int) -> Verdict:
    names = ["slow-wsgi-1", "slow-wsgi-2", "slow-wsgi-3", "slow-asgi-1", "slow-asgi-2",
             "upload-trickling", "download-slow"]  # fmt: skip
    signalled = asyncio.Event()
    tasks = {name: asyncio.create_task(_in_flight(port, name, signalled)) for name in names}
    await asyncio.sleep(0.8)  # every request sent and started (the slow ones take 2 s)
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    signalled.set()
    await asyncio.sleep(0.3)
    try:
        conn = await Conn.open(port)
    except OSError:
        refused = True
    else:
        conn.close()
        refused = False
    results = {name: await task for name, task in tasks.items()}
    code: int | None = None
    deadline = time.monotonic() + GRACEFUL + 10
    while time.monotonic() < deadline and (code := proc.poll()) is None:
        await asyncio.sleep(0.1)
    return graceful_stop(results, code, refused, time.monotonic() - started)


async def _soak(
    options: Options, proc: subprocess.Popen[bytes], port: int, log: Path
) -> dict[str, Any]:
    warm, load = options.phases()
    started = time.monotonic()
    sampler = Sampler(proc.pid, started)
    tally = Tally(started=started)
    traffic = Traffic(port, options.keep_alive, options.head_timeout, tally, options.seed)
    marks: dict[str, float] = {}

    def phase(name: str) -> None:
        sampler.phase = name
        marks[name] = round(time.monotonic() - started, 2)

    sampler.start()
    phase("warm-up")
    await traffic.run(warm)
    phase("quiet")
    baseline = await _quiet(sampler, options.keep_alive)
    phase("load")
    first = len(sampler.samples)
    # No new operation starts after `load` seconds; those in progress then finish ("drain").
    drain = asyncio.get_running_loop().call_later(load, phase, "drain")
    await traffic.run(load)
    drain.cancel()
    load_samples = [s for s in sampler.samples[first:] if s.phase == "load"]
    seconds = range(int(marks["load"]), int(marks["load"] + load))
    served = sum(tally.per_second[second] for second in seconds)
    phase("settle")
    bound = options.keep_alive + options.head_timeout + 10
    after, settled = await _settle(sampler, baseline, bound)
    counters = await _counters(port)
    phase("sigterm")
    stopped = await _sigterm(proc, port)
    await sampler.stop()
    verdicts = [
        no_wrong_answers(dict(tally.done), dict(tally.wrong), tally.samples, list(WORKERS)),
        streams_closed(counters),
        back_to_baseline(baseline, after, settled),
        memory_trend(load_samples, options.max_slope, options.max_step),
        stopped,
        no_unexpected_errors(log.read_text(errors="replace")),
    ]
    load_seconds = load
    figures = {
        "warm_up_seconds": warm,
        "load_seconds": round(load_seconds, 1),
        "answers_during_load": served,
        "answers_per_second_during_load": round(served / load_seconds, 1) if load_seconds else 0,
        "operations": dict(tally.done),
        "retried_on_a_closing_keep_alive_connection": dict(tally.retried),
        "baseline": baseline.to_json(),
        "peak_fds": max(s.fds for s in sampler.samples),
        "peak_threads": max(s.threads for s in sampler.samples),
        "peak_rss_mib": round(max(s.rss_kib for s in sampler.samples) / 1024, 1),
        "server_cpu_seconds": sampler.samples[-1].cpu_seconds if sampler.samples else None,
    }
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "phases": marks,
        "figures": figures,
        "verdicts": [verdict.to_json() for verdict in verdicts],
        "samples": [s.to_json() for s in sampler.samples],
        "per_second": {str(k): v for k, v in sorted(tally.per_second.items())},
    }


def soak(options: Options) -> int:
    """Run the soak, write soak.json (and soak.png), print the verdicts; the exit status."""
    options.out.mkdir(parents=True, exist_ok=True)
    log = options.out / "soak-server.log"
    warm, load = options.phases()
    print(f"soak: {warm:.0f} s warm-up, {load:.0f} s load; server log {log}", flush=True)
    proc, port = _server(options, log)
    try:
        report = asyncio.run(_soak(options, proc, port, log))
    finally:
        stop(proc)
    (options.out / "soak.json").write_text(json.dumps(report, indent=1))
    if options.plot:
        from benchmarks.soak.plot import plot

        samples = [Sample(**s) for s in report["samples"]]
        per_second = {int(k): v for k, v in report["per_second"].items()}
        title = f"dualgate soak, {report['figures']['load_seconds']:.0f} s of load"
        plot(samples, per_second, options.out / "soak.png", title)
    passed = all(v["passed"] for v in report["verdicts"])
    figures = report["figures"]
    print(
        f"{figures['answers_during_load']} answers in {figures['load_seconds']} s of load "
        f"({figures['answers_per_second_during_load']}/s); operations {figures['operations']}"
    )
    for verdict in report["verdicts"]:
        print(f"{'PASS' if verdict['passed'] else 'FAIL'}  {verdict['name']}: {verdict['detail']}")
    print(f"{'all checks passed' if passed else 'SOME CHECKS FAILED'}; report in {options.out}")
    return 0 if passed else 1
