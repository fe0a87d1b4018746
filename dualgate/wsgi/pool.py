"""The bounded pool of pool threads that run WSGI applications, and its "pool full" answer.

It is shared by the server (workers.py) and by `WSGIMiddleware`, which runs under any ASGI
server: so this module imports nothing of dualgate's HTTP core (nor h11), only the stdlib,
dualgate's loggers and its plain figures (stats.py).

What the pool counts costs nothing while it has free threads: a request that waits, and one that
is refused, is counted on that slower path only. `CountingThreadPool` (metrics on) also counts
every job, so the wait histogram can hold those that got a thread at once; `PoolWarning` says in
dualgate.error that requests wait, for operators without metrics.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from dualgate.logs import error_logger
from dualgate.metrics.snapshot import WAIT_BOUNDS, Histogram

__all__ = [
    "BUSY_MESSAGE",
    "BUSY_RETRY_AFTER",
    "BUSY_STATUS",
    "CountingThreadPool",
    "Job",
    "PoolFigures",
    "PoolWarning",
    "ThreadPool",
]

Job = Callable[[], None]
# Called on the loop when a job waited its whole `wait` for a thread (the 503 answer).
Refused = Callable[[], None]
Loop = asyncio.AbstractEventLoop

# The one answer to a request that found no free thread in time, for both feeders: a 503
# whose Retry-After tells the client the refusal is momentary (RFC 9110 section 10.2.3).
# The server adds its usual Content-Type and Content-Length around the body.
BUSY_STATUS = 503
BUSY_RETRY_AFTER = (b"retry-after", b"1")
BUSY_MESSAGE = "All threads are busy, retry later\n"


class PoolFigures(NamedTuple):
    threads: int
    busy: int
    waiting: int  # jobs waiting for a thread now
    longest_wait: float  # seconds the oldest of them has waited so far
    refused: int  # jobs refused (no thread within their wait), ever
    waits: Histogram  # waits of the jobs that waited and then got a thread
    at_once: int  # jobs that got a thread at once (CountingThreadPool only; else 0)


class _Window(NamedTuple):
    """What happened since PoolWarning last looked."""

    waited: int
    refused: int
    longest_wait: float


def _no_job() -> None:
    raise AssertionError("a parked thread ran no job")


# What `_work` finds when it must park (a job of its own: None stops a thread).
_PARK: Job = _no_job


class _Parked:
    """A pool thread's own place to wait for work: `wake` is held until it is woken."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()


class ThreadPool:
    """A fixed set of threads, started once and shared, with a bounded wait for a free one.

    A job either starts on a free thread, waits up to `wait` seconds for one, or is refused
    (`on_refused` runs on the loop): never an unbounded queue. `release()` must be called once
    per started job when it is done, from the loop that submitted it.
    """

    def __init__(self, size: int, name: str = "dualgate-thread") -> None:
        self.size = size
        # Jobs wait in `_pending` (first in, first out) for a thread: one that finishes a job
        # takes the next before it parks; parked threads are woken one at a time, the one
        # parked last first (its stack and the application's objects are still in the CPU's
        # caches; at one request at a time the same thread serves them all), and a woken
        # thread wakes the next if jobs still wait. One wake-up in flight at a time, as
        # queue.SimpleQueue does, but not a thread picked from all of them: with threads
        # waiting on one shared lock, each job woke a different one and cost four times the
        # context switches. All three under `_lock`.
        self._parked: list[_Parked] = []
        self._pending: deque[Job | None] = deque()
        self._waking = False
        self._lock = threading.Lock()
        self._free = size
        # Told True when the last free thread is taken and False when one frees again (on the
        # loop, under the pool's lock: it must not call back into the pool). A worker process
        # stops accepting in between (server.py, ServerHooks.pause_when_busy).
        self.on_full: Callable[[bool], None] | None = None
        # Jobs waiting for a thread: (job, on_refused, deadline, since), oldest first; `since` is
        # time.monotonic() when it began to wait.
        self._waiting: deque[tuple[Job, Callable[[], None], float, float]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        # Counted on the slow paths only (under the lock): see the module docstring.
        self._refused = 0
        self._waits = Histogram(WAIT_BOUNDS)
        self._window_waited = 0
        self._window_refused = 0
        self._window_longest = 0.0
        self._threads = [
            threading.Thread(
                target=self._work, args=(_Parked(),), name=f"{name}-{index}", daemon=True
            )
            for index in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, parked: _Parked) -> None:
        lock = self._lock
        pending = self._pending
        while True:
            with lock:
                job = pending.popleft() if pending else _PARK
                if job is _PARK:
                    self._parked.append(parked)
            if job is _PARK:
                parked.wake.acquire()  # released by _wake_one
                with lock:
                    self._waking = False
                    job = pending.popleft() if pending else _PARK
                    if pending:
                        self._wake_one()  # one more thread for what is still waiting
                if job is _PARK:
                    continue  # a thread done with its job took it meanwhile: park again
            if job is None:
                return
            try:
                job()
            except BaseException:  # a job must never take its thread down
                error_logger.exception("Pool thread job failed")

    def _hand(self, job: Job | None) -> None:
        """Under the lock: queue the job (None stops a thread) and wake a parked thread for
        it, unless one is waking already (it wakes the next if jobs still wait then)."""
        self._pending.append(job)
        if not self._waking:
            self._wake_one()

    def _wake_one(self) -> None:
        """Under the lock: wake the thread parked last, if one is parked."""
        if self._parked:
            self._waking = True
            self._parked.pop().wake.release()

    def submit(self, job: Job, on_refused: Refused, wait: float, loop: Loop) -> None:
        with self._lock:
            if self._free > 0:
                self._free -= 1
                self._hand(job)
                if self._free == 0 and self.on_full is not None:
                    self.on_full(True)
                return
            if wait > 0:
                deadline = loop.time() + wait
                self._waiting.append((job, on_refused, deadline, time.monotonic()))
                self._window_waited += 1
                if self._expiry is None or deadline < self._expiry.when():
                    # One timer for all waiters: a timer per waiting request cost the loop
                    # more than the wait itself under load.
                    if self._expiry is not None:
                        self._expiry.cancel()
                    self._expiry = loop.call_at(deadline, self._expire, loop)
                return
            self._refused += 1
            self._window_refused += 1
        on_refused()

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        with self._lock:
            self._expiry = None
            expired = [entry for entry in self._waiting if entry[2] <= now]
            for entry in expired:
                self._waiting.remove(entry)
            if self._waiting:
                soonest = min(entry[2] for entry in self._waiting)
                self._expiry = loop.call_at(soonest, self._expire, loop)
            if expired:
                self._refused += len(expired)
                self._window_refused += len(expired)
                waited = time.monotonic() - expired[0][3]
                self._window_longest = max(self._window_longest, waited)
        for _job, on_refused, _deadline, _since in expired:
            on_refused()

    def _give_to_waiting(self) -> bool:
        """Under the lock: hand a freed thread to the job waiting longest, if one waits."""
        if not self._waiting:
            return False
        job, _on_refused, _deadline, since = self._waiting.popleft()
        self._hand(job)
        waited = time.monotonic() - since
        self._waits.observe(waited)
        self._window_longest = max(self._window_longest, waited)
        return True

    def release(self) -> None:
        with self._lock:
            if not self._give_to_waiting():
                self._free += 1
                if self._free == 1 and self.on_full is not None:
                    self.on_full(False)

    def release_from_thread(self, loop: Loop) -> None:
        """`release`, from the pool thread whose job is done, so the loop need not wake for it
        (a thread that wrote its response itself: wsgi/threads.py). `on_full` is still told on
        the loop, where it reads the pool afresh."""
        with self._lock:
            if self._give_to_waiting():
                return
            self._free += 1
            if self._free != 1 or self.on_full is None:
                return
        loop.call_soon_threadsafe(self._tell_not_full)

    def _tell_not_full(self) -> None:
        with self._lock:
            # Full again since the thread freed up (a job taken meanwhile): then nothing changed.
            if self._free > 0 and self.on_full is not None:
                self.on_full(False)

    def figures(self) -> PoolFigures:
        """The pool now; safe from any thread."""
        with self._lock:
            longest = time.monotonic() - self._waiting[0][3] if self._waiting else 0.0
            return PoolFigures(
                threads=self.size,
                busy=self.size - self._free,
                waiting=len(self._waiting),
                longest_wait=longest,
                refused=self._refused,
                waits=self._waits.copy(),
                at_once=self._at_once(),
            )

    def _at_once(self) -> int:
        return 0

    def take_window(self) -> _Window:
        """What happened since the last call (for PoolWarning), and start afresh."""
        with self._lock:
            window = _Window(self._window_waited, self._window_refused, self._window_longest)
            self._window_waited = self._window_refused = 0
            self._window_longest = 0.0
            return window

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the threads once their jobs end, waiting at most `timeout` seconds in all."""
        with self._lock:
            for _ in self._threads:
                self._hand(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class CountingThreadPool(ThreadPool):
    """A ThreadPool that also counts every job submitted (metrics on).

    A plain pool takes no step for a job that finds a free thread; this one takes one, so that
    the wait histogram can put those jobs in its first bucket.
    """

    def __init__(self, size: int, name: str = "dualgate-thread") -> None:
        super().__init__(size, name)
        self._submitted = 0

    def submit(self, job: Job, on_refused: Refused, wait: float, loop: Loop) -> None:
        self._submitted += 1
        ThreadPool.submit(self, job, on_refused, wait, loop)

    def _at_once(self) -> int:
        # Every job submitted got a thread at once, got one after waiting, was refused, or waits
        # now. Read on the loop, where jobs are submitted, this is exact; from another thread a
        # job being submitted may count here for a moment before it is seen waiting.
        settled = self._waits.count + self._refused + len(self._waiting)
        return max(0, self._submitted - settled)


class PoolWarning:
    """Says in dualgate.error, at most once per `interval` seconds, that requests waited for a
    thread, with the figures: so an operator without metrics learns that --threads is low."""

    def __init__(self, pool: ThreadPool, interval: float) -> None:
        self._pool = pool
        self._interval = interval
        self._last: float | None = None

    def check(self, now: float) -> None:
        """Called regularly (once a second) with time.monotonic()."""
        if self._last is not None and now - self._last < self._interval:
            return  # what happens meanwhile is kept for the next warning
        figures = self._pool.figures()
        window = self._pool.take_window()
        if not window.waited and not figures.waiting:
            return
        self._last = now
        error_logger.warning(
            "WSGI requests are waiting for a pool thread: %d threads, %d busy, %d waiting now, "
            "longest wait %.2fs; %d waited and %d got a 503 since the last warning "
            "(--threads may be too low)",
            figures.threads,
            figures.busy,
            figures.waiting,
            max(figures.longest_wait, window.longest_wait),
            window.waited,
            window.refused,
        )
