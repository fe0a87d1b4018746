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
    metrics  the app's counters (every worker's), then /metrics, checked against the ledger
    sigterm  requests put in flight, SIGTERM, each must finish right and the server exit 0

Every phase runs on each server at once: the plain one and, unless --no-tls, the TLS one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.procs import stop
from benchmarks.soak.inflight import sigterm
from benchmarks.soak.sampler import Sample, Sampler
from benchmarks.soak.target import ROOT, SetupError, Target, certificates, counters, scrape, start
from benchmarks.soak.traffic import SWEEP_SLACK, Tally, Traffic, kinds
from benchmarks.soak.verdicts import (
    Verdict,
    at_baseline,
    back_to_baseline,
    memory_trend,
    metrics_agree,
    no_unexpected_errors,
    no_wrong_answers,
    streams_closed,
    websockets_closed,
)

__all__ = ["ROOT", "Options", "SetupError", "soak"]

RESERVE = 22.0  # seconds of T kept for the quiet, settle and sigterm phases


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
    h2: bool = True
    tls: bool = True
    ws: bool = True
    workers: int = 0  # 0: one process; N: a supervisor and N worker processes

    def phases(self) -> tuple[float, float]:
        """Seconds of warm-up and of load: at least 3 s of load however short the soak."""
        total = self.minutes * 60
        warm = min(30.0, max(1.0, total / 10))
        return warm, max(3.0, total - warm - RESERVE, total / 2)

    def flags(self) -> list[str]:
        return [
            "--threads", str(self.threads),
            "--timeout-keep-alive", f"{self.keep_alive:g}",
            "--timeout-request-head", f"{self.head_timeout:g}",
            "--http2", "on" if self.h2 else "off",
            *self.server_args,
        ]  # fmt: skip


async def _quiet(target: Target, keep_alive: float) -> Sample:
    """Once idle connections are closed and the descriptor counts hold still: the baseline."""
    sampler = target.sampler
    assert sampler is not None
    await asyncio.sleep(keep_alive + SWEEP_SLACK)
    last: Sample | None = None
    for _ in range(20):
        now = sampler.take("quiet")
        if now is None:
            raise SetupError(f"the {target.name} server exited during the soak")
        if last is not None and now.by_pid() == last.by_pid():
            return now
        last = now
        await asyncio.sleep(0.5)
    assert last is not None
    return last


async def _settle(target: Target, baseline: Sample, bound: float) -> tuple[Sample | None, float]:
    """Poll until descriptors and threads are back at the baseline, or `bound` seconds."""
    sampler = target.sampler
    assert sampler is not None
    started = time.monotonic()
    while True:
        now = sampler.take("settle")
        elapsed = time.monotonic() - started
        if now is None or at_baseline(baseline, now) or elapsed > bound:
            return now, elapsed
        await asyncio.sleep(0.5)


def _labelled(verdict: Verdict, target: Target) -> Verdict:
    return dataclasses.replace(verdict, name=verdict.name + target.label)


async def _each(targets: list[Target], step: Any) -> list[Any]:
    return list(await asyncio.gather(*(step(target) for target in targets)))


async def _soak(options: Options, targets: list[Target]) -> dict[str, Any]:
    warm, load = options.phases()
    started = time.monotonic()
    interval = 1.0 if load >= 30 else 0.25
    tally = Tally(started=started)
    traffics: list[Traffic] = []
    for number, target in enumerate(targets):
        target.sampler = Sampler(target.proc.pid, started, interval, tree=bool(options.workers))
        workers = kinds(target.endpoint.tls, options.h2, options.ws)
        traffics.append(
            Traffic(
                target.endpoint, target.ledger, workers, options.keep_alive,
                options.head_timeout, tally, options.seed + number,
            )
        )  # fmt: skip
    marks: dict[str, float] = {}

    def phase(name: str) -> None:
        for target in targets:
            assert target.sampler is not None
            target.sampler.phase = name
        marks[name] = round(time.monotonic() - started, 2)

    async def run(seconds: float) -> None:
        await asyncio.gather(*(traffic.run(seconds) for traffic in traffics))

    for target in targets:
        assert target.sampler is not None
        target.sampler.start()
    phase("warm-up")
    await run(warm)
    phase("quiet")
    baselines = await _each(targets, lambda t: _quiet(t, options.keep_alive))
    phase("load")
    firsts = [len(t.sampler.samples) for t in targets if t.sampler is not None]
    # No new operation starts after `load` seconds; those in progress then finish ("drain").
    drain = asyncio.get_running_loop().call_later(load, phase, "drain")
    await run(load)
    drain.cancel()
    seconds = range(int(marks["load"]), int(marks["load"] + load))
    served = sum(tally.per_second[second] for second in seconds)
    phase("settle")
    bound = options.keep_alive + options.head_timeout + 10
    settled = [
        await _settle(target, baseline, bound)
        for target, baseline in zip(targets, baselines, strict=True)
    ]
    phase("metrics")
    app = await _each(targets, counters)
    scraped = await _each(targets, scrape)
    phase("sigterm")
    stopped = await _each(targets, lambda t: sigterm(t, options.h2, options.ws))
    verdicts = [
        no_wrong_answers(
            dict(tally.done),
            dict(tally.wrong),
            tally.samples,
            [name for traffic in traffics for name in traffic.names()],
        )
    ]
    figures: dict[str, Any] = {}
    for index, target in enumerate(targets):
        sampler = target.sampler
        assert sampler is not None
        await sampler.stop()
        load_samples = [s for s in sampler.samples[firsts[index] :] if s.phase == "load"]
        after, settle_seconds = settled[index]
        mine = [
            streams_closed(app[index]),
            *([websockets_closed(app[index])] if options.ws else []),
            back_to_baseline(baselines[index], after, settle_seconds),
            memory_trend(load_samples, options.max_slope, options.max_step),
            metrics_agree(target.ledger, scraped[index][0], options.workers, app[index]),
            stopped[index],
            no_unexpected_errors(target.log.read_text(errors="replace")),
        ]
        verdicts += [_labelled(verdict, target) for verdict in mine]
        figures[target.name] = {
            "baseline": baselines[index].to_json(),
            "peak_fds": max(s.fds for s in sampler.samples),
            "peak_threads": max(s.threads for s in sampler.samples),
            "peak_rss_mib": round(max(s.rss_kib for s in sampler.samples) / 1024, 1),
            "server_cpu_seconds": sampler.samples[-1].cpu_seconds if sampler.samples else None,
            "app_counters": app[index],
            "ledger": target.ledger.to_json(),
            "metrics": scraped[index][1],
        }
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "phases": marks,
        "figures": {
            "warm_up_seconds": warm,
            "load_seconds": round(load, 1),
            "answers_during_load": served,
            "answers_per_second_during_load": round(served / load, 1) if load else 0,
            "operations": dict(tally.done),
            "retried": dict(tally.retried),
            **figures,
        },
        "verdicts": [verdict.to_json() for verdict in verdicts],
        "samples": {t.name: [s.to_json() for s in t.sampler.samples] for t in targets if t.sampler},
        "per_second": {str(k): v for k, v in sorted(tally.per_second.items())},
    }


def _start(options: Options, scratch: Path) -> list[Target]:
    flags = options.flags()
    targets = [start("plain", options.out / "soak-server.log", flags, options.workers)]
    if options.tls:
        try:
            pem, h1, h2 = certificates(scratch)
            tls_flags = ["--ssl-certfile", str(pem), *flags]
            log = options.out / "soak-server-tls.log"
            targets.append(start("tls", log, tls_flags, options.workers, (h1, h2)))
        except BaseException:
            stop(targets[0].proc)
            raise
    return targets


def soak(options: Options) -> int:
    """Run the soak, write soak.json (and soak.png), print the verdicts; the exit status."""
    options.out.mkdir(parents=True, exist_ok=True)
    warm, load = options.phases()
    parts = (
        ["HTTP/1.1"] + (["HTTP/2"] if options.h2 else []) + (["WebSocket"] if options.ws else [])
    )
    where = "a plain and a TLS server" if options.tls else "one plain server"
    workers = f", {options.workers} worker processes each" if options.workers else ""
    print(
        f"soak: {warm:.0f} s warm-up, {load:.0f} s load; {', '.join(parts)} on {where}{workers}; "
        f"server logs in {options.out}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        targets = _start(options, Path(scratch))
        try:
            report = asyncio.run(_soak(options, targets))
        finally:
            for target in targets:
                stop(target.proc)
    (options.out / "soak.json").write_text(json.dumps(report, indent=1))
    if options.plot:
        from benchmarks.soak.plot import plot

        series: dict[str, list[Sample]] = {
            str(name): [Sample(**s) for s in samples] for name, samples in report["samples"].items()
        }
        per_second = {int(k): v for k, v in report["per_second"].items()}
        workers = f", --workers {options.workers}" if options.workers else ""
        title = f"dualgate soak, {report['figures']['load_seconds']:.0f} s of load{workers}"
        plot(series, per_second, options.out / "soak.png", title)
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
