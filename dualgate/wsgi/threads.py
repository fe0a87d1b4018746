"""The only code that crosses threads: the thread pool and the thread side of a request.

Rules of this file:
- Pool threads never touch a RequestCycle directly; they post to the loop through the
  handler's `LoopInbox`, which keeps the posts of one request in order and wakes the loop once
  for however many posts pile up before it runs.
- The loop never blocks on a thread. Threads block only on their own condition variables, and
  every wait re-checks `cycle.disconnected`, so a vanished client frees its thread.
- Backpressure lives in two places: `_ThreadBody` stops taking bytes from the cycle above the
  high-water mark (the cycle then pauses the socket), and `ThreadSink.write` waits while more
  than the high-water mark is queued towards a slow client.
- A request whose body has fully arrived, and a small complete response, cross threads once
  each way: the job going in, and one post coming back. On a plain TCP connection (wire.py)
  the thread writes such a response to the socket itself and the loop learns of it at its next
  event on the connection: one crossing in all, unless the loop is waiting for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any
from wsgiref.types import WSGIApplication

from dualgate.http.cycle import RequestCycle
from dualgate.http.paths import strip_root_path
from dualgate.http.wire import DirectWire
from dualgate.wsgi.bridge import (
    BodySource,
    BytesSource,
    ClientDisconnected,
    build_environ,
    path_info_from_raw,
    run_wsgi,
)
from dualgate.wsgi.pool import BUSY_MESSAGE, BUSY_RETRY_AFTER, BUSY_STATUS, ThreadPool

__all__ = ["WSGIHandler"]

# How often a waiting thread wakes to notice a vanished client it was not told about.
_WAKE_INTERVAL = 0.5


class LoopInbox:
    """Calls posted from pool threads, run on the loop in the order they came.

    `loop.call_soon_threadsafe` writes to the loop's wake-up pipe on every call, and the loop
    reads it back: two system calls per post. Under load several workers finish while the loop
    is busy; their posts then share one wake-up.
    """

    __slots__ = ("_calls", "_lock", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, call: Callable[..., None], *args: Any) -> None:
        """From any thread."""
        self._calls.append((call, args))
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            # Cleared before running, so a post made meanwhile schedules another run rather
            # than waiting for one that has already begun.
            self._scheduled = False
        calls = self._calls
        while calls:
            call, args = calls.popleft()
            call(*args)


class _ThreadBody:
    """wsgi.input's source for a body still arriving: chunks handed over from the loop."""

    def __init__(
        self, cycle: RequestCycle, loop: asyncio.AbstractEventLoop, high_water: int
    ) -> None:
        self._cycle = cycle
        self._loop = loop
        self._high_water = high_water
        self._ready = threading.Condition(threading.Lock())
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already read
        self._unread = 0
        self._ended = False
        self._gone = False
        self._wants_pump = True
        if cycle.body_buffered:
            # What arrived before a thread was taken goes over at once.
            self._wants_pump = False
            self.pump()

    def pump(self) -> None:
        """On the loop: move what the cycle has buffered over to this thread-side buffer."""
        cycle = self._cycle
        with self._ready:
            if self._unread >= self._high_water:
                self._wants_pump = True
                return
        data, more = cycle.take_body()
        with self._ready:
            if data:
                self._chunks.append(data)
                self._unread += len(data)
            if not more:
                if cycle.body_complete:
                    self._ended = True
                else:
                    self._gone = True
            self._ready.notify()
        if more:
            cycle.when_body_ready(self.pump)

    def read(self, size: int) -> bytes:
        with self._ready:
            while not self._chunks:
                if self._ended:
                    return b""
                if self._gone or self._cycle.disconnected:
                    raise ClientDisconnected("the client went away before the request body ended")
                if self._wants_pump:
                    self._wants_pump = False
                    self._loop.call_soon_threadsafe(self.pump)
                self._ready.wait(_WAKE_INTERVAL)
            chunk = self._chunks[0]
            start = self._offset
            if 0 <= size < len(chunk) - start:
                # Read the front of a large chunk without copying the rest of it.
                self._offset = start + size
                chunk = chunk[start : start + size]
            else:
                self._chunks.popleft()
                self._offset = 0
                if start:
                    chunk = chunk[start:]
            self._unread -= len(chunk)
            if self._wants_pump and self._unread < self._high_water // 2:
                self._wants_pump = False
                self._loop.call_soon_threadsafe(self.pump)
            return chunk


class ThreadSink:
    """The response of one request, from its pool thread to the loop.

    `start` and `end` only record: the job's single post at completion carries them, so a small
    response crosses threads once; with a `wire` lent, `complete` writes it to the socket
    itself and need not post at all. `write` posts at once and waits while too much is queued.
    """

    def __init__(
        self,
        cycle: RequestCycle,
        loop: asyncio.AbstractEventLoop,
        inbox: LoopInbox,
        pool: ThreadPool,
        high_water: int,
        wire: DirectWire | None = None,
    ) -> None:
        self._cycle = cycle
        self._loop = loop
        self._post = inbox.post
        self._pool = pool
        self._high_water = high_water
        self._wire = wire
        self._head: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        self._tail: bytes | None = None
        self._aborted = False
        self._queued = 0
        self._unsent: list[bytes] = []
        self._unsent_head: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        self._flush_posted = False
        self._drained: threading.Condition | None = None

    def start(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._head = (status, headers, reason)

    def _give_back_wire(self) -> None:
        """The response goes out through the loop: the loop may write from the first post on."""
        wire = self._wire
        if wire is not None:
            self._wire = None
            wire.give_back(self._cycle)

    def write(self, data: bytes) -> None:
        cycle = self._cycle
        if cycle.disconnected:
            raise ClientDisconnected("the client went away")
        if self._wire is not None:
            self._give_back_wire()
        drained = self._drained
        if drained is None:
            drained = self._drained = threading.Condition(threading.Lock())
        with drained:
            if self._head is not None:
                # Taken here, in the worker, so complete() can never send it a second time.
                self._unsent_head, self._head = self._head, None
            self._unsent.append(data)
            self._queued += len(data)
            post = not self._flush_posted
            self._flush_posted = True
        if post:
            # One post carries every chunk written until the loop gets to it.
            self._post(self._flush_on_loop)
        with drained:
            if self._queued > self._high_water:
                # Wait down to half the mark, not just under it, so the next chunks go out
                # together instead of one thread wake-up per chunk.
                while self._queued > self._high_water // 2 and not cycle.disconnected:
                    drained.wait(_WAKE_INTERVAL)
        if cycle.disconnected:
            raise ClientDisconnected("the client went away")

    def _flush_on_loop(self) -> None:
        drained = self._drained
        assert drained is not None
        with drained:
            chunks = self._unsent
            self._unsent = []
            self._flush_posted = False
            head, self._unsent_head = self._unsent_head, None
        cycle = self._cycle
        if head is not None:
            cycle.send_head(*head)
        # One write for every chunk queued: fewer calls, and a transport that failed at the
        # first write is not written again and again before its connection_lost (asyncio logs
        # each write to a lost transport from the fifth on).
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        cycle.send_body(body)
        cycle.when_writable(functools.partial(self._sent, len(body)))

    def _sent(self, size: int) -> None:
        drained = self._drained
        assert drained is not None
        with drained:
            self._queued -= size
            if self._queued <= self._high_water // 2:
                drained.notify()

    def sendfile(self, file: Any, offset: int, count: int) -> bool:
        if not self._cycle.can_sendfile:
            # Under TLS or without a loop sendfile: say "cannot" before anything is sent, so
            # run_wsgi sends the file in blocks through write(), reading it in this thread
            # rather than on the loop.
            return False
        self._give_back_wire()
        head, self._head = self._head, None
        future = asyncio.run_coroutine_threadsafe(
            self._sendfile_on_loop(head, file, offset, count), self._loop
        )
        try:
            future.result()
        except (ConnectionError, RuntimeError) as exc:
            raise ClientDisconnected(str(exc)) from exc
        if self._cycle.disconnected:
            raise ClientDisconnected("the client went away")
        return True

    async def _sendfile_on_loop(
        self,
        head: tuple[int, list[tuple[bytes, bytes]], bytes] | None,
        file: Any,
        offset: int,
        count: int,
    ) -> None:
        if head is not None:
            self._cycle.send_head(*head)
        await self._cycle.sendfile(file, offset, count)

    def end(self, data: bytes) -> None:
        self._tail = data

    def abort(self) -> None:
        self._aborted = True

    def complete(self) -> None:
        """From the worker, once the application is done: the one post that finishes it all,
        or none when the thread writes the whole response itself."""
        head, tail = self._head, self._tail
        wire = self._wire
        if wire is not None:
            if head is not None and tail is not None and not self._aborted:
                if self._write_whole(wire, head, tail):
                    return
            else:
                self._give_back_wire()
        self._post(self._complete_on_loop, head, tail, self._aborted)

    def _write_whole(
        self,
        wire: DirectWire,
        head: tuple[int, list[tuple[bytes, bytes]], bytes],
        body: bytes,
    ) -> bool:
        """Write the whole response to the socket (wire.py); False when the loop must build it
        after all (an invalid head: its 500 and log line are the loop's)."""
        cycle = self._cycle
        status, headers, reason = head
        data = cycle.whole_response(status, headers, body, reason)
        if data is None:
            self._give_back_wire()
            return False
        written, settled = wire.write_last(cycle, data, not cycle.keep_alive)
        # The thread is free from here on: counted so without waiting for the loop.
        self._pool.release_from_thread(self._loop)
        if not settled:
            self._post(cycle.sent_directly, written, data[written:] if written else data)
        return True

    def _complete_on_loop(
        self,
        head: tuple[int, list[tuple[bytes, bytes]], bytes] | None,
        tail: bytes | None,
        aborted: bool,
    ) -> None:
        self._pool.release()
        cycle = self._cycle
        if aborted or tail is None:
            cycle.abort()
            return
        if head is not None:
            status, headers, reason = head
            cycle.respond(status, headers, tail, reason)
            return
        if tail:
            cycle.send_body(tail)
        cycle.finish()


class WSGIHandler:
    """Serves each RequestCycle by running a WSGI application on the thread pool."""

    def __init__(
        self,
        app: WSGIApplication,
        pool: ThreadPool,
        loop: asyncio.AbstractEventLoop,
        *,
        root_path: str,
        high_water: int,
        worker_wait: float,
        multiprocess: bool = False,
        proxy_root: str | None = None,
    ) -> None:
        """`proxy_root`: the part of `root_path` a proxy in front may strip (the server's root
        path, without the --mount prefix); all of it when None."""
        self.app = app
        self.multiprocess = multiprocess
        self.inbox = LoopInbox(loop)
        self.pool = pool
        self.loop = loop
        self.root_path = root_path
        self.proxy_root = root_path if proxy_root is None else proxy_root
        self.high_water = high_water
        self.worker_wait = worker_wait

    def __call__(self, cycle: RequestCycle) -> None:
        if cycle.disconnected:
            return
        if not (
            cycle.body_complete
            or cycle.request.expects_continue
            or cycle.body_buffered >= self.high_water
        ):
            # Wait on the loop for a first buffer-full (or the whole body), so a dribbling
            # upload holds no pool thread while it dribbles.
            cycle.when_body_ready(functools.partial(self, cycle))
            return
        source: BodySource
        wire = None
        if cycle.body_complete:
            source = BytesSource(cycle.take_body()[0])
            wire = cycle.lend_wire()
        else:
            source = _ThreadBody(cycle, self.loop, self.high_water)
        sink = ThreadSink(cycle, self.loop, self.inbox, self.pool, self.high_water, wire)
        context = contextvars.copy_context()
        job = functools.partial(context.run, self._run, cycle, source, sink)
        refuse = functools.partial(_refuse_busy, cycle, wire)
        self.pool.submit(job, refuse, self.worker_wait, self.loop)

    def _run(self, cycle: RequestCycle, source: BodySource, sink: ThreadSink) -> None:
        try:
            if not cycle.disconnected:
                run_wsgi(self.app, self.environ(cycle, source), sink)
        finally:
            sink.complete()

    def environ(self, cycle: RequestCycle, source: BodySource) -> dict[str, Any]:
        request = cycle.request
        raw_path, _, query = request.target.partition(b"?")
        path_info = path_info_from_raw(raw_path)
        script_name = self.root_path
        stripped = self.proxy_root
        if stripped != script_name and strip_root_path(path_info, stripped) is None:
            # Under a --mount whose server root path a proxy stripped: put that part back, so
            # the mount's prefix comes off below.
            path_info = stripped + path_info
        below = strip_root_path(path_info, script_name)
        if below is not None:
            path_info = below
        return build_environ(
            method=request.method.decode("ascii"),
            script_name=script_name,
            path_info=path_info,
            query_string=query.decode("latin-1"),
            headers=request.headers,
            http_version=request.http_version.decode("ascii"),
            scheme=cycle.scheme,
            client=cycle.client,
            server=cycle.server,
            body=source,
            multiprocess=self.multiprocess,
        )


def _refuse_busy(cycle: RequestCycle, wire: DirectWire | None) -> None:
    if wire is not None:
        wire.give_back(cycle)  # the job never ran: the loop writes the 503
    if not cycle.disconnected:
        cycle.respond_error(BUSY_STATUS, BUSY_MESSAGE, [BUSY_RETRY_AFTER])
