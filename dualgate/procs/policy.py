"""The supervisor's decisions without processes: facts in (starts, messages, exits, signals,
the time), what to do out (start one, signal one, tell systemd, give up).

Theory of operation. Each worker is in exactly one `WorkerState` and moves only as
`WORKER_MOVES` allows; it leaves the table when it exits, whatever its state:

    STARTING ──says READY──> READY ──asked to stop, or retiring by itself──> DRAINING
        └──────────asked to stop (a replacement began, a stop, fewer wanted)─────┘

Only STARTING and READY workers count towards --workers. The supervisor as a whole is in one
`Mode`, moving as `MODE_MOVES` allows:

    STARTING ──all ready──> SERVING ──SIGHUP, or a change under --reload──> REPLACING
        │                     ^  ^                                            │
        │                     │  └─────────done, or abandoned─────────────────┤
        │                     └─(the first start, too, may be interrupted by SIGHUP)
        └─a failed start under --reload──> WAITING ──a change──> REPLACING ───┘
    any of those ──SIGINT/SIGTERM, or giving up──> STOPPING ──a second signal──> FORCING

- Replacement is generational: a new generation starts one worker at a time, and each one
  that becomes ready retires one worker of an older generation, so a new worker is ready before
  an old one drains. A worker of an older generation still STARTING is drained at once (it may
  run old code).
- A worker that exits before it is ready is a failed start. Failed starts in a row are retried
  after `backoff` (0.25, 0.5, 1, 2 s, ...); after MAX_FAILED_STARTS the supervisor gives up with
  EXIT_WORKERS_FAILED, except during a replacement, which is then abandoned while the older
  generation keeps serving. Under --reload a failed start waits for the next change instead.
- A worker of the first generation that said it is hopeless (the application cannot be
  imported, a setting is wrong: every retry would fail alike) stops the supervisor at once with
  that worker's exit code; nothing was serving yet, so there is nothing to keep. In a later
  generation it is a failed start like any other, and the older generation keeps serving.
- A STARTING worker not ready within the health-check time, or a READY one whose heartbeats
  stopped for as long, is asked for its tracebacks (DUMP_SIGNAL) and killed DUMP_WAIT later;
  a DRAINING one is killed once its graceful time and EXIT_GRACE are over.
"""

from __future__ import annotations

import contextlib
import enum
import signal
from dataclasses import dataclass
from typing import Generic, TypeVar

from dualgate.errors import EXIT_APP_LOAD, EXIT_WORKERS_FAILED
from dualgate.hooks import STOP_SIGNALS
from dualgate.logs import error_logger
from dualgate.metrics.snapshot import RESTART_REASONS
from dualgate.procs.messages import DUMP_SIGNAL

__all__ = [
    "DUMP_WAIT",
    "EXIT_GRACE",
    "MAX_FAILED_STARTS",
    "MODE_MOVES",
    "RELOADING",
    "WORKER_MOVES",
    "Action",
    "CloseListeners",
    "GiveUp",
    "Mode",
    "Notify",
    "Policy",
    "Signal",
    "Start",
    "WorkerFacts",
    "WorkerState",
    "backoff",
    "describe_exit",
]

MAX_FAILED_STARTS = 5
_BACKOFF_FIRST = 0.25
_BACKOFF_MOST = 8.0
# After a graceful stop's own time is up, how long a worker gets to finish its lifespan shutdown
# and exit before it is killed.
EXIT_GRACE = 5.0
# Between asking a stuck worker for its tracebacks and killing it.
DUMP_WAIT = 1.0
# What Notify says when a replacement begins; the supervisor adds the time systemd wants.
RELOADING = "RELOADING=1"


def backoff(failures: int) -> float:
    """Seconds to wait before the next start after `failures` failed starts in a row."""
    return float(min(_BACKOFF_MOST, _BACKOFF_FIRST * 2 ** (failures - 1)))


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class Mode(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    REPLACING = "replacing"
    WAITING = "waiting"
    STOPPING = "stopping"
    FORCING = "forcing"


_STARTING, _READY, _DRAINING = WorkerState
WORKER_MOVES: dict[WorkerState, set[WorkerState]] = {
    _STARTING: {_READY, _DRAINING},
    _READY: {_DRAINING},
    _DRAINING: set(),
}
MODE_MOVES: dict[Mode, set[Mode]] = {
    Mode.STARTING: {Mode.SERVING, Mode.REPLACING, Mode.WAITING, Mode.STOPPING},
    Mode.SERVING: {Mode.REPLACING, Mode.WAITING, Mode.STOPPING},
    Mode.REPLACING: {Mode.SERVING, Mode.REPLACING, Mode.WAITING, Mode.STOPPING},
    Mode.WAITING: {Mode.REPLACING, Mode.STOPPING},
    Mode.STOPPING: {Mode.FORCING},
    Mode.FORCING: set(),
}


@dataclass(eq=False)
class WorkerFacts:
    pid: int
    generation: int
    started: float
    state: WorkerState = WorkerState.STARTING
    last_beat: float = 0.0
    kill_at: float | None = None
    # True once it was asked to stop, or said it retires: its exit is then expected.
    asked_to_stop: bool = False
    # Why it is going, once it is: a restart reason (RESTART_REASONS), "stop" or "scale_down".
    exit_reason: str | None = None
    # It said that it cannot start for a reason no retry mends (messages.HOPELESS).
    hopeless: bool = False


@dataclass(frozen=True)
class Start:
    """Start one worker of the current generation now."""


@dataclass(frozen=True)
class Signal:
    pid: int
    signum: int


@dataclass(frozen=True)
class Notify:
    message: str  # for systemd: "READY=1", "STOPPING=1" or RELOADING


@dataclass(frozen=True)
class CloseListeners:
    """Close the supervisor's listening sockets: a stop has begun."""


@dataclass(frozen=True)
class GiveUp:
    message: str  # the one error line; the exit code is `Policy.exit_code`


Action = Start | Signal | Notify | CloseListeners | GiveUp
W = TypeVar("W", bound=WorkerFacts)


class Policy(Generic[W]):
    """When to start, replace, drain and kill workers; `reloading`: under --reload."""

    def __init__(
        self, target: int, *, healthcheck: float, graceful_timeout: float, reloading: bool
    ) -> None:
        self.target = target
        self.healthcheck = healthcheck
        self.graceful_timeout = graceful_timeout
        self.reloading = reloading
        self.mode = Mode.STARTING
        self.generation = 0
        self.workers: dict[int, W] = {}
        self.failures = 0
        self.last_failure = 0.0
        self.next_start = 0.0
        self.exit_code = 0
        self.restarts: dict[str, int] = {}

    @property
    def stopping(self) -> bool:
        return self.mode in (Mode.STOPPING, Mode.FORCING)

    def healthy(self) -> bool:
        """Not stopping, and some worker ready to serve."""
        return not self.stopping and any(w.state is _READY for w in self.workers.values())

    def _move(self, mode: Mode) -> None:
        if mode not in MODE_MOVES[self.mode]:
            raise RuntimeError(f"supervisor: no move from {self.mode.name} to {mode.name}")
        self.mode = mode

    @staticmethod
    def _move_worker(worker: WorkerFacts, state: WorkerState) -> None:
        if state not in WORKER_MOVES[worker.state]:
            raise RuntimeError(f"worker {worker.pid}: no move from {worker.state.name}")
        worker.state = state

    # -- facts ------------------------------------------------------------------------------

    def started(self, worker: W) -> None:
        self.workers[worker.pid] = worker

    def ready(self, worker: W, now: float) -> None:
        if worker.state is _STARTING:
            self._move_worker(worker, _READY)
            worker.last_beat = now
            self.failures = 0
            error_logger.debug("Worker %d ready", worker.pid)

    def beat(self, worker: W, now: float) -> None:
        worker.last_beat = now

    def retiring(self, worker: W, now: float) -> None:
        if worker.state is not _DRAINING:
            # It stops by itself; a replacement starts now, not once it has gone.
            self._move_worker(worker, _DRAINING)
            worker.asked_to_stop = True
            worker.exit_reason = "max_requests"
            worker.kill_at = now + self.graceful_timeout + EXIT_GRACE

    def hopeless(self, worker: W) -> None:
        """It cannot start for a reason no retry mends; it is about to exit."""
        worker.hopeless = True

    def start_failed(self, now: float) -> list[Action]:
        """A worker could not even be started (fork or spawn failed)."""
        return self._failed_start(now, 1)

    def exited(self, worker: W, code: int, now: float) -> list[Action]:
        self.workers.pop(worker.pid, None)
        how = describe_exit(code)
        reason = worker.exit_reason
        actions: list[Action] = []
        if worker.asked_to_stop:
            error_logger.info("Worker %d stopped (%s)", worker.pid, how)
        elif worker.state is _STARTING and self._final(worker):
            error_logger.error("Worker %d failed to start (%s): not retrying", worker.pid, how)
            self.exit_code = code if code > 0 else EXIT_APP_LOAD
            return self.stop("A first start that cannot succeed", now)
        elif worker.state is _STARTING:
            error_logger.error("Worker %d failed to start (%s)", worker.pid, how)
            reason = reason or "failed_start"
            # One started before the previous failure was known belongs to the same episode.
            counts = worker.started >= self.last_failure
            actions = self._failed_start(now, code, counts=counts)
        else:
            error_logger.error("Worker %d died (%s): starting another", worker.pid, how)
            reason = reason or "crashed"
        if reason in RESTART_REASONS and not self.stopping:
            self.restarts[reason] = self.restarts.get(reason, 0) + 1
        return actions

    def _final(self, worker: W) -> bool:
        """A failed start not to retry: a hopeless one before anything served (not under
        --reload, which waits for the code to change instead)."""
        return worker.hopeless and self.mode is Mode.STARTING and not self.reloading

    # -- what signals ask for ---------------------------------------------------------------

    def on_signal(self, signum: int, now: float) -> list[Action]:
        if signum in STOP_SIGNALS:
            name = signal.Signals(signum).name
            if self.stopping:
                return self._force(f"second {name}", now)
            return self.stop(f"{name} received", now)
        if self.stopping:
            return []
        if signum == signal.SIGHUP:
            return self.replace("SIGHUP received")
        if signum == signal.SIGTTIN:
            self.target += 1
            error_logger.info("SIGTTIN: %d worker(s) wanted", self.target)
        elif signum == signal.SIGTTOU and self.target > 1:
            self.target -= 1
            error_logger.info("SIGTTOU: %d worker(s) wanted", self.target)
        return []

    def changed(self, why: str) -> list[Action]:
        """Under --reload: a watched file changed."""
        return [] if self.stopping else self.replace(why)

    def stop(self, why: str, now: float) -> list[Action]:
        """Drain every worker gracefully; the supervisor is done once they have all exited."""
        error_logger.info("%s: stopping %d worker(s) gracefully", why, len(self.workers))
        self._move(Mode.STOPPING)
        # The workers close theirs as they start draining: once all are closed, a new
        # connection is refused at once (and can be retried elsewhere) instead of waiting in a
        # queue nobody will accept from until the supervisor exits.
        actions: list[Action] = [Notify("STOPPING=1"), CloseListeners()]
        for worker in list(self.workers.values()):
            actions += self._drain(worker, now, "stop")
        return actions

    def _force(self, why: str, now: float) -> list[Action]:
        if self.mode is Mode.FORCING:
            return []
        self._move(Mode.FORCING)
        error_logger.info("%s: workers close their connections now", why)
        actions: list[Action] = []
        for worker in self.workers.values():
            actions.append(Signal(worker.pid, signal.SIGTERM))  # a worker's second one forces
            worker.kill_at = min(worker.kill_at or now + EXIT_GRACE, now + EXIT_GRACE)
        return actions

    def replace(self, why: str) -> list[Action]:
        """Start a new generation: every worker is replaced, a new one ready before an old one
        drains."""
        self.generation += 1
        self._move(Mode.REPLACING)
        self.failures = 0
        self.next_start = 0.0
        error_logger.info("%s: replacing %d worker(s) one at a time", why, self.target)
        return [Notify(RELOADING)]

    # -- each turn of the supervisor's loop -------------------------------------------------

    def step(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for worker in list(self.workers.values()):
            actions += self._check_health(worker, now)
        if self.stopping:
            return actions
        serving = [w for w in self.workers.values() if w.state is not _DRAINING]
        old = [w for w in serving if w.generation < self.generation]
        current = [w for w in serving if w.generation >= self.generation]
        for worker in old:
            if worker.state is _STARTING:
                actions += self._drain(worker, now, "reload")  # it may run old code
        old = [w for w in old if w.state is _READY]
        starting = [w for w in current if w.state is _STARTING]
        may_start = now >= self.next_start and self.mode is not Mode.WAITING
        if old or self.failures:
            # One at a time while replacing, or while probing after a failed start.
            if may_start and not starting and len(current) < self.target:
                actions.append(Start())
        elif may_start:
            actions += [Start() for _ in range(self.target - len(current))]
        ready = [w for w in current if w.state is _READY]
        # Every worker of the new generation that is ready retires one of the old ones.
        retire = max(0, len(old) + len(ready) - self.target)
        for worker in sorted(old, key=lambda w: w.started)[:retire]:
            actions += self._drain(worker, now, "reload")
        surplus = len(current) - self.target
        if surplus > 0 and not old:
            # SIGTTOU: workers still starting go first, then the oldest.
            chosen = sorted(current, key=lambda w: (w.state is _READY, w.started))
            for worker in chosen[:surplus]:
                actions += self._drain(worker, now, "scale_down")
        if len(ready) >= self.target and not any(w.generation < self.generation for w in serving):
            actions += self._all_ready()
        return actions

    def next_deadline(self, now: float) -> float:
        """When `step` next has something to do, at the latest a second from now."""
        deadline = now + 1.0
        if not self.stopping and self.next_start > now:
            deadline = min(deadline, self.next_start)
        for worker in self.workers.values():
            if worker.kill_at is not None:
                deadline = min(deadline, worker.kill_at)
            elif worker.state is _STARTING:
                deadline = min(deadline, worker.started + self.healthcheck)
            elif worker.state is _READY:
                deadline = min(deadline, worker.last_beat + self.healthcheck)
        return deadline

    def _all_ready(self) -> list[Action]:
        if self.mode is Mode.REPLACING:
            error_logger.info("Replacement done: %d worker(s) ready", self.target)
        elif self.mode is Mode.STARTING:
            error_logger.info("%d worker(s) ready", self.target)
        else:
            return []
        self._move(Mode.SERVING)
        return [Notify("READY=1")]

    def _check_health(self, worker: W, now: float) -> list[Action]:
        if worker.kill_at is not None and now >= worker.kill_at:
            worker.kill_at = None
            error_logger.error("Worker %d did not exit in time: killing it", worker.pid)
            return [Signal(worker.pid, signal.SIGKILL)]
        if worker.kill_at is not None:
            return []
        if worker.state is _STARTING and now - worker.started > self.healthcheck:
            error_logger.error(
                "Worker %d not ready after %gs (--timeout-worker-healthcheck): its tracebacks "
                "follow, then it is killed",
                worker.pid,
                self.healthcheck,
            )
        elif worker.state is _READY and now - worker.last_beat > self.healthcheck:
            error_logger.error(
                "Worker %d: its event loop has not answered for %gs "
                "(--timeout-worker-healthcheck); its tracebacks follow, then it is killed",
                worker.pid,
                self.healthcheck,
            )
        else:
            return []
        worker.exit_reason = "unresponsive"
        worker.kill_at = now + DUMP_WAIT
        return [Signal(worker.pid, DUMP_SIGNAL)]

    def _drain(self, worker: W, now: float, reason: str) -> list[Action]:
        if worker.asked_to_stop:
            return []
        worker.asked_to_stop = True
        worker.exit_reason = reason
        self._move_worker(worker, _DRAINING)
        worker.kill_at = now + self.graceful_timeout + EXIT_GRACE
        return [Signal(worker.pid, signal.SIGTERM)]

    def _failed_start(self, now: float, code: int, *, counts: bool = True) -> list[Action]:
        if self.stopping:
            return []
        if self.reloading:
            if self.mode is not Mode.WAITING:
                error_logger.error("Waiting for a change to the code before starting again")
            actions = self._abandon_replacement()
            if self.mode is not Mode.WAITING:
                self._move(Mode.WAITING)
            return actions
        if not counts:
            return []
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
            return []
        abandoned = self._abandon_replacement()
        if abandoned:
            self._move(Mode.SERVING)
            return abandoned
        message = (
            f"workers failed to start {self.failures} times in a row "
            f"(last: {describe_exit(code)}); giving up"
        )
        self.exit_code = EXIT_WORKERS_FAILED
        return [GiveUp(message), *self.stop("Giving up", now)]

    def _abandon_replacement(self) -> list[Action]:
        """Keep the older generation serving when its replacement cannot start."""
        serving = [w for w in self.workers.values() if w.state is _READY]
        if not any(w.generation < self.generation for w in serving):
            return []
        self.generation = min(w.generation for w in serving)
        self.failures = 0
        error_logger.error(
            "Replacement abandoned: the %d worker(s) already running keep serving", len(serving)
        )
        return [Notify("READY=1")]


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"
