"""Starting, pinning, watching and stopping the processes the harness runs.

Every child is started in a new session (so its process group id is its pid, and it and all its
descendants can be signalled by that id alone) and recorded, so `stop_all` can end whatever is
still running on any exit path, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"

_live: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Cores:
    """CPU sets for the server and the load generator; None means no pinning (one core)."""

    server: frozenset[int] | None
    load: frozenset[int] | None

    @classmethod
    def plan(cls) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None)
        return cls(frozenset({cpus[0]}), frozenset({cpus[1]}))


def _pin(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    # preexec_fn is unsafe only when the parent has threads; the harness never starts any. Pinning
    # before exec (rather than after Popen returns) means workers a server forks inherit it too.
    return pin


def spawn(
    argv: Sequence[str],
    *,
    cpus: frozenset[int] | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
    stderr: IO[bytes] | int = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_pin(cpus),
    )
    _live[proc.pid] = proc
    return proc


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace` seconds."""
    pgid = proc.pid
    try:
        if proc.poll() is None or _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
                time.sleep(0.02)
            if proc.poll() is None or _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    finally:
        _live.pop(proc.pid, None)


def stop_all() -> None:
    for proc in list(_live.values()):
        stop(proc, grace=2.0)


@dataclass(frozen=True)
class Completed:
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    cpus: frozenset[int] | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Completed:
    """Run a short-lived tool (wrk, the built-in client) and kill it if it outlives `timeout`."""
    proc = spawn(argv, cpus=cpus, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        stop(proc, grace=1.0)
        out, err = proc.communicate()
        code = None
    finally:
        stop(proc, grace=1.0)
    return Completed(code, out.decode(errors="replace"), err.decode(errors="replace"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(proc: subprocess.Popen[bytes], port: int, deadline: float) -> str | None:
    """Poll-connect until the port accepts; return why not if the process exits or time runs out."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode} before accepting connections"
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.05)
    return f"not accepting connections after {deadline:.0f} s"


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: str) -> list[str] | None:
    """/proc/PID/stat from the field after the command name on (the state is [0]), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return stat[stat.rindex(")") + 2 :].split()


def _session_of(pid: str) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def _session_members(session: int) -> list[str]:
    return [e for e in os.listdir("/proc") if e.isdigit() and _session_of(e) == session]


def _vm_hwm_kib(pid: str) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def peak_rss_kib(session: int) -> tuple[int, int] | None:
    """Sum of VmHWM over every live process of a session, and how many processes that was.

    Summed because a pre-fork server's workers each hold their own heap; pages they share with
    the master after fork are counted once per process, so the sum overstates a little.
    """
    total = count = 0
    for entry in _session_members(session):
        hwm = _vm_hwm_kib(entry)
        if hwm is not None:
            total += hwm
            count += 1
    return (total, count) if count else None


def cpu_seconds(session: int) -> float | None:
    """CPU time (user + system) used so far by a session's process tree, or None when it has no
    process left.

    Per process, utime + stime cover every thread it has or had, and cutime + cstime every child
    it has reaped (with their own reaped children): so the sum over the live processes also
    counts workers that exited and were waited for during the run (a gunicorn worker restarted,
    a supervisor's worker replaced). A process reaped by something outside the session would be
    lost, but each server's tree reaps its own. Resolution is one clock tick (10 ms) per process.
    """
    ticks = count = 0
    for entry in _session_members(session):
        fields = _stat_fields(entry)
        if fields is None:
            continue  # exited between the listing and the read
        # proc(5) fields 14-17 (utime, stime, cutime, cstime), counted from 1 with the pid.
        ticks += sum(int(f) for f in fields[11:15])
        count += 1
    return ticks / _TICKS if count else None


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
