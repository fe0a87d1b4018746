"""dualgate.ThreadPool on its own: a job starts, waits for a thread within its bound, or is refused.

The pool is exercised on a real event loop with real threads; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

import dualgate
from dualgate.wsgi.pool import BUSY_MESSAGE, BUSY_RETRY_AFTER, BUSY_STATUS, ThreadPool

WAIT = 5.0


@pytest.fixture
def pools() -> Iterator[Callable[[int], ThreadPool]]:
    made: list[ThreadPool] = []

    def make(size: int) -> ThreadPool:
        pool = ThreadPool(size, name="test-pool")
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(WAIT)


class Jobs:
    """Jobs that block until released, and what became of each, seen from the loop."""

    def __init__(self, pool: ThreadPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.started: dict[str, threading.Event] = {}
        self.release: dict[str, threading.Event] = {}
        self.outcome: dict[str, asyncio.Future[str]] = {}

    def submit(self, name: str, wait: float) -> None:
        started, release = threading.Event(), threading.Event()
        outcome: asyncio.Future[str] = self.loop.create_future()
        self.started[name], self.release[name], self.outcome[name] = started, release, outcome

        def done() -> None:
            self.pool.release()
            outcome.set_result("ran")

        def job() -> None:
            started.set()
            release.wait(WAIT)
            self.loop.call_soon_threadsafe(done)

        self.pool.submit(job, lambda: outcome.set_result("refused"), wait, self.loop)

    async def result(self, name: str) -> str:
        return await asyncio.wait_for(self.outcome[name], WAIT)


@pytest.mark.asyncio
async def test_full_pool_refuses_at_once_without_a_wait(
    pools: Callable[[int], ThreadPool],
) -> None:
    jobs = Jobs(pools(1), asyncio.get_running_loop())
    jobs.submit("first", wait=0)
    assert await asyncio.to_thread(jobs.started["first"].wait, WAIT)
    jobs.submit("second", wait=0)
    assert await jobs.result("second") == "refused"
    assert not jobs.started["second"].is_set()
    jobs.release["first"].set()
    assert await jobs.result("first") == "ran"
    # The released thread takes the next job.
    jobs.submit("third", wait=0)
    jobs.release["third"].set()
    assert await jobs.result("third") == "ran"


@pytest.mark.asyncio
async def test_waiting_job_runs_when_a_thread_is_released(
    pools: Callable[[int], ThreadPool],
) -> None:
    jobs = Jobs(pools(1), asyncio.get_running_loop())
    jobs.submit("first", wait=0)
    assert await asyncio.to_thread(jobs.started["first"].wait, WAIT)
    jobs.submit("waiting", wait=WAIT)
    jobs.submit("also-waiting", wait=WAIT)
    assert not jobs.started["waiting"].is_set()
    jobs.release["first"].set()
    assert await jobs.result("first") == "ran"
    # The oldest waiting job gets the freed thread; the other waits on.
    assert await asyncio.to_thread(jobs.started["waiting"].wait, WAIT)
    assert not jobs.started["also-waiting"].is_set()
    jobs.release["waiting"].set()
    assert await jobs.result("waiting") == "ran"
    jobs.release["also-waiting"].set()
    assert await jobs.result("also-waiting") == "ran"


@pytest.mark.asyncio
async def test_waiting_job_is_refused_when_its_wait_runs_out(
    pools: Callable[[int], ThreadPool],
) -> None:
    loop = asyncio.get_running_loop()
    jobs = Jobs(pools(1), loop)
    jobs.submit("first", wait=0)
    assert await asyncio.to_thread(jobs.started["first"].wait, WAIT)
    submitted = loop.time()
    jobs.submit("short", wait=0.1)
    jobs.submit("long", wait=WAIT)
    assert await jobs.result("short") == "refused"
    assert loop.time() - submitted >= 0.1
    assert not jobs.outcome["long"].done(), "a later deadline expired with the earlier one"
    jobs.release["long"].set()
    jobs.release["first"].set()
    assert await jobs.result("first") == "ran"
    assert await jobs.result("long") == "ran"
    assert not jobs.started["short"].is_set()


def test_shutdown_stops_every_thread() -> None:
    pool = ThreadPool(3, name="test-pool-shutdown")
    threads = [t for t in threading.enumerate() if t.name.startswith("test-pool-shutdown-")]
    assert len(threads) == pool.size == 3
    pool.shutdown(WAIT)
    assert not any(thread.is_alive() for thread in threads)


def test_worker_pool_is_exported_with_the_busy_answer() -> None:
    assert dualgate.ThreadPool is ThreadPool
    assert "ThreadPool" in dualgate.__all__
    assert (BUSY_STATUS, BUSY_RETRY_AFTER) == (503, (b"retry-after", b"1"))
    assert BUSY_MESSAGE == "All threads are busy, retry later\n"


def test_the_name_users_imported_before_still_works() -> None:
    # "worker" now means a process only; the pool was dualgate.WorkerPool before that.
    assert dualgate.WorkerPool is dualgate.ThreadPool
