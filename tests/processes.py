"""Helpers for the process tests: a supervised dualgate (or gunicorn) in a subprocess, requests
on fresh connections, and a bounded load loop.

Every wait here is bounded; every process a test starts is stopped by its pid (its workers are
the supervisor's to stop, and are checked to be gone by their pids).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import SOCKET_TIMEOUT, Reader

START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0

# The app most tests serve: its pid, wsgi.multiprocess, a version read from a module constant
# (so a replacement's new code shows), and /sleep/SECONDS to hold a thread.
PID_APP = """
import os, sys, time

VERSION = "{version}"

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/sleep/"):
        print("sleeping in", os.getpid(), file=sys.stderr, flush=True)
        time.sleep(float(path.rsplit("/", 1)[1]))
    body = f"{{os.getpid()}} {{VERSION}} {{environ['wsgi.multiprocess']}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

PORT_LINE = re.compile(r"(?:listening on|Listening at:) https?://127\.0\.0\.1:(\d+)")


def write_app(directory: Path, version: str = "1", name: str = "pidapp") -> None:
    (directory / f"{name}.py").write_text(PID_APP.format(version=version))


@dataclass
class Answer:
    pid: int
    version: str
    multiprocess: bool


def parse(body: bytes) -> Answer:
    pid, version, multiprocess = body.decode().split()
    return Answer(int(pid), version, multiprocess == "True")


def get(
    port: int, path: str = "/", timeout: float = SOCKET_TIMEOUT
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One GET on a fresh connection, closed after the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return Reader(sock).read_response()


def answer(port: int, path: str = "/") -> Answer:
    status, _, body = get(port, path)
    assert status == b"HTTP/1.1 200 OK", (status, body)
    return parse(body)


class Process:
    """A server process; stderr is drained by a thread and kept, and lines can be waited for."""

    def __init__(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        stdout: Path | None = None,
    ) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        # stdout goes to a file when asked (what a server logs there: gunicorn's access log).
        out = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                pass_fds=tuple(pass_fds),
            )
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT, after: int = 0) -> str:
        """The first stderr line from index `after` on that matches `pattern` (a regex)."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = after
        while True:
            with self._lock:
                lines = self.lines[index:]
            for line in lines:
                if compiled.search(line):
                    return line
            index += len(lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self._drained()):
                raise AssertionError(
                    f"{pattern!r} not on stderr within {timeout}s "
                    f"(exit {self.process.poll()}):\n{self.stderr}"
                )
            with suppress(queue.Empty):
                self._new.get(timeout=min(remaining, 0.2))

    def _drained(self) -> bool:
        return not self._reader.is_alive()

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)

    def port(self) -> int:
        found = PORT_LINE.search(self.wait_for(PORT_LINE.pattern))
        assert found is not None
        return int(found.group(1))

    def children(self) -> set[int]:
        """The pids of this process's live children (its workers)."""
        pids: set[int] = set()
        task_dir = Path(f"/proc/{self.pid}/task")
        try:
            for task in task_dir.iterdir():
                pids.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            return set()
        return {pid for pid in pids if _alive(pid)}

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self._reader.join(SOCKET_TIMEOUT)
        return code

    def stop(self) -> int | None:
        """SIGTERM and a bounded wait; SIGKILL to it and its children if that is not enough."""
        if self.process.poll() is None:
            workers = self.children()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                for pid in workers:
                    kill(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait(SOCKET_TIMEOUT)
        self._reader.join(SOCKET_TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode


def kill(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def dualgate_argv(*args: str) -> list[str]:
    fixed = ("--no-access-log", "--loop", "asyncio")
    return [sys.executable, "-m", "dualgate", "serve", *args, *fixed]


@contextmanager
def supervised(
    directory: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[Process]:
    """dualgate serve ARGS in `directory`; stopped (and its workers checked gone) afterwards."""
    process = Process(dualgate_argv(*args), directory, env)
    seen: set[int] = set()
    try:
        yield process
        seen = process.children()
    finally:
        seen |= process.children()
        process.stop()
        wait_until(lambda: not any(_alive(pid) for pid in seen), SOCKET_TIMEOUT, "workers gone")


@dataclass
class Load:
    """Clients in threads, each making one request per fresh connection, in a bounded loop."""

    port: int
    clients: int = 2
    path: str = "/"
    most: int = 5000  # requests per client, at most
    seconds: float = 30.0  # and at most this long
    answers: list[tuple[float, Answer]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(SOCKET_TIMEOUT + 1)
        assert not any(t.is_alive() for t in self._threads), "a load client did not stop"

    def _client(self) -> None:
        deadline = time.monotonic() + self.seconds
        for _ in range(self.most):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                status, _, body = get(self.port, self.path)
                result: Answer | str = (
                    parse(body) if status == b"HTTP/1.1 200 OK" else status.decode()
                )
            except (OSError, ValueError) as exc:
                result = repr(exc)
            with self._lock:
                if isinstance(result, Answer):
                    self.answers.append((time.monotonic(), result))
                else:
                    self.failures.append((time.monotonic(), result))

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.answers) + len(self.failures)

    def wait_for_more(self, count: int, timeout: float = SOCKET_TIMEOUT) -> None:
        """Until `count` more requests have completed (answered or failed)."""
        target = self.sent + count
        wait_until(lambda: self.sent >= target, timeout, f"{count} more requests")
