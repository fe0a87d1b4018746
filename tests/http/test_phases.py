"""The connection's phase table (dualgate/http/phases.py) and its flow control
(dualgate/http/flow.py).

Flow control runs on a real event loop with a fake clock and a fake transport: no sockets, and
no test waits for real time to pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dualgate.http.flow import Deadline, FlowControl, resolve
from dualgate.http.phases import MOVES, ConnectionPhase

# -- the phase table ----------------------------------------------------------------------------


def reachable(start: ConnectionPhase) -> set[ConnectionPhase]:
    seen = {start}
    todo = [start]
    while todo:
        for target in MOVES[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_table_is_closed() -> None:
    assert set(MOVES) == set(ConnectionPhase)
    for source, targets in MOVES.items():
        assert targets, f"{source} goes nowhere"
        assert all(isinstance(target, ConnectionPhase) for target in targets), source


def test_closed_goes_only_to_closed() -> None:
    assert MOVES[ConnectionPhase.CLOSED] == {ConnectionPhase.CLOSED}
    assert reachable(ConnectionPhase.CLOSED) == {ConnectionPhase.CLOSED}


def test_every_phase_can_close_and_none_is_dead() -> None:
    for phase in ConnectionPhase:
        assert ConnectionPhase.CLOSED in MOVES[phase], phase
    # Every phase can be reached from a new connection.
    assert reachable(ConnectionPhase.IDLE) == set(ConnectionPhase)


def test_upgraded_only_from_responding_or_idle_and_only_to_closed() -> None:
    # RESPONDING: a WebSocket's 101; IDLE: HTTP/2 takes a connection before its first request.
    sources = {source for source, targets in MOVES.items() if ConnectionPhase.UPGRADED in targets}
    assert sources == {ConnectionPhase.RESPONDING, ConnectionPhase.IDLE}
    assert MOVES[ConnectionPhase.UPGRADED] == {ConnectionPhase.CLOSED}


def test_a_request_starts_only_from_idle_or_after_one() -> None:
    sources = {source for source, targets in MOVES.items() if ConnectionPhase.HEAD in targets}
    assert sources == {ConnectionPhase.IDLE, ConnectionPhase.RESPONDING, ConnectionPhase.DRAINING}
    # A head never goes back to waiting: it is answered or the connection closes.
    assert ConnectionPhase.IDLE not in MOVES[ConnectionPhase.HEAD]
    # A body is only read for the request it belongs to, or drained after the response.
    assert {s for s, t in MOVES.items() if ConnectionPhase.BODY in t} == {ConnectionPhase.HEAD}
    assert {s for s, t in MOVES.items() if ConnectionPhase.DRAINING in t} == {ConnectionPhase.BODY}


# -- flow control ---------------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class Harness:
    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self.loop = loop
        self.clock = clock
        self.transport = FakeTransport()
        self.timeouts = 0
        self.flow = FlowControl(self.transport, loop, 30.0, self._timed_out)

    def _timed_out(self) -> None:
        self.timeouts += 1

    def turn(self) -> None:
        """Let the loop run what is due (at the fake clock's time) and what that schedules."""
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.run_until_complete(asyncio.sleep(0))


@pytest.fixture
def harness() -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    clock = Clock()
    # The loop's own clock is the fake one: call_later and the loop's timer queue use it.
    loop.time = clock.time  # type: ignore[method-assign]
    try:
        yield Harness(loop, clock)
    finally:
        loop.close()


def test_deadline_arm_expire_once(harness: Harness) -> None:
    flow = harness.flow
    assert flow.expired(harness.clock.now + 1e9) is None  # nothing armed
    flow.arm(Deadline.KEEP_ALIVE, 5.0)
    assert (flow.deadline, flow.deadline_kind) == (1005.0, Deadline.KEEP_ALIVE)
    assert flow.expired(1004.999) is None
    assert flow.expired(1005.0) is Deadline.KEEP_ALIVE
    # Reported once: the sweep does not see it again.
    assert flow.expired(2000.0) is None
    assert (flow.deadline, flow.deadline_kind) == (0.0, Deadline.NONE)


def test_rearming_replaces_the_deadline_and_its_kind(harness: Harness) -> None:
    flow = harness.flow
    flow.arm(Deadline.HEAD, 10.0)
    harness.clock.now += 8
    flow.arm(Deadline.BODY, 60.0)
    assert flow.expired(1011.0) is None  # the head deadline is gone
    assert flow.expired(1068.0) is Deadline.BODY


def test_disarm(harness: Harness) -> None:
    flow = harness.flow
    flow.arm(Deadline.BODY, 1.0)
    flow.disarm()
    assert flow.expired(1e12) is None
    assert (flow.deadline, flow.deadline_kind) == (0.0, Deadline.NONE)


def test_reading_pauses_and_resumes_once(harness: Harness) -> None:
    flow = harness.flow
    flow.resume_reading()  # not paused: the transport is not bothered
    flow.pause_reading()
    flow.pause_reading()
    assert flow.reading_paused
    flow.resume_reading()
    flow.resume_reading()
    assert not flow.reading_paused
    assert harness.transport.calls == ["pause", "resume"]


def test_a_client_that_takes_no_bytes_times_out(harness: Harness) -> None:
    flow = harness.flow
    flow.pause_writing()
    harness.clock.now += 29.9
    harness.turn()
    assert harness.timeouts == 0
    harness.clock.now += 0.2
    harness.turn()
    assert harness.timeouts == 1
    harness.clock.now += 100
    harness.turn()
    assert harness.timeouts == 1


def test_resuming_in_time_cancels_the_write_timeout(harness: Harness) -> None:
    flow = harness.flow
    flow.pause_writing()
    harness.clock.now += 20
    flow.resume_writing()
    harness.clock.now += 20
    flow.pause_writing()  # a new stall gets the whole timeout again
    harness.clock.now += 20
    harness.turn()
    assert harness.timeouts == 0
    harness.clock.now += 20
    harness.turn()
    assert harness.timeouts == 1


def test_when_writable_runs_at_once_when_not_paused(harness: Harness) -> None:
    ran: list[int] = []
    harness.flow.when_writable(lambda: ran.append(1))
    assert ran == [1]


def test_waiters_are_woken_in_order(harness: Harness) -> None:
    flow = harness.flow
    order: list[str] = []

    async def waiter(name: str) -> None:
        await flow.drained()
        order.append(name)

    flow.pause_writing()
    flow.when_writable(lambda: order.append("a"))
    first = harness.loop.create_task(waiter("task-1"))
    harness.turn()  # task-1 now waits
    flow.when_writable(lambda: order.append("b"))
    second = harness.loop.create_task(waiter("task-2"))
    harness.turn()
    assert order == []
    flow.resume_writing()
    # Callbacks run inside resume_writing, in the order they were queued; the tasks whose
    # turn it was resume on the loop's next step, also in order.
    assert order == ["a", "b"]
    harness.turn()
    assert order == ["a", "b", "task-1", "task-2"]
    assert first.done() and second.done()
    # The waiters were taken: a second resume wakes nobody again.
    flow.pause_writing()
    flow.resume_writing()
    assert order == ["a", "b", "task-1", "task-2"]


def test_a_waiter_that_pauses_again_waits_for_the_next_resume(harness: Harness) -> None:
    flow = harness.flow
    order: list[str] = []

    def again() -> None:
        order.append("again")
        flow.when_writable(lambda: order.append("later"))

    def first() -> None:
        order.append("first")
        flow.pause_writing()  # the transport's buffer is full again

    flow.pause_writing()
    flow.when_writable(first)
    flow.when_writable(again)
    flow.resume_writing()
    # "again" was already queued and runs; what it queues waits, since writing paused again.
    assert order == ["first", "again"]
    flow.resume_writing()
    assert order == ["first", "again", "later"]


def test_drained_returns_at_once_when_not_paused(harness: Harness) -> None:
    done: list[bool] = []

    async def check() -> None:
        await harness.flow.drained()
        done.append(True)

    harness.loop.run_until_complete(check())
    assert done == [True]


def test_connection_lost_releases_every_waiter_and_stops_the_clocks(harness: Harness) -> None:
    flow = harness.flow
    released: list[str] = []

    async def waiter() -> None:
        await flow.drained()
        released.append("task")

    flow.arm(Deadline.BODY, 1.0)
    flow.pause_writing()
    flow.when_writable(lambda: released.append("callback"))
    task = harness.loop.create_task(waiter())
    harness.turn()
    flow.connection_lost()
    harness.turn()
    assert released == ["callback", "task"] and task.done()
    assert not flow.writing_paused
    assert flow.expired(1e12) is None
    harness.clock.now += 1000
    harness.turn()
    assert harness.timeouts == 0


def test_resolve_is_safe_on_a_finished_future(harness: Harness) -> None:
    future: asyncio.Future[None] = harness.loop.create_future()
    resolve(future)
    resolve(future)
    assert future.done() and future.result() is None
    cancelled: asyncio.Future[None] = harness.loop.create_future()
    cancelled.cancel()
    resolve(cancelled)
    assert cancelled.cancelled()
