"""Flow control of one connection: reading paused or not, writing paused or not, the deadline.

The connection's only timer is a deadline (a float and its kind) checked by the server's sweep:
setting a float per request is far cheaper than a loop timer per request (about 10% of the
loop's time once went to call_later/cancel under load). A client that stops taking response
bytes is the exception: a loop timer runs only while the transport says writing is paused.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Callable

__all__ = ["GONE", "SENDS_PER_TURN", "Deadline", "FlowControl", "resolve"]


def resolve(future: asyncio.Future[None]) -> None:
    """Wake whoever awaits `future`, once (a callback may fire after a cancel)."""
    if not future.done():
        future.set_result(None)


# An application's sends between two loop turns, at most, while writing is not paused: a send
# that is not paused does not wait, so an app that only sends would keep the loop to itself
# and never hear that its client went away (connection_lost waits for a loop turn), writing on
# into a dead transport. Under asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES (5), so that the
# writes made meanwhile log nothing.
SENDS_PER_TURN = 4


class Deadline(enum.Enum):
    """What a connection is waiting for when its deadline passes."""

    NONE = "none"
    KEEP_ALIVE = "keep-alive"  # an idle connection between requests
    HEAD = "head"  # the rest of a request head
    BODY = "body"  # more request body bytes
    WRITE = "write"  # the client to take response bytes


class _Gone(asyncio.Transport):
    """What a lost connection's transport is replaced with (FlowControl.connection_lost, the
    HTTP/1.1, HTTP/2 and WebSocket protocols' connection_lost, and an HTTP/1.1 connection that
    handed its transport on): it takes nothing and says it is closing.

    Letting go of the real one matters under TLS: asyncio's SSL protocol behind it keeps a
    256 KiB read buffer and its SSL objects, and a connection's own objects refer to each other
    (the protocol, its flow control, its cycle), so whatever they still held was freed only by
    the cyclic GC's next full collection: hundreds of MiB of RSS under TLS clients that come and
    go, between collections (the soak found it, benchmarks/README.md)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        return None

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def is_closing(self) -> bool:
        return True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        return None


GONE: asyncio.Transport = _Gone()


class FlowControl:
    __slots__ = (
        "_on_write_timeout",
        "_transport",
        "_waiters",
        "_write_timeout",
        "_write_timer",
        "deadline",
        "deadline_kind",
        "loop",
        "reading_paused",
        "writing_paused",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        write_timeout: float,
        on_write_timeout: Callable[[], None],
    ) -> None:
        self._transport = transport
        self.loop = loop
        self.reading_paused = False
        self.writing_paused = False
        self._waiters: list[Callable[[], None]] = []
        self._write_timeout = write_timeout
        self._write_timer: asyncio.TimerHandle | None = None
        self._on_write_timeout = on_write_timeout
        self.deadline = 0.0  # loop time; 0.0 for none
        self.deadline_kind = Deadline.NONE

    # -- deadlines ----------------------------------------------------------------------

    def arm(self, kind: Deadline, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds
        self.deadline_kind = kind

    def disarm(self) -> None:
        self.deadline = 0.0
        self.deadline_kind = Deadline.NONE

    def expired(self, now: float) -> Deadline | None:
        """The kind of deadline that has passed by `now` (once), or None."""
        if self.deadline and now >= self.deadline:
            kind = self.deadline_kind
            self.disarm()
            return kind
        return None

    # -- reading ------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self._transport.resume_reading()

    # -- writing ------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.writing_paused = True
        # A client that stops reading must not hold a worker (or a task) forever.
        self._write_timer = self.loop.call_later(self._write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._wake()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if self.writing_paused:
            self._on_write_timeout()

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transport can take more bytes (at once if it can now)."""
        if self.writing_paused:
            self._waiters.append(callback)
        else:
            callback()

    async def drained(self) -> None:
        """Wait until the transport can take more bytes (or the connection is gone)."""
        if self.writing_paused:
            future: asyncio.Future[None] = self.loop.create_future()
            self._waiters.append(functools.partial(resolve, future))
            await future

    def _wake(self) -> None:
        if not self._waiters:
            return  # nothing waits: the common case at every close
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter()

    def connection_lost(self) -> None:
        """Nothing will be written any more: release everything waiting to write, and the
        transport (GONE stands in)."""
        self._transport = GONE
        self.writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self.disarm()
        self._wake()
