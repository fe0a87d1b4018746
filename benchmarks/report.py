"""Turning samples into medians and ratios, and writing them as markdown, PNG and JSON.

Ratios: in every round each server's figure is divided by wsgiref's figure from the same round
and scenario and load (so slow drift of a noisy machine cancels); the reported ratio is the
median of those per-round ratios. The absolute figures are medians over rounds. Above 1 is better
for req/s, msg/s and MiB/s; below 1 is better for latency, memory and CPU time. WebSocket scenarios
have their own baseline (a scenario's `baseline`), since wsgiref has no WebSockets.

CPU time is the server's whole process tree (utime + stime over every process of its session,
see `procs.cpu_seconds`) over one timed run, divided by the work that run completed: µs per
request for req/s loads, per echoed message for msg/s loads, per MiB for transfers.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.floor import Floor
from benchmarks.measurement import Measurement
from benchmarks.scenarios import BY_NAME as SCENARIOS

BASELINE = "wsgiref"
STREAM_LOAD = "stream"


@dataclass(frozen=True)
class Sample:
    round: int
    server: str
    scenario: str
    load: str  # a Load.name, or STREAM_LOAD
    measurement: Measurement
    rss_kib: int | None  # peak RSS of the server's process tree, summed (see procs.peak_rss_kib)
    processes: int | None
    cpu_s: float | None = None  # CPU seconds of the server's process tree over the timed run


@dataclass(frozen=True)
class Row:
    scenario: str
    load: str
    server: str
    unit: str
    value: float
    value_ratio: float | None
    p50_ms: float | None
    p50_ratio: float | None
    p99_ms: float | None
    p99_ratio: float | None
    seconds: float | None  # median wall time of one run (the transfer time, for streams)
    errors: int  # summed over rounds
    requests: int  # summed over rounds
    error_detail: dict[str, int]
    rss_mib: float | None
    rss_ratio: float | None
    processes: int | None
    rounds: int
    notes: tuple[str, ...]
    cpu_us: float | None = None  # median over rounds of the server's CPU µs per `cpu_per`
    cpu_ratio: float | None = None
    cpu_per: str = "req"  # "req", "msg" or "MiB"


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(
    mine: dict[int, Sample], base: dict[int, Sample], get: Callable[[Sample], float | None]
) -> float | None:
    ratios = []
    for rnd, sample in mine.items():
        if rnd in base:
            a, b = get(sample), get(base[rnd])
            if a is not None and b:
                ratios.append(a / b)
    return statistics.median(ratios) if ratios else None


def _value(s: Sample) -> float | None:
    return s.measurement.value if s.measurement.requests else None


def _rss(s: Sample) -> float | None:
    return s.rss_kib / 1024 if s.rss_kib is not None else None


def cpu_per(unit: str) -> str:
    """What CPU time is divided by for a figure in `unit`: the unit of work it counts."""
    return {"req/s": "req", "msg/s": "msg"}.get(unit, "MiB")


def cpu_us(m: Measurement, cpu_s: float | None) -> float | None:
    """The server's CPU µs per request, message or MiB of one run; None when nothing completed.

    Failed requests are not in the count, so a run with errors shows the cost of the ones that
    succeeded plus whatever the failures cost: its errors column says to read it with care.
    """
    if cpu_s is None or not m.requests:
        return None
    done = m.value * m.seconds if cpu_per(m.unit) == "MiB" else float(m.requests)
    return cpu_s * 1e6 / done if done > 0 else None


def _cpu(s: Sample) -> float | None:
    return cpu_us(s.measurement, s.cpu_s)


def summarise(samples: Sequence[Sample]) -> list[Row]:
    grouped: dict[tuple[str, str, str], dict[int, Sample]] = defaultdict(dict)
    for s in samples:
        grouped[(s.scenario, s.load, s.server)][s.round] = s
    rows = []
    for (scenario, load, server), by_round in grouped.items():
        base = grouped.get((scenario, load, SCENARIOS[scenario].baseline), {})
        ms = [s.measurement for s in by_round.values()]
        detail: dict[str, int] = defaultdict(int)
        for m in ms:
            for name, count in m.error_detail.items():
                detail[name] += count
        rows.append(
            Row(
                scenario=scenario,
                load=load,
                server=server,
                unit=ms[0].unit,
                value=_median(_value(s) for s in by_round.values()) or 0.0,
                value_ratio=_ratio(by_round, base, _value),
                p50_ms=_median(m.p50_ms for m in ms),
                p50_ratio=_ratio(by_round, base, lambda s: s.measurement.p50_ms),
                p99_ms=_median(m.p99_ms for m in ms),
                p99_ratio=_ratio(by_round, base, lambda s: s.measurement.p99_ms),
                seconds=_median(m.seconds for m in ms if m.requests),
                errors=sum(m.errors for m in ms),
                requests=sum(m.requests for m in ms),
                error_detail=dict(detail),
                rss_mib=_median(_rss(s) for s in by_round.values()),
                rss_ratio=_ratio(by_round, base, _rss),
                processes=max((s.processes or 0 for s in by_round.values()), default=None),
                rounds=len(by_round),
                notes=tuple(sorted({m.note for m in ms if m.note})),
                cpu_us=_median(_cpu(s) for s in by_round.values()),
                cpu_ratio=_ratio(by_round, base, _cpu),
                cpu_per=cpu_per(ms[0].unit),
            )
        )
    return rows


def _num(value: float | None, ratio: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return f"{text} ({ratio:.2f}x)" if ratio is not None else text


def _errors(row: Row) -> str:
    if not row.errors:
        return "0"
    detail = ", ".join(f"{k} {v:,}" for k, v in sorted(row.error_detail.items()))
    return f"{row.errors:,} ({detail})"


def markdown(
    rows: Sequence[Row],
    floor: Floor | None,
    meta: dict[str, Any],
    notes: Sequence[str],
    server_order: Sequence[str],
    load_order: Sequence[str],
) -> str:
    out = [
        "# dualgate benchmark results",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['nproc']} CPUs ({meta['cpu']}), Linux {meta['kernel']}, "
        f"Python {meta['python']}",
        f"- pinning: {meta['pinning']}",
        f"- load tool: {meta['load_tool']}; {meta['rounds']} round(s) of {meta['duration']} s per "
        f"load, after {meta['warmup']} s of warm-up per server and scenario",
        f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(meta['versions'].items()))}",
        "",
        "Each cell is the median over rounds; `(n x)` is the median over rounds of the ratio to "
        "wsgiref in the same round (req/s and MiB/s: higher is better; latency and RSS: lower "
        "is better). WebSocket scenarios are compared with uvicorn-wsproto instead, as "
        "wsgiref has no WebSockets. Errors are summed over rounds. Peak RSS is VmHWM summed "
        "over the server's process tree. CPU is the server's process tree's user + system time "
        "over the timed run divided by the requests (messages; MiB for transfers) it completed: "
        "lower is better, and unlike req/s it does not drop when other work takes the core.",
    ]
    if meta.get("interrupted"):
        out += ["", "**Interrupted: partial results.**"]
    if floor is not None:
        out += [
            "",
            "## floor (h11 only, in-process, one core)",
            "",
            "| parse µs | send µs | total µs | floor req/s |",
            "|---:|---:|---:|---:|",
            f"| {floor.parse_us:.2f} | {floor.send_us:.2f} | {floor.total_us:.2f} "
            f"| {floor.requests_per_s:,.0f} |",
        ]
        for scenario in ("hello", "asgi-hello"):
            best: dict[str, Row] = {}
            for r in rows:
                if r.scenario != scenario or not r.load.startswith("ka-"):
                    continue
                if r.server not in best or r.value > best[r.server].value:
                    best[r.server] = r
            if best:
                out += [
                    "",
                    f"Best keep-alive `{scenario}` req/s as a share of the floor, and the "
                    "server's CPU µs per request at that load (the floor's total µs is the "
                    "least an h11-based server can spend):",
                    "",
                    "| server | load | req/s | % of floor | CPU µs/req |",
                    "|---|---|---:|---:|---:|",
                ]
                for server in _ordered(best, server_order):
                    r = best[server]
                    pct = 100 * r.value / floor.requests_per_s
                    out.append(
                        f"| {server} | {r.load} | {r.value:,.0f} | {pct:.0f}% "
                        f"| {_num(r.cpu_us, None, 1)} |"
                    )
    for scenario in SCENARIOS:
        mine = [r for r in rows if r.scenario == scenario]
        if not mine:
            continue
        unit = mine[0].unit
        about = SCENARIOS[scenario].about
        out += ["", f"## {scenario}", "", about[0].upper() + about[1:] + "."]
        baseline = SCENARIOS[scenario].baseline
        if baseline != BASELINE:
            out += ["", f"Ratios here are to {baseline} in the same round."]
        out.append("")
        cpu = f"CPU µs/{cpu_per(unit)}"
        if unit in ("req/s", "msg/s"):
            out.append(
                f"| server | load | {unit} | {cpu} | p50 ms | p99 ms | errors | peak RSS MiB |"
            )
        else:
            out.append(f"| server | load | {unit} | {cpu} | seconds | errors | peak RSS MiB |")
        latency = unit in ("req/s", "msg/s")
        out.append("|---|---|" + "---:|" * (4 if latency else 3) + "---|---:|")
        order = {name: i for i, name in enumerate(server_order)}
        loads = {name: i for i, name in enumerate(load_order)}
        mine.sort(key=lambda r: (loads.get(r.load, 99), order.get(r.server, 99)))
        for r in mine:
            cpu_cell = _num(r.cpu_us, r.cpu_ratio, 1)
            if latency:
                middle = (
                    f"{_num(r.value, r.value_ratio)} | {cpu_cell} "
                    f"| {_num(r.p50_ms, r.p50_ratio, 2)} | {_num(r.p99_ms, r.p99_ratio, 2)}"
                )
            else:
                middle = (
                    f"{_num(r.value, r.value_ratio, 1)} | {cpu_cell} | {_num(r.seconds, None, 2)}"
                )
            out.append(
                f"| {r.server} | {r.load} | {middle} | {_errors(r)} "
                f"| {_num(r.rss_mib, r.rss_ratio, 1)} |"
            )
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _ordered(names: Iterable[str], order: Sequence[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, 99), n))


def chart(
    rows: Sequence[Row], path: Path, server_order: Sequence[str], load_order: Sequence[str]
) -> str | None:
    """Grouped bars per scenario; returns why no chart was drawn, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    scenarios = [s for s in SCENARIOS if any(r.scenario == s for r in rows)]
    if not scenarios:
        return "nothing to chart"
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(12, 3.4 * len(scenarios)), squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        mine = [r for r in rows if r.scenario == scenario]
        servers = _ordered({r.server for r in mine}, server_order)
        loads = _ordered({r.load for r in mine}, load_order)
        width = 0.8 / len(servers)
        value = {(r.server, r.load): r.value for r in mine}
        for i, server in enumerate(servers):
            xs = [j + i * width for j in range(len(loads))]
            ax.bar(xs, [value.get((server, ld), 0.0) for ld in loads], width, label=server)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(loads))], loads)
        ax.set_title(scenario)
        ax.set_ylabel(mine[0].unit)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_json(
    path: Path,
    meta: dict[str, Any],
    samples: Sequence[Sample],
    rows: Sequence[Row],
    floor: Floor | None,
    floors: Sequence[Floor],
    notes: Sequence[str],
) -> None:
    data = {
        "meta": meta,
        "ratio_method": __doc__,
        "notes": list(notes),
        "floor": asdict(floor) if floor else None,
        "floor_rounds": [asdict(f) for f in floors],
        "summary": [asdict(r) for r in rows],
        "samples": [{**asdict(s), "measurement": s.measurement.to_json()} for s in samples],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
