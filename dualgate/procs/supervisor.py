"""The supervisor: binds the sockets once, runs N worker processes on them, never serves.

Rules of this file:
- The supervisor has no event loop and no threads of its own (the reloader's watcher thread
  aside, and then workers are spawned, never forked): one `selectors` loop waits on the signal
  wake-up pipe, one pipe per worker and, with --reload, the watcher's pipe. Signal handlers do
  nothing but wake it; everything happens in `_step`.
- A worker is STARTING until it says READY (application loaded, lifespan start-up done), then
  READY while its heartbeats come, then DRAINING once asked to stop (or retiring by itself). Only
  STARTING and READY workers count towards --workers.
- Replacement is generational: SIGHUP (or a change under --reload) starts a new generation; one
  new worker starts at a time, and each one that becomes ready retires one worker of an older
  generation. The sockets stay open throughout, so a connection made meanwhile waits in the
  queue for whichever worker accepts it first; none is refused.
- A worker that exits before it was ready is a failed start. Failed starts in a row are retried
  after a growing back-off; after MAX_FAILED_STARTS the supervisor gives up with
  EXIT_WORKERS_FAILED, except during a replacement, which is then abandoned while the older
  workers keep serving.
- With --metrics-address the supervisor serves the metrics (scrape_server.py, on the same
  selectors loop): every worker's latest snapshot added up, plus what workers that have exited
  counted before they went (so the sums never go back), plus its own figures: workers by state
  and restarts by reason. The listener stays open until the supervisor exits, so a health
  probe hears 503 throughout a graceful stop.
"""

from __future__ import annotations

import contextlib
import enum
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from dualgate.config import Config, parse_host_port
from dualgate.launch import EXIT_WORKERS_FAILED
from dualgate.logs import error_logger
from dualgate.logsetup import configure_logging
from dualgate.metrics.answers import Answer, answer
from dualgate.metrics.scrape import ScrapeServer
from dualgate.metrics.snapshot import RESTART_REASONS, Stats
from dualgate.net import systemd
from dualgate.net.listeners import Listeners, open_listeners
from dualgate.procs.worker import (
    BEAT,
    READY,
    RETIRING,
    SNAPSHOT,
    WorkerSpec,
    fork_worker,
    read_snapshot,
    spawn_worker,
)
from dualgate.version import __version__

__all__ = ["MAX_FAILED_STARTS", "Supervisor", "backoff"]

MAX_FAILED_STARTS = 5
_BACKOFF_FIRST = 0.25
_BACKOFF_MOST = 8.0
# After a graceful stop's own time is up, how long a worker gets to finish its lifespan shutdown
# and exit before it is killed.
_EXIT_GRACE = 5.0
# Between asking a stuck worker for its tracebacks and killing it.
_DUMP_WAIT = 1.0
_DUMP_SIGNAL = signal.SIGUSR1
_HANDLED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


def backoff(failures: int) -> float:
    """Seconds to wait before the next start after `failures` failed starts in a row."""
    return float(min(_BACKOFF_MOST, _BACKOFF_FIRST * 2 ** (failures - 1)))


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass(eq=False)
class Worker:
    pid: int
    channel: int  # read end of the worker's pipe; -1 once closed
    generation: int
    started: float
    popen: subprocess.Popen[bytes] | None = None  # spawned workers; forked ones are waited on
    state: State = State.STARTING
    last_beat: float = 0.0
    kill_at: float | None = None
    # True once the supervisor has asked it to stop: its exit is then expected.
    asked_to_stop: bool = False
    # Why it is going, once it is: a restart reason (stats.RESTART_REASONS), "stop" or
    # "scale_down".
    exit_reason: str | None = None
    # Bytes of a message (a snapshot) read only in part.
    buffer: bytes = field(default=b"", repr=False)
    # Its figures, as its latest snapshot had them (--metrics-address).
    stats: Stats | None = field(default=None, repr=False)

    def poll(self) -> int | None:
        """Exit code (negative: killed by that signal), or None while it runs."""
        if self.popen is not None:
            return self.popen.poll()
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        return None if pid == 0 else os.waitstatus_to_exitcode(status)


class Supervisor:
    """Runs `config.workers` workers; `run()` returns the exit code.

    `change_fd`: the reloader's pipe. Anything read from it starts a new generation, and then a
    failed start waits for the next change instead of counting towards giving up.
    """

    def __init__(self, config: Config, *, change_fd: int | None = None) -> None:
        self.config = config
        self.target = config.workers or 1
        self.change_fd = change_fd
        self.generation = 0
        self.workers: dict[int, Worker] = {}
        self.exit_code = 0
        self.stopping = False
        self.forcing = False
        self.replacing = False
        self.ready_told = False
        self.failures = 0
        self.last_failure = 0.0
        self.last_failure_code = 0
        self.next_start = 0.0
        self.waiting_for_change = False
        self.healthcheck = config.timeout_worker_healthcheck
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._listeners: Listeners | None = None
        self._previous_handlers: dict[int, object] = {}
        self._scrape: ScrapeServer | None = None
        # What workers that have exited counted, and the restarts (--metrics-address).
        self._retired = Stats(metered=True)
        self.restarts: dict[str, int] = {}

    # -- running ----------------------------------------------------------------------------

    def run(self) -> int:
        configure_logging(self.config)
        self._listeners = open_listeners(self.config)
        try:
            if self.config.metrics_address is not None:
                self._serve_metrics(self.config.metrics_address)
            self._install_signals()
            self._announce()
            while not (self.stopping and not self.workers):
                self._step()
        finally:
            self._restore_signals()
            for worker in list(self.workers.values()):
                self._close_channel(worker)
            if self._scrape is not None:
                self._scrape.close()
            self._listeners.close()
            self._selector.close()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        error_logger.info("Supervisor stopped")
        return self.exit_code

    def _step(self) -> None:
        now = time.monotonic()
        if self._scrape is not None:
            self._scrape.check_deadlines(now)
        self._manage(now)
        timeout = max(0.0, self._next_deadline(now) - now)
        for key, _events in self._selector.select(timeout):
            callback: Callable[[], None] = key.data
            callback()
        self._reap()

    def _announce(self) -> None:
        assert self._listeners is not None
        listeners = self._listeners
        where = [_describe(sock.getsockname()) for sock in listeners.shared]
        where += [_describe(address) for _family, address in listeners.reuse_port]
        mode = " (SO_REUSEPORT: one socket per worker)" if listeners.reuse_port else ""
        for address in where:
            error_logger.info(
                "dualgate %s: Supervisor %d listening on %s%s, %d worker(s) (%s)",
                __version__,
                os.getpid(),
                address,
                mode,
                self.target,
                self.config.start_method,
            )

    # -- metrics ----------------------------------------------------------------------------

    def _serve_metrics(self, address: str) -> None:
        host, port = parse_host_port(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=64)
        self._scrape = ScrapeServer(
            sock, self._selector, self._answer, self.config.timeout_request_head
        )
        error_logger.info("Supervisor metrics on %s/metrics", _describe(sock.getsockname()))

    def _answer(self, method: bytes, target: bytes) -> Answer:
        health = self.config.health_path
        return answer(
            method,
            target,
            health_path=None if health is None else health.encode("ascii"),
            healthy=self._healthy,
            stats=self.stats,
            supervisor=True,
        )

    def _healthy(self) -> bool:
        """Not stopping, and some worker ready to serve."""
        return not self.stopping and any(w.state is State.READY for w in self.workers.values())

    def stats(self) -> Stats:
        """Every worker's figures added up (the latest each sent), what exited workers counted,
        and the supervisor's own: workers by state, restarts by reason."""
        total = self._retired
        states: dict[str, int] = {}
        for worker in self.workers.values():
            states[worker.state.value] = states.get(worker.state.value, 0) + 1
            if worker.stats is not None:
                total = total.add(worker.stats)
        total = total.add(Stats(metered=True, workers=states, restarts=dict(self.restarts)))
        total.shutting_down = self.stopping
        return total

    # -- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, self._read_signals)
        if self.change_fd is not None:
            os.set_blocking(self.change_fd, False)
            self._selector.register(self.change_fd, selectors.EVENT_READ, self._read_changes)
        self._previous_wakeup = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in _HANDLED:
            self._previous_handlers[signum] = signal.signal(signum, _wake_only)

    def _restore_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous_handlers.clear()
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(getattr(self, "_previous_wakeup", -1))

    def _read_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            name = signal.Signals(signum).name
            if self.stopping:
                self._force(f"second {name}")
            else:
                self.stop(f"{name} received")
        elif signum == signal.SIGHUP and not self.stopping:
            self.replace("SIGHUP received")
        elif signum == signal.SIGTTIN and not self.stopping:
            self.target += 1
            error_logger.info("SIGTTIN: %d worker(s) wanted", self.target)
        elif signum == signal.SIGTTOU and not self.stopping and self.target > 1:
            self.target -= 1
            error_logger.info("SIGTTOU: %d worker(s) wanted", self.target)

    def _read_changes(self) -> None:
        assert self.change_fd is not None
        try:
            data = os.read(self.change_fd, 65536)
        except BlockingIOError:
            return
        if data and not self.stopping:
            self.waiting_for_change = False
            self.failures = 0
            self.replace(data.decode("utf-8", "replace").strip().splitlines()[-1])

    # -- what the signals ask for -----------------------------------------------------------

    def stop(self, why: str) -> None:
        """Drain every worker gracefully; run() returns once they have all exited."""
        error_logger.info("%s: stopping %d worker(s) gracefully", why, len(self.workers))
        systemd.notify("STOPPING=1")
        self.stopping = True
        # The workers close theirs as they start draining: once all are closed, a new
        # connection is refused at once (and can be retried elsewhere) instead of waiting in a
        # queue nobody will accept from until the supervisor exits.
        if self._listeners is not None:
            self._listeners.close()
        now = time.monotonic()
        for worker in self.workers.values():
            self._drain(worker, now, "stop")

    def _force(self, why: str) -> None:
        if self.forcing:
            return
        self.forcing = True
        error_logger.info("%s: workers close their connections now", why)
        now = time.monotonic()
        for worker in self.workers.values():
            _signal(worker, signal.SIGTERM)  # the second SIGTERM a worker gets forces
            worker.kill_at = min(worker.kill_at or now + _EXIT_GRACE, now + _EXIT_GRACE)

    def replace(self, why: str) -> None:
        """Start a new generation: every worker is replaced, a new one ready before an old one
        drains."""
        self.generation += 1
        self.replacing = True
        self.waiting_for_change = False
        self.failures = 0
        self.next_start = 0.0
        systemd.notify(systemd.reloading_message())
        error_logger.info("%s: replacing %d worker(s) one at a time", why, self.target)

    # -- the workers ------------------------------------------------------------------------

    def _manage(self, now: float) -> None:
        for worker in list(self.workers.values()):
            self._check_health(worker, now)
        if self.stopping:
            return
        serving = [w for w in self.workers.values() if w.state is not State.DRAINING]
        old = [w for w in serving if w.generation < self.generation]
        current = [w for w in serving if w.generation >= self.generation]
        for worker in old:
            if worker.state is State.STARTING:
                # Started before the replacement: it may run old code.
                self._drain(worker, now, "reload")
        old = [w for w in old if w.state is State.READY]
        starting = [w for w in current if w.state is State.STARTING]
        may_start = now >= self.next_start and not self.waiting_for_change
        if old or self.failures:
            # One at a time while replacing, or while probing after a failed start.
            if may_start and not starting and len(current) < self.target:
                self._start(now)
        elif may_start:
            for _ in range(self.target - len(current)):
                self._start(now)
        ready = [w for w in current if w.state is State.READY]
        # Every worker of the new generation that is ready retires one of the old ones.
        retire = max(0, len(old) + len(ready) - self.target)
        for worker in sorted(old, key=lambda w: w.started)[:retire]:
            self._drain(worker, now, "reload")
        surplus = len(current) - self.target
        if surplus > 0 and not old:
            # SIGTTOU: workers still starting go first, then the oldest.
            chosen = sorted(current, key=lambda w: (w.state is State.READY, w.started))
            for worker in chosen[:surplus]:
                self._drain(worker, now, "scale_down")
        if len(ready) >= self.target and not any(w.generation < self.generation for w in serving):
            self._all_ready()

    def _all_ready(self) -> None:
        if self.replacing:
            self.replacing = False
            error_logger.info("Replacement done: %d worker(s) ready", self.target)
            systemd.notify("READY=1")
        elif not self.ready_told:
            error_logger.info("%d worker(s) ready", self.target)
            systemd.notify("READY=1")
        self.ready_told = True

    def _check_health(self, worker: Worker, now: float) -> None:
        if worker.kill_at is not None and now >= worker.kill_at:
            worker.kill_at = None
            error_logger.error("Worker %d did not exit in time: killing it", worker.pid)
            _signal(worker, signal.SIGKILL)
            return
        if worker.kill_at is not None:
            return
        if worker.state is State.STARTING and now - worker.started > self.healthcheck:
            error_logger.error(
                "Worker %d not ready after %gs (--timeout-worker-healthcheck): its tracebacks "
                "follow, then it is killed",
                worker.pid,
                self.healthcheck,
            )
        elif worker.state is State.READY and now - worker.last_beat > self.healthcheck:
            error_logger.error(
                "Worker %d: its event loop has not answered for %gs "
                "(--timeout-worker-healthcheck); its tracebacks follow, then it is killed",
                worker.pid,
                self.healthcheck,
            )
        else:
            return
        worker.exit_reason = "unresponsive"
        _signal(worker, _DUMP_SIGNAL)
        worker.kill_at = now + _DUMP_WAIT

    def _next_deadline(self, now: float) -> float:
        deadline = now + 1.0
        if not self.stopping and self.next_start > now:
            deadline = min(deadline, self.next_start)
        if self._scrape is not None:
            deadline = min(deadline, self._scrape.next_deadline() or deadline)
        for worker in self.workers.values():
            if worker.kill_at is not None:
                deadline = min(deadline, worker.kill_at)
            elif worker.state is State.STARTING:
                deadline = min(deadline, worker.started + self.healthcheck)
            elif worker.state is State.READY:
                deadline = min(deadline, worker.last_beat + self.healthcheck)
        return deadline

    def _start(self, now: float) -> None:
        assert self._listeners is not None
        listeners = self._listeners
        read_fd, write_fd = os.pipe()
        spec = WorkerSpec(
            config=self.config,
            shared_fds=tuple(sock.fileno() for sock in listeners.shared),
            reuse_port=tuple(listeners.reuse_port),
            channel_fd=write_fd,
            multiprocess=self.target > 1,
            heartbeat_interval=min(1.0, self.healthcheck / 4),
        )
        popen = None
        try:
            if self.config.start_method == "spawn":
                popen = spawn_worker(spec)
                pid = popen.pid
            else:
                pid = fork_worker(spec, [*self._own_fds(), read_fd])
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            error_logger.error("Cannot start a worker: %s", exc)
            self._failed_start(now, 1)
            return
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = Worker(pid, read_fd, self.generation, now, popen, last_beat=now)
        self.workers[pid] = worker
        self._selector.register(read_fd, selectors.EVENT_READ, lambda: self._read_channel(worker))
        error_logger.debug("Started worker %d (generation %d)", pid, self.generation)

    def _own_fds(self) -> list[int]:
        """What a forked worker must close: everything of the supervisor's but the sockets."""
        assert self._listeners is not None
        fds = [self._wakeup_r, self._wakeup_w, self._selector.fileno()]
        fds += [w.channel for w in self.workers.values() if w.channel >= 0]
        fds += [sock.fileno() for sock in self._listeners.reserved]
        if self.change_fd is not None:
            fds.append(self.change_fd)
        if self._scrape is not None:
            fds += self._scrape.filenos()
        return [fd for fd in fds if fd >= 0]

    def _read_channel(self, worker: Worker) -> None:
        while worker.channel >= 0:
            try:
                data = os.read(worker.channel, 65536)
            except BlockingIOError:
                return
            if not data:
                self._close_channel(worker)
                return
            self._on_messages(worker, worker.buffer + data)

    def _on_messages(self, worker: Worker, data: bytes) -> None:
        now = time.monotonic()
        index = 0
        while index < len(data):
            message = data[index : index + 1]
            if message == SNAPSHOT:
                try:
                    stats, size = read_snapshot(data[index:])
                except ValueError as exc:
                    # Nothing after it can be framed: drop the rest, keep the worker.
                    error_logger.error("Worker %d sent %s", worker.pid, exc)
                    index = len(data)
                    break
                if stats is None:
                    break  # the rest of it comes with the next read
                worker.stats = stats
                index += size
                continue
            index += 1
            if message == BEAT:
                worker.last_beat = now
            elif message == READY and worker.state is State.STARTING:
                worker.state = State.READY
                worker.last_beat = now
                self.failures = 0
                error_logger.debug("Worker %d ready", worker.pid)
            elif message == RETIRING and worker.state is not State.DRAINING:
                # It stops by itself; a replacement starts now, not once it has gone.
                worker.state = State.DRAINING
                worker.asked_to_stop = True
                worker.exit_reason = "max_requests"
                worker.kill_at = now + self.config.timeout_graceful_shutdown + _EXIT_GRACE
        worker.buffer = data[index:]

    def _close_channel(self, worker: Worker) -> None:
        if worker.channel >= 0:
            self._selector.unregister(worker.channel)
            os.close(worker.channel)
            worker.channel = -1

    def _drain(self, worker: Worker, now: float, reason: str) -> None:
        if worker.asked_to_stop:
            return
        worker.asked_to_stop = True
        worker.exit_reason = reason
        worker.state = State.DRAINING
        worker.kill_at = now + self.config.timeout_graceful_shutdown + _EXIT_GRACE
        _signal(worker, signal.SIGTERM)

    def _reap(self) -> None:
        for worker in list(self.workers.values()):
            code = worker.poll()
            if code is not None:
                self._exited(worker, code)

    def _exited(self, worker: Worker, code: int) -> None:
        if worker.channel >= 0:
            self._read_channel(worker)  # a READY sent just before dying still counts
        self._close_channel(worker)
        del self.workers[worker.pid]
        if worker.stats is not None:
            self._retired = self._retired.add(worker.stats.counters())
        now = time.monotonic()
        how = _describe_exit(code)
        reason = worker.exit_reason
        if worker.asked_to_stop:
            error_logger.info("Worker %d stopped (%s)", worker.pid, how)
        elif worker.state is State.STARTING:
            error_logger.error("Worker %d failed to start (%s)", worker.pid, how)
            reason = reason or "failed_start"
            self._failed_start(now, code, counts=worker.started >= self.last_failure)
        else:
            error_logger.error("Worker %d died (%s): starting another", worker.pid, how)
            reason = reason or "crashed"
        if reason in RESTART_REASONS and not self.stopping:
            self.restarts[reason] = self.restarts.get(reason, 0) + 1

    def _failed_start(self, now: float, code: int, *, counts: bool = True) -> None:
        self.last_failure_code = code
        if self.stopping:
            return
        if self.change_fd is not None:
            if not self.waiting_for_change:
                error_logger.error("Waiting for a change to the code before starting again")
            self.waiting_for_change = True
            self._abandon_replacement()
            return
        if not counts:
            return  # started before the previous failure was known: the same episode
        self.last_failure = now
        self.failures += 1
        if self.failures < MAX_FAILED_STARTS:
            delay = backoff(self.failures)
            self.next_start = now + delay
            error_logger.error(
                "Failed start %d of %d in a row: retrying in %gs",
                self.failures,
                MAX_FAILED_STARTS,
                delay,
            )
            return
        if self._abandon_replacement():
            return
        message = (
            f"workers failed to start {self.failures} times in a row "
            f"(last: {_describe_exit(code)}); giving up"
        )
        print(f"dualgate: error: {message}", file=sys.stderr, flush=True)
        self.exit_code = EXIT_WORKERS_FAILED
        self.stop("Giving up")

    def _abandon_replacement(self) -> bool:
        """Keep the older generation serving when its replacement cannot start."""
        serving = [w for w in self.workers.values() if w.state is State.READY]
        older = [w for w in serving if w.generation < self.generation]
        if not older:
            return False
        self.generation = min(w.generation for w in serving)
        self.failures = 0
        self.replacing = False
        error_logger.error(
            "Replacement abandoned: the %d worker(s) already running keep serving", len(serving)
        )
        systemd.notify("READY=1")
        return True


def _wake_only(signum: int, frame: FrameType | None) -> None:
    # The wake-up fd has the signal number; the loop reads it from there.
    pass


def _signal(worker: Worker, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker.pid, signum)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _describe(address: object) -> str:
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"http://{host}:{address[1]}"
    return f"unix:{address}"
