"""The supervisor: binds the sockets once, runs N worker processes on them, never serves.

Rules of this file:
- It carries out what policy.py decides (when to start, replace, drain and kill a worker) and
  feeds it the facts; the decisions themselves are there, and tested without processes.
- The supervisor has no event loop and no threads of its own (the reloader's watcher thread
  aside, and then workers are spawned, never forked): one `selectors` loop waits on the signal
  wake-up pipe, one pipe per worker and, with --reload, the watcher's pipe. Signal handlers do
  nothing but wake it; everything happens in `_step`.
- The sockets stay open throughout a replacement, so a connection made meanwhile waits in the
  queue for whichever worker accepts it first; none is refused.
- With --metrics-address the supervisor serves the metrics (scrape.py, on the same selectors
  loop): every worker's latest snapshot added up, plus what workers that have exited counted
  before they went (so the sums never go back), plus its own figures: workers by state and
  restarts by reason. The listener stays open until the supervisor exits, so a health probe
  hears 503 throughout a graceful stop.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from dualgate.config import Config, parse_host_port
from dualgate.errors import report
from dualgate.hooks import ServerFactory
from dualgate.logs import error_logger
from dualgate.logsetup import configure_logging
from dualgate.metrics.answers import Answer, answer
from dualgate.metrics.scrape import ScrapeServer
from dualgate.metrics.snapshot import Stats
from dualgate.net import systemd
from dualgate.net.listeners import Listeners, describe_address, listen_on, open_listeners
from dualgate.procs.messages import SUPERVISOR_SIGNALS, Kind, decode, heartbeat_interval
from dualgate.procs.policy import (
    RELOADING,
    Action,
    CloseListeners,
    GiveUp,
    Notify,
    Policy,
    Signal,
    Start,
    WorkerFacts,
)
from dualgate.procs.worker import WorkerSpec, fork_worker, spawn_worker
from dualgate.version import __version__

__all__ = ["Supervisor", "Worker"]

# What the supervisor's own metrics listener queues.
_METRICS_BACKLOG = 64


@dataclass(eq=False)
class Worker(WorkerFacts):
    """A worker as the supervisor holds it: the facts the policy reads, and its process."""

    channel: int = -1  # read end of the worker's pipe; -1 once closed
    popen: subprocess.Popen[bytes] | None = None  # spawned workers; forked ones are waited on
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
    """Runs `config.workers` workers, each serving what `serve` builds; `run()` returns the
    exit code.

    `change_fd`: the reloader's pipe. Anything read from it starts a new generation, and then a
    failed start waits for the next change instead of counting towards giving up.
    """

    def __init__(
        self, config: Config, serve: ServerFactory, *, change_fd: int | None = None
    ) -> None:
        self.config = config
        self.serve = serve
        self.change_fd = change_fd
        self.policy: Policy[Worker] = Policy(
            config.workers or 1,
            healthcheck=config.timeout_worker_healthcheck,
            graceful_timeout=config.timeout_graceful_shutdown,
            reloading=change_fd is not None,
        )
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._listeners: Listeners | None = None
        self._previous_handlers: dict[int, object] = {}
        self._scrapes: list[ScrapeServer] = []
        # What workers that have exited counted (--metrics-address).
        self._retired = Stats(metered=True)

    @property
    def workers(self) -> dict[int, Worker]:
        return self.policy.workers

    # -- running ----------------------------------------------------------------------------

    def run(self) -> int:
        configure_logging(self.config)
        self._listeners = open_listeners(self.config)
        try:
            if self.config.metrics_address is not None:
                self._serve_metrics(self.config.metrics_address)
            self._install_signals()
            self._announce()
            while not (self.policy.stopping and not self.workers):
                self._step()
        finally:
            self._restore_signals()
            for worker in list(self.workers.values()):
                self._close_channel(worker)
            for scrape in self._scrapes:
                scrape.close()
            self._listeners.close()
            self._selector.close()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        error_logger.info("Supervisor stopped")
        return self.policy.exit_code

    def _step(self) -> None:
        now = time.monotonic()
        for scrape in self._scrapes:
            scrape.check_deadlines(now)
        self._carry_out(self.policy.step(now))
        deadline = self.policy.next_deadline(now)
        for scrape in self._scrapes:
            deadline = min(deadline, scrape.next_deadline() or deadline)
        timeout = max(0.0, deadline - now)
        for key, _events in self._selector.select(timeout):
            callback: Callable[[], None] = key.data
            callback()
        self._reap()

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Start):
                self._start(time.monotonic())
            elif isinstance(action, Signal):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(action.pid, action.signum)
            elif isinstance(action, Notify):
                message = action.message
                systemd.notify(systemd.reloading_message() if message == RELOADING else message)
            elif isinstance(action, CloseListeners):
                if self._listeners is not None:
                    self._listeners.close()
            elif isinstance(action, GiveUp):
                report(action.message)

    def _announce(self) -> None:
        assert self._listeners is not None
        listeners = self._listeners
        # The workers serve TLS themselves; the supervisor names the scheme they will answer in.
        scheme = "https" if self.config.ssl_certfile is not None else "http"
        where = [describe_address(sock.getsockname(), scheme) for sock in listeners.shared]
        where += [describe_address(addr, scheme) for _family, addr in listeners.reuse_port]
        mode = " (SO_REUSEPORT: one socket per worker)" if listeners.reuse_port else ""
        for address in where:
            error_logger.info(
                "dualgate %s: Supervisor %d listening on %s%s, %d worker(s) (%s)",
                __version__,
                os.getpid(),
                address,
                mode,
                self.policy.target,
                self.config.start_method,
            )

    # -- metrics ----------------------------------------------------------------------------

    def _serve_metrics(self, address: str) -> None:
        host, port = parse_host_port(address)
        timeout = self.config.timeout_request_head
        for sock in listen_on(host, port, _METRICS_BACKLOG):
            self._scrapes.append(ScrapeServer(sock, self._selector, self._answer, timeout))
            error_logger.info(
                "Supervisor metrics on %s/metrics", describe_address(sock.getsockname())
            )

    def _answer(self, method: bytes, target: bytes) -> Answer:
        health = self.config.health_path
        return answer(
            method,
            target,
            health_path=None if health is None else health.encode("ascii"),
            healthy=self.policy.healthy,
            stats=self.stats,
            supervisor=True,
        )

    def stats(self) -> Stats:
        """Every worker's figures added up (the latest each sent), what exited workers counted,
        and the supervisor's own: workers by state, restarts by reason."""
        total = self._retired
        states: dict[str, int] = {}
        for worker in self.workers.values():
            states[worker.state.value] = states.get(worker.state.value, 0) + 1
            if worker.stats is not None:
                total = total.add(worker.stats)
        restarts = dict(self.policy.restarts)
        total = total.add(Stats(metered=True, workers=states, restarts=restarts))
        total.shutting_down = self.policy.stopping
        return total

    # -- signals and changes ----------------------------------------------------------------

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, self._read_signals)
        if self.change_fd is not None:
            os.set_blocking(self.change_fd, False)
            self._selector.register(self.change_fd, selectors.EVENT_READ, self._read_changes)
        self._previous_wakeup = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in SUPERVISOR_SIGNALS:
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
            self._carry_out(self.policy.on_signal(signum, time.monotonic()))

    def _read_changes(self) -> None:
        assert self.change_fd is not None
        try:
            data = os.read(self.change_fd, 65536)
        except BlockingIOError:
            return
        if data:
            why = data.decode("utf-8", "replace").strip().splitlines()[-1]
            self._carry_out(self.policy.changed(why))

    # -- the workers ------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        assert self._listeners is not None
        listeners = self._listeners
        read_fd, write_fd = os.pipe()
        spec = WorkerSpec(
            config=self.config,
            serve=self.serve,
            shared_fds=tuple(sock.fileno() for sock in listeners.shared),
            reuse_port=tuple(listeners.reuse_port),
            channel_fd=write_fd,
            multiprocess=self.policy.target > 1,
            heartbeat_interval=heartbeat_interval(self.policy.healthcheck),
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
            self._carry_out(self.policy.start_failed(now))
            return
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = Worker(
            pid, self.policy.generation, now, last_beat=now, channel=read_fd, popen=popen
        )
        self.policy.started(worker)
        self._selector.register(read_fd, selectors.EVENT_READ, lambda: self._read_channel(worker))
        error_logger.debug("Started worker %d (generation %d)", pid, worker.generation)

    def _own_fds(self) -> list[int]:
        """What a forked worker must close: everything of the supervisor's but the sockets."""
        assert self._listeners is not None
        fds = [self._wakeup_r, self._wakeup_w, self._selector.fileno()]
        fds += [w.channel for w in self.workers.values() if w.channel >= 0]
        fds += [sock.fileno() for sock in self._listeners.reserved]
        if self.change_fd is not None:
            fds.append(self.change_fd)
        for scrape in self._scrapes:
            fds += scrape.filenos()
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
        messages, worker.buffer, problem = decode(data)
        for message in messages:
            if message.kind is Kind.SNAPSHOT:
                worker.stats = message.stats
            elif message.kind is Kind.BEAT:
                self.policy.beat(worker, now)
            elif message.kind is Kind.READY:
                self.policy.ready(worker, now)
            elif message.kind is Kind.RETIRING:
                self.policy.retiring(worker, now)
            elif message.kind is Kind.HOPELESS:
                self.policy.hopeless(worker)
        if problem is not None:
            # Nothing after it can be framed: the rest is dropped, the worker kept.
            error_logger.error("Worker %d sent %s", worker.pid, problem)

    def _close_channel(self, worker: Worker) -> None:
        if worker.channel >= 0:
            self._selector.unregister(worker.channel)
            os.close(worker.channel)
            worker.channel = -1

    def _reap(self) -> None:
        for worker in list(self.workers.values()):
            code = worker.poll()
            if code is not None:
                self._exited(worker, code)

    def _exited(self, worker: Worker, code: int) -> None:
        if worker.channel >= 0:
            self._read_channel(worker)  # a READY sent just before dying still counts
        self._close_channel(worker)
        if worker.stats is not None:
            self._retired = self._retired.add(worker.stats.counters())
        self._carry_out(self.policy.exited(worker, code, time.monotonic()))


def _wake_only(signum: int, frame: FrameType | None) -> None:
    # The wake-up fd has the signal number; the loop reads it from there.
    pass
