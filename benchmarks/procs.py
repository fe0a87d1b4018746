"""Starting, pinning, watching and stopping the processes the harness runs.

Every child is started in a new session (so its process group id is its pid, and it and all its
descendants can be signalled by that id alone) and recorded, so `stop_all` can end whatever is
still running on any exit path, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import resource
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


def _prepare(cpus: frozenset[int] | None, nofile: int | None) -> Callable[[], None] | None:
    if cpus is None and nofile is None:
        return None

    def prepare() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            wanted = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    # preexec_fn is unsafe only when the parent has threads; the harness never starts any. Pinning
    # before exec (rather than after Popen returns) means workers a server forks inherit it too,
    # as they inherit the descriptor limit.
    return prepare


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft descriptor limit towards `wanted` (up to the hard limit);
    return the soft limit it has now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def spawn(
    argv: Sequence[str],
    *,
    cpus: frozenset[int] | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
    stderr: IO[bytes] | int = subprocess.STDOUT,
    nofile: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, pinned to `cpus`, with a soft RLIMIT_NOFILE of `nofile`
    (up to the hard limit) when given."""
    proc = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_prepare(cpus, nofile),
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
    return _status_kib(pid, "VmHWM:")


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


def _status_kib(pid: str, field: str) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return None


def rss_kib(session: int) -> tuple[int, int] | None:
    """Sum of VmRSS (resident now, not the peak) over every live process of a session, and how
    many processes that was; pages shared after fork count once per process, as in
    `peak_rss_kib`."""
    total = count = 0
    for entry in _session_members(session):
        rss = _status_kib(entry, "VmRSS:")
        if rss is not None:
            total += rss
            count += 1
    return (total, count) if count else None


def threads(session: int) -> int:
    """Threads over every live process of a session."""
    return sum(_status_kib(entry, "Threads:") or 0 for entry in _session_members(session))


def open_sockets(session: int) -> int:
    """Socket descriptors held by the processes of a session: listeners, the loop's self-pipe
    socketpairs, and every accepted connection (a descriptor shared by fork counts per process)."""
    count = 0
    for entry in _session_members(session):
        directory = f"/proc/{entry}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(directory):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{directory}/{fd}").startswith("socket:"):
                        count += 1
    return count


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
