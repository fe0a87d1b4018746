"""The soak's chart: RSS, open descriptors and answers per second over time, one PNG; a line
for each server (plain, TLS), its processes added up.

matplotlib is in the bench extra only, so it is imported when a chart is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.soak.sampler import Sample

__all__ = ["plot"]

PHASE_COLOURS = {
    "warm-up": "#f0f0f0",
    "load": "#e6f0ff",
    "drain": "#f4f8ff",
    "settle": "#f0fff0",
    "sigterm": "#fff0e6",
}


COLOURS = {"plain": ("#1f77b4", "#d62728"), "tls": ("#9467bd", "#ff7f0e")}


def plot(
    series: Mapping[str, Sequence[Sample]], per_second: dict[int, int], path: Path, title: str
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the chart needs matplotlib: pip install '.[bench]'") from exc
    figure, (rss, fds, rate) = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True)
    for name, samples in series.items():
        times = [s.seconds for s in samples]
        memory, descriptors = COLOURS.get(name, ("#1f77b4", "#d62728"))
        rss.plot(times, [s.rss_kib / 1024 for s in samples], color=memory, label=name)
        fds.plot(times, [s.fds for s in samples], color=descriptors, label=f"{name} descriptors")
        fds.plot(times, [s.threads for s in samples], color="#7f7f7f", linestyle=":",
                 label=f"{name} threads")  # fmt: skip
    rss.set_ylabel("RSS (MiB)")
    rss.legend(loc="upper left", fontsize="small")
    fds.set_ylabel("count")
    fds.legend(loc="upper right", fontsize="x-small")
    samples = next(iter(series.values()))
    seconds = sorted(per_second)
    rate.plot(seconds, [per_second[s] for s in seconds], color="#2ca02c", drawstyle="steps-post")
    rate.set_ylabel("answers/s")
    rate.set_xlabel("seconds")
    for axes in (rss, fds, rate):
        _shade_phases(axes, samples)
        axes.grid(alpha=0.3)
    rss.set_title(title, fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _shade_phases(axes: object, samples: Sequence[Sample]) -> None:
    start = 0
    for index in range(1, len(samples) + 1):
        if index == len(samples) or samples[index].phase != samples[start].phase:
            colour = PHASE_COLOURS.get(samples[start].phase)
            if colour is not None:
                end = samples[min(index, len(samples) - 1)].seconds
                axes.axvspan(samples[start].seconds, end, color=colour, zorder=0)  # type: ignore[attr-defined]
            start = index
