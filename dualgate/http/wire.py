"""`DirectWire`: a plain-TCP connection's socket, lent to one pool thread for one whole response.

Why: a WSGI response written by the loop costs a second thread crossing per request (the post
back, a write to the loop's wake-up pipe and a read of it, and the loop's turn to write). A pool
thread that writes a complete response to the socket itself, and lets the loop learn of it at
the loop's next event on the connection, costs one crossing: the job going in.

Rules of this file (why it is safe):
- Only asyncio's own selector transport lends its socket (`wire_fd`). It writes to the socket
  from its own buffer, and only while that buffer holds bytes. TLS transports, dualgate's TLS
  layer and uvloop's transports never lend theirs (uvloop closes its handle before it calls
  `connection_lost`, so the rule on closing below would not hold there).
- The loop lends the wire (`lend`) to a cycle only while the transport's buffer is empty and
  writing is not paused, and only for a request whose body is complete; from then on nothing on
  the loop writes to the connection until the thread has given the wire back: every write of
  the cycle's response comes from the thread's posts, the reader holds whatever follows the
  request (nothing is refused or answered 100-continue meanwhile), and no deadline runs while
  a response is being made. The thread gives the wire back when it writes through the loop
  after all (a streamed body, a file, an abort), before its first post.
- The thread writes only under the wire's lock, only while the wire is lent to its cycle, and
  only while the connection is not gone: `connection_lost` marks it gone under the same lock,
  and asyncio closes the socket only after `connection_lost` returns. So a thread never writes
  to a closed descriptor, nor to one the OS has since given to another connection.
- One `os.write` of the whole response. What the socket does not take goes back to the loop
  with a post, and the loop writes the rest through the transport: the bytes stay in order and
  backpressure (pause_writing, the write timeout) is the transport's, as for any response.
- The loop learns of a response written in full without a wake-up: `claim()`, at its next
  event on the connection (the next request's bytes, EOF, the close, the deadline sweep, a
  graceful stop). Whenever the loop is waiting for the response with nothing else due to wake
  it (a pipelined request's bytes already read; a graceful stop), `claim()` finds the response
  not yet written and asks the thread to post instead (`_wake`); so does a response after which
  the connection closes, and every response of a connection that reports each response as it
  ends (access log, metrics, hooks: `always_wake`).
- What the loop learns late is held late: until its claim, a response written in full keeps its
  cycle (the request's head, the response's headers) referenced by the connection. So the
  thread also queues the wire on the server's `Written` queue, which the loop empties at its
  next event on *any* connection (a request read, a connection accepted) and at the sweep: an
  idle connection then holds nothing of its last request once the loop has run again, rather
  than until the sweep (up to a second; a burst of connections going idle together held one
  cycle each meanwhile, about 1 KiB of RSS per connection once freed, as the heap keeps it).
  Settling another connection's response there is what the sweep did already.
- Nor does an idle connection keep a wire (an object and a lock, about 0.2 KiB): once its
  response is over, on the loop, no thread holds the wire any more (it was claimed, or given
  back before the thread's last post), and the connection puts it on the server's spare list,
  from which the next lend on any connection takes it (`ServerState.spare_wires`). A wire whose
  connection is gone is never put back: a thread may still hold it, and it stays marked gone.
  A queued wire that was lent again meanwhile is only ever claimed for a response written in
  full on it, whichever connection that was for: the cycle says.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dualgate.http.cycle import RequestCycle

__all__ = ["DirectWire", "Written", "settle_written", "wire_fd"]

# The transport class whose socket may be lent (see the rules above); looked up by name, as
# asyncio does not export it.
_SELECTOR_SOCKET_TRANSPORT: type | None = getattr(
    asyncio.selector_events, "_SelectorSocketTransport", None
)


def wire_fd(transport: asyncio.BaseTransport) -> int:
    """The socket descriptor a pool thread may write to, or -1 when this transport lends none."""
    if _SELECTOR_SOCKET_TRANSPORT is None or type(transport) is not _SELECTOR_SOCKET_TRANSPORT:
        return -1
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


class DirectWire:
    """The wire of one connection: lent by the loop, written by at most one thread at a time."""

    __slots__ = (
        "_fd",
        "_finished",
        "_gone",
        "_lent",
        "_lock",
        "_queue",
        "_wake",
        "_written",
    )

    def __init__(self, queue: Written) -> None:
        self._lock = threading.Lock()
        self._fd = -1  # the socket of the connection it is lent for
        self._queue = queue
        self._gone = False
        self._lent: RequestCycle | None = None
        # A response the thread wrote in full, which the loop has not claimed yet.
        self._finished: RequestCycle | None = None
        self._written = 0
        self._wake = False

    # -- the loop's side ----------------------------------------------------------------

    def lend(self, cycle: RequestCycle, fd: int, always_wake: bool) -> None:
        """Lend the socket `fd` to the thread that makes `cycle`'s response; `always_wake`:
        the loop is to hear of the response at once (a post), whatever it is."""
        with self._lock:
            self._fd = fd
            self._lent = cycle
            self._wake = always_wake

    def claim(self) -> tuple[RequestCycle, int] | None:
        """The cycle whose response a thread wrote in full, and the bytes it wrote; or None,
        and the thread still holding the wire will post when it is done."""
        with self._lock:
            finished = self._finished
            if finished is not None:
                self._finished = None
                return finished, self._written
            if self._lent is not None:
                self._wake = True
            return None

    def claim_written(self) -> tuple[RequestCycle, int] | None:
        """`claim`, for a loop that is not waiting for this connection's response (the queue's
        drain): a response still being made is left as it is, to be written directly."""
        with self._lock:
            finished = self._finished
            if finished is None:
                return None
            self._finished = None
            return finished, self._written

    def lost(self) -> None:
        """The connection is gone (connection_lost, before asyncio closes the socket)."""
        with self._lock:
            self._gone = True

    # -- the thread's side --------------------------------------------------------------

    def give_back(self, cycle: RequestCycle) -> None:
        """The response goes through the loop after all (or, called on the loop, its job never
        ran): from now on only the loop writes."""
        with self._lock:
            if self._lent is cycle:
                self._lent = None

    def write_last(self, cycle: RequestCycle, data: bytes, closes: bool) -> tuple[int, bool]:
        """Write `data`, all that is left of the response, and give the wire back.

        Returns the bytes written and whether that is all the loop needs: False when it must be
        posted the rest (`data[written:]`, possibly all of it) and the response's end.
        """
        with self._lock:
            if self._lent is not cycle:
                return 0, False
            self._lent = None
            if self._gone:
                return 0, False
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                # Reset or broken: the loop's write meets the same error and closes.
                return 0, False
            if written < len(data) or self._wake or closes:
                return written, False
            self._finished = cycle
            self._written = written
            # deque.append is atomic: no lock of the loop's is taken, and nothing wakes it.
            self._queue.append(self)
            return written, True


# The wires whose response a thread wrote in full since the loop last looked: one per server
# (`ServerState.written`), appended to by pool threads, emptied by the loop (`settle_written`).
Written = deque[DirectWire]


def settle_written(queue: Written) -> None:
    """On the loop: finish every response a thread wrote in full itself, on whichever
    connection (the rules above). A wire already claimed at its own connection's event since
    it was queued has nothing to give: it is dropped."""
    while queue:
        claimed = queue.popleft().claim_written()
        if claimed is not None:
            claimed[0].sent_directly(claimed[1], b"")
