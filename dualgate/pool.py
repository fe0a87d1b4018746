"""The bounded pool of worker threads that run WSGI applications, and its "pool full" answer.

It is shared by the server (workers.py) and by `WSGIMiddleware`, which runs under any ASGI
server: so this module imports nothing of dualgate's HTTP core (nor h11), only the stdlib and
dualgate's loggers.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from dualgate.logs import error_logger

__all__ = ["BUSY_MESSAGE", "BUSY_RETRY_AFTER", "BUSY_STATUS", "Job", "WorkerPool"]

Job = Callable[[], None]

# The one answer to a request that found no free thread in time, for both feeders: a 503
# whose Retry-After tells the client the refusal is momentary (RFC 9110 section 10.2.3).
# The server adds its usual Content-Type and Content-Length around the body.
BUSY_STATUS = 503
BUSY_RETRY_AFTER = (b"retry-after", b"1")
BUSY_MESSAGE = "All workers are busy, retry later\n"


class WorkerPool:
    """A fixed set of threads, started once and shared, with a bounded wait for a free one.

    A job either starts on a free thread, waits up to `wait` seconds for one, or is refused
    (`on_refused` runs on the loop): never an unbounded queue. `release()` must be called once
    per started job when it is done, from the loop that submitted it.
    """

    def __init__(self, size: int, name: str = "dualgate-worker") -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._free = size
        # Told True when the last free thread is taken and False when one frees again (on the
        # loop, under the pool's lock: it must not call back into the pool). A worker process
        # stops accepting in between (server.py, ServerHooks.pause_when_busy).
        self.on_full: Callable[[bool], None] | None = None
        # Jobs waiting for a thread: (job, on_refused, deadline), oldest first.
        self._waiting: deque[tuple[Job, Callable[[], None], float]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
            for index in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException:  # a job must never take its thread down
                error_logger.exception("Worker job failed")

    def submit(
        self,
        job: Job,
        on_refused: Callable[[], None],
        wait: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        with self._lock:
            if self._free > 0:
                self._free -= 1
                self._jobs.put(job)
                if self._free == 0 and self.on_full is not None:
                    self.on_full(True)
                return
            if wait > 0:
                deadline = loop.time() + wait
                self._waiting.append((job, on_refused, deadline))
                if self._expiry is None or deadline < self._expiry.when():
                    # One timer for all waiters: a timer per waiting request cost the loop
                    # more than the wait itself under load.
                    if self._expiry is not None:
                        self._expiry.cancel()
                    self._expiry = loop.call_at(deadline, self._expire, loop)
                return
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
        for _job, on_refused, _deadline in expired:
            on_refused()

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._jobs.put(self._waiting.popleft()[0])
            else:
                self._free += 1
                if self._free == 1 and self.on_full is not None:
                    self.on_full(False)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the threads once their jobs end, waiting at most `timeout` seconds in all."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
