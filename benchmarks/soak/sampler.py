"""Samples of the server process from /proc, once a second: RSS, open descriptors, threads, CPU."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sample", "Sampler", "sample"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the soak started
    phase: str
    rss_kib: int
    fds: int
    threads: int
    cpu_seconds: float  # user + system, since the process started

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample(pid: int, seconds: float, phase: str) -> Sample | None:
    """One sample, or None once the process is gone."""
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
    return Sample(
        seconds=round(seconds, 3),
        phase=phase,
        rss_kib=int(fields["VmRSS"].split()[0]),
        fds=fds,
        threads=int(fields["Threads"]),
        cpu_seconds=cpu,
    )


class Sampler:
    """Samples `pid` every `interval` seconds in the background, labelled with the phase."""

    def __init__(self, pid: int, started: float, interval: float = 1.0) -> None:
        self.pid = pid
        self.started = started
        self.interval = interval
        self.phase = "start"
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    def now(self) -> Sample | None:
        found = sample(self.pid, time.monotonic() - self.started, self.phase)
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
