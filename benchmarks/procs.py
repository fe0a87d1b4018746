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


def _session_of(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may itself contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[3])


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
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _session_of(entry) == session:
            hwm = _vm_hwm_kib(entry)
            if hwm is not None:
                total += hwm
                count += 1
    return (total, count) if count else None


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
