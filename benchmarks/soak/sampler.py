"""Samples of a server's process tree from /proc, once a second: RSS, descriptors, threads, CPU.

Under `--workers` the server is a supervisor and its worker processes: a sample adds the
figures of every process of the tree up (RSS summed counts pages the processes share once per
process, which moves a trend by nothing), and keeps each process's own descriptors and threads
(`per_process`), which the baseline check compares process by process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sample", "Sampler", "descendants", "sample"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the soak started
    phase: str
    rss_kib: int
    fds: int
    threads: int
    cpu_seconds: float  # user + system, since the process started
    # (pid, rss KiB, descriptors, threads) of each process of the tree, the server's first.
    per_process: tuple[tuple[int, int, int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def by_pid(self) -> dict[int, tuple[int, int]]:
        """{pid: (descriptors, threads)}; the whole tree as one process for an old sample."""
        if not self.per_process:
            return {0: (self.fds, self.threads)}
        return {pid: (fds, threads) for pid, _rss, fds, threads in self.per_process}


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in sorted(children.get(todo.pop(), [])):
            found.append(child)
            todo.append(child)
    return found


def _one(pid: int) -> tuple[int, int, int, float] | None:
    """(rss KiB, descriptors, threads, cpu seconds) of one process, or None once it is gone."""
    proc = Path(f"/proc/{pid}")
    try:
        status = (proc / "status").read_text()
        fds = len(os.listdir(proc / "fd"))
        stat = (proc / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:
        return None  # exited, not yet reaped (a zombie has no memory)
    # utime and stime are fields 14 and 15; the command name before them may hold spaces.
    after_name = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(after_name[11]) + int(after_name[12])) / _TICKS
    return int(fields["VmRSS"].split()[0]), fds, int(fields["Threads"]), cpu


def sample(pid: int, seconds: float, phase: str, tree: bool = False) -> Sample | None:
    """One sample of `pid` (and, with `tree`, of every process below it), or None once the
    server itself is gone."""
    first = _one(pid)
    if first is None:
        return None
    per = [(pid, first)]
    for child in descendants(pid) if tree else []:
        figures = _one(child)
        if figures is not None:
            per.append((child, figures))
    return Sample(
        seconds=round(seconds, 3),
        phase=phase,
        rss_kib=sum(f[0] for _, f in per),
        fds=sum(f[1] for _, f in per),
        threads=sum(f[2] for _, f in per),
        cpu_seconds=round(sum(f[3] for _, f in per), 2),
        per_process=tuple((p, f[0], f[1], f[2]) for p, f in per),
    )


class Sampler:
    """Samples `pid` (its tree with `tree`) every `interval` seconds, labelled with the phase."""

    def __init__(self, pid: int, started: float, interval: float = 1.0, tree: bool = False) -> None:
        self.pid = pid
        self.started = started
        self.interval = interval
        self.tree = tree
        self.phase = "start"
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    def take(self, phase: str | None = None) -> Sample | None:
        """A sample now, not recorded."""
        return sample(
            self.pid, time.monotonic() - self.started, phase or self.phase, tree=self.tree
        )

    def now(self) -> Sample | None:
        found = self.take()
        if found is not None:
            self.samples.append(found)
        return found

    async def _run(self) -> None:
        next_at = time.monotonic()
        while self.now() is not None:
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
