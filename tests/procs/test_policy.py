"""The supervisor's replacement policy in memory: no processes, no signals sent, a fake clock."""

from __future__ import annotations

import signal

import pytest

from dualgate.errors import EXIT_WORKERS_FAILED
from dualgate.procs.messages import DUMP_SIGNAL
from dualgate.procs.policy import (
    DUMP_WAIT,
    EXIT_GRACE,
    MAX_FAILED_STARTS,
    MODE_MOVES,
    RELOADING,
    WORKER_MOVES,
    Action,
    CloseListeners,
    GiveUp,
    Mode,
    Notify,
    Policy,
    Signal,
    Start,
    WorkerFacts,
    WorkerState,
    backoff,
)

HEALTHCHECK = 10.0
GRACEFUL = 3.0


class Fleet:
    """A policy, and workers that do what its actions say only when the test says so."""

    def __init__(self, target: int = 2, *, reloading: bool = False) -> None:
        self.policy: Policy[WorkerFacts] = Policy(
            target, healthcheck=HEALTHCHECK, graceful_timeout=GRACEFUL, reloading=reloading
        )
        self.now = 0.0
        self.next_pid = 100
        self.signals: list[tuple[int, int]] = []
        self.notified: list[str] = []
        self.gave_up: list[str] = []

    def carry_out(self, actions: list[Action]) -> list[WorkerFacts]:
        started = []
        for action in actions:
            if isinstance(action, Start):
                worker = WorkerFacts(self.next_pid, self.policy.generation, self.now)
                worker.last_beat = self.now
                self.next_pid += 1
                self.policy.started(worker)
                started.append(worker)
            elif isinstance(action, Signal):
                self.signals.append((action.pid, action.signum))
            elif isinstance(action, Notify):
                self.notified.append(action.message)
            elif isinstance(action, GiveUp):
                self.gave_up.append(action.message)
            else:
                assert isinstance(action, CloseListeners)
        return started

    def step(self, at: float | None = None) -> list[WorkerFacts]:
        if at is not None:
            self.now = at
        return self.carry_out(self.policy.step(self.now))

    def ready(self, *workers: WorkerFacts) -> None:
        for worker in workers:
            self.policy.ready(worker, self.now)

    def exit(self, worker: WorkerFacts, code: int) -> None:
        self.carry_out(self.policy.exited(worker, code, self.now))

    def terms(self) -> list[int]:
        return [pid for pid, signum in self.signals if signum == signal.SIGTERM]

    def serving(self) -> list[WorkerFacts]:
        return [w for w in self.policy.workers.values() if w.state is not WorkerState.DRAINING]


def test_the_move_tables_cover_every_state_and_stay_inside_them() -> None:
    assert set(WORKER_MOVES) == set(WorkerState)
    assert set(MODE_MOVES) == set(Mode)
    assert all(moves <= set(WorkerState) for moves in WORKER_MOVES.values())
    assert all(moves <= set(Mode) for moves in MODE_MOVES.values())
    assert MODE_MOVES[Mode.FORCING] == set()
    assert WORKER_MOVES[WorkerState.DRAINING] == set()


def test_a_move_the_table_does_not_allow_is_refused() -> None:
    fleet = Fleet()
    fleet.carry_out(fleet.policy.stop("test", 0.0))
    with pytest.raises(RuntimeError, match="no move from STOPPING to REPLACING"):
        fleet.policy.replace("too late")


def test_the_first_start_starts_every_worker_and_says_ready_once() -> None:
    fleet = Fleet(target=3)
    workers = fleet.step()
    assert len(workers) == 3
    assert fleet.step() == []  # starting ones count towards --workers
    fleet.ready(*workers)
    fleet.step()
    fleet.step()
    assert fleet.notified == ["READY=1"]
    assert fleet.policy.mode is Mode.SERVING
    assert fleet.policy.healthy()


def test_failed_starts_back_off_then_give_up_after_five_with_exit_code_4() -> None:
    fleet = Fleet(target=1)
    assert [backoff(n) for n in range(1, MAX_FAILED_STARTS)] == [0.25, 0.5, 1.0, 2.0]
    waits = []
    for attempt in range(1, MAX_FAILED_STARTS + 1):
        (worker,) = fleet.step()
        fleet.exit(worker, 1)
        if attempt < MAX_FAILED_STARTS:
            delay = fleet.policy.next_start - fleet.now
            waits.append(delay)
            assert fleet.step(fleet.now + delay - 0.01) == [], "started before its back-off"
            fleet.now += 0.01
    assert waits == [0.25, 0.5, 1.0, 2.0]
    assert fleet.policy.exit_code == EXIT_WORKERS_FAILED == 4
    (line,) = fleet.gave_up
    assert line == "workers failed to start 5 times in a row (last: exit code 1); giving up"
    assert fleet.policy.mode is Mode.STOPPING
    assert fleet.notified[-1] == "STOPPING=1"
    assert fleet.step(fleet.now + 100) == []


def test_a_ready_worker_resets_the_failure_count() -> None:
    fleet = Fleet(target=1)
    (first,) = fleet.step()
    fleet.exit(first, 1)
    (second,) = fleet.step(fleet.now + backoff(1))
    fleet.ready(second)
    assert fleet.policy.failures == 0
    fleet.exit(second, -signal.SIGKILL)  # died while serving: a crash, not a failed start
    assert fleet.policy.failures == 0
    assert fleet.policy.restarts == {"failed_start": 1, "crashed": 1}
    assert len(fleet.step()) == 1, "a crashed worker is replaced at once"


def test_a_silent_worker_is_dumped_then_killed_and_replaced() -> None:
    fleet = Fleet(target=1)
    (worker,) = fleet.step()
    fleet.ready(worker)
    fleet.step(HEALTHCHECK)  # exactly the time: not yet
    assert fleet.signals == []
    fleet.step(HEALTHCHECK + 0.1)
    assert fleet.signals == [(worker.pid, DUMP_SIGNAL)]
    assert fleet.policy.next_deadline(fleet.now) == pytest.approx(fleet.now + DUMP_WAIT)
    fleet.step(fleet.now + DUMP_WAIT)
    assert fleet.signals[-1] == (worker.pid, signal.SIGKILL)
    fleet.exit(worker, -signal.SIGKILL)
    assert fleet.policy.restarts == {"unresponsive": 1}
    assert len(fleet.step()) == 1


def test_heartbeats_keep_a_worker() -> None:
    fleet = Fleet(target=1)
    (worker,) = fleet.step()
    fleet.ready(worker)
    for second in range(1, 40):
        fleet.now = float(second)
        fleet.policy.beat(worker, fleet.now)
        fleet.step()
    assert fleet.signals == []


def test_a_worker_never_ready_is_dumped_too() -> None:
    fleet = Fleet(target=1)
    (worker,) = fleet.step()
    fleet.step(HEALTHCHECK + 1)
    assert fleet.signals == [(worker.pid, DUMP_SIGNAL)]


def test_sighup_replaces_one_at_a_time_new_ready_before_old_drains() -> None:
    fleet = Fleet(target=2)
    old = fleet.step()
    fleet.ready(*old)
    fleet.step()
    fleet.carry_out(fleet.policy.on_signal(signal.SIGHUP, fleet.now))
    assert fleet.notified[-1] == RELOADING
    (new1,) = fleet.step()
    assert fleet.step() == [] and fleet.terms() == [], "no old one drains before a new is ready"
    fleet.ready(new1)
    (new2,) = fleet.step()
    assert fleet.terms() == [old[0].pid], "the oldest goes first, once one new one is ready"
    fleet.ready(new2)
    fleet.step()
    assert fleet.terms() == [old[0].pid, old[1].pid]
    assert {w.pid for w in fleet.serving()} == {new1.pid, new2.pid}
    fleet.step()  # the turn after the last old one was asked to drain
    assert fleet.notified[-1] == "READY=1"
    assert fleet.policy.mode is Mode.SERVING
    fleet.exit(old[0], 0)
    fleet.exit(old[1], 0)
    assert fleet.policy.restarts == {"reload": 2}


def test_a_new_generation_that_cannot_start_is_abandoned() -> None:
    fleet = Fleet(target=2)
    old = fleet.step()
    fleet.ready(*old)
    fleet.step()
    fleet.carry_out(fleet.policy.replace("SIGHUP received"))
    for _ in range(MAX_FAILED_STARTS):
        (new,) = fleet.step(fleet.policy.next_start)
        fleet.exit(new, 1)
    assert fleet.gave_up == [] and fleet.policy.exit_code == 0
    assert fleet.policy.mode is Mode.SERVING
    assert fleet.notified[-1] == "READY=1"
    assert fleet.terms() == [], "the old generation keeps serving"
    assert fleet.step(fleet.now + 100) == []
    assert {w.pid for w in fleet.serving()} == {w.pid for w in old}


def test_under_reload_a_failed_start_waits_for_the_next_change() -> None:
    fleet = Fleet(target=1, reloading=True)
    (worker,) = fleet.step()
    fleet.exit(worker, 1)
    assert fleet.policy.mode is Mode.WAITING
    assert fleet.step(fleet.now + 100) == []
    fleet.carry_out(fleet.policy.changed("app.py changed"))
    (again,) = fleet.step()
    fleet.ready(again)
    fleet.step()
    assert fleet.notified[-1] == "READY=1"
    assert fleet.policy.healthy() and fleet.gave_up == []


def test_a_first_generation_that_cannot_import_the_app_stops_at_once_with_its_code() -> None:
    fleet = Fleet(target=3)
    first, second, third = fleet.step()
    fleet.ready(first)  # one ready does not make the first start over
    fleet.policy.hopeless(second)
    fleet.exit(second, 1)
    assert fleet.policy.mode is Mode.STOPPING
    assert fleet.policy.exit_code == 1, "the worker's own exit code, not EXIT_WORKERS_FAILED"
    assert fleet.gave_up == [] and fleet.policy.failures == 0
    assert set(fleet.terms()) == {first.pid, third.pid}
    assert fleet.notified[-1] == "STOPPING=1"
    assert fleet.step(fleet.now + 100) == [], "no retry"


def test_a_hopeless_worker_in_a_later_generation_keeps_the_old_one_serving() -> None:
    fleet = Fleet(target=1)
    (old,) = fleet.step()
    fleet.ready(old)
    fleet.step()
    fleet.carry_out(fleet.policy.replace("SIGHUP received"))
    (new,) = fleet.step()
    fleet.policy.hopeless(new)
    fleet.exit(new, 1)
    assert fleet.policy.mode is Mode.REPLACING and fleet.policy.exit_code == 0
    assert fleet.policy.failures == 1, "a failed start like any other: retried after back-off"
    assert fleet.terms() == []


def test_under_reload_a_hopeless_first_start_waits_for_a_change() -> None:
    fleet = Fleet(target=1, reloading=True)
    (worker,) = fleet.step()
    fleet.policy.hopeless(worker)
    fleet.exit(worker, 1)
    assert fleet.policy.mode is Mode.WAITING and fleet.policy.exit_code == 0


def test_a_worker_retiring_after_max_requests_is_replaced_at_once() -> None:
    fleet = Fleet(target=1)
    (worker,) = fleet.step()
    fleet.ready(worker)
    fleet.policy.retiring(worker, fleet.now)
    assert worker.state is WorkerState.DRAINING
    assert worker.kill_at == fleet.now + GRACEFUL + EXIT_GRACE
    (successor,) = fleet.step()
    assert fleet.terms() == [], "it stops by itself: no signal"
    fleet.exit(worker, 0)
    assert fleet.policy.restarts == {"max_requests": 1}
    assert successor.pid in fleet.policy.workers


def test_scaling_down_drains_starting_ones_first_then_the_oldest() -> None:
    fleet = Fleet(target=3)
    workers = fleet.step()
    fleet.ready(*workers[:2])
    fleet.carry_out(fleet.policy.on_signal(signal.SIGTTOU, fleet.now))
    fleet.carry_out(fleet.policy.on_signal(signal.SIGTTOU, fleet.now))
    fleet.step()
    assert fleet.terms() == [workers[2].pid, workers[0].pid]


def test_a_second_stop_signal_forces_and_kills_after_the_grace() -> None:
    fleet = Fleet(target=1)
    (worker,) = fleet.step()
    fleet.ready(worker)
    fleet.carry_out(fleet.policy.on_signal(signal.SIGTERM, fleet.now))
    assert fleet.terms() == [worker.pid]
    assert not fleet.policy.healthy()
    fleet.carry_out(fleet.policy.on_signal(signal.SIGINT, fleet.now))
    assert fleet.terms() == [worker.pid, worker.pid]
    assert fleet.policy.mode is Mode.FORCING
    fleet.step(fleet.now + EXIT_GRACE)
    assert fleet.signals[-1] == (worker.pid, signal.SIGKILL)
