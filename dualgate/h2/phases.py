"""The phases of one HTTP/2 connection and of each of its streams, and the moves between them.

Theory of operation, the connection. It is in exactly one phase, moves only as `MOVES` allows,
and each phase names the connection-wide deadline that runs in it (a header block left
unfinished runs the head deadline in any phase: no other frame may come until it ends):

    OPENING ──first request──> ACTIVE ──last stream done──> IDLE ──a request──> ACTIVE
    OPENING ──first request, answered or refused at once──> IDLE
    OPENING, IDLE, ACTIVE ──graceful stop──> NOTICE ──PING acknowledged, or 1 s──> DRAINING
    DRAINING ──no stream left──> CLOSED
    any phase ──connection error, flood, timeout, EOF, client GOAWAY──> CLOSED

- OPENING: the preface has come; no request head yet (head deadline: a client that connects
  must ask for something soon, as on HTTP/1.1).
- IDLE: no stream is live (keep-alive deadline).
- ACTIVE: streams are live; no connection-wide deadline, each stream has its own.
- NOTICE: the first GOAWAY (last stream 2^31-1, RFC 9113 section 6.8) and a PING are out;
  requests still arrive and are served (they may have crossed the GOAWAY on the wire).
- DRAINING: the final GOAWAY names the last stream served; streams above it are refused,
  those at or below it finish (within the server's graceful timeout), then the connection
  closes.
- CLOSED: the last frames (a GOAWAY at most) are being written; nothing is read any more.

Theory of operation, a stream, as its handler sees it. A handler runs from `start` until it
ends its response or resets the stream, whatever happened on the wire meanwhile:

    PENDING ──a handler slot──> RUNNING ──response ended, all of it sent──> DONE
       │                          │ ──response ended, bytes wait for the window──> FLUSHING
       │                          │ ──reset, timeout, connection lost──> ORPHANED
       └──reset before start──> DONE                  FLUSHING ──sent, or reset──> DONE
                                                      ORPHANED ──handler ends──> DONE

- PENDING: the head is checked; it waits for one of `max_concurrent_streams` handler slots.
- RUNNING: the handler runs; the stream is open on the wire.
- FLUSHING: the handler is done; its last bytes wait for the client's window (write deadline).
- ORPHANED: the stream is closed on the wire, the handler not finished: it still holds a slot,
  so a client that resets streams cannot make more handlers run than the limit
  (CVE-2023-44487).
- DONE: gone from the connection's table.
"""

from __future__ import annotations

import enum

__all__ = ["MOVES", "STREAM_MOVES", "Phase", "StreamPhase"]


class Phase(enum.Enum):
    OPENING = "opening"
    IDLE = "idle"
    ACTIVE = "active"
    NOTICE = "notice"
    DRAINING = "draining"
    CLOSED = "closed"


class StreamPhase(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    FLUSHING = "flushing"
    ORPHANED = "orphaned"
    DONE = "done"


_OPENING, _IDLE, _ACTIVE, _NOTICE, _DRAINING, _CLOSED = Phase

# Where each phase may go next; H2Core._move checks every move against it.
MOVES: dict[Phase, set[Phase]] = {
    _OPENING: {_IDLE, _ACTIVE, _NOTICE, _CLOSED},
    _IDLE: {_ACTIVE, _NOTICE, _CLOSED},
    _ACTIVE: {_IDLE, _NOTICE, _CLOSED},
    _NOTICE: {_DRAINING, _CLOSED},
    _DRAINING: {_CLOSED},
    _CLOSED: {_CLOSED},
}

_PENDING, _RUNNING, _FLUSHING, _ORPHANED, _DONE = StreamPhase

# Where each stream phase may go next; Stream._move checks every move against it.
STREAM_MOVES: dict[StreamPhase, set[StreamPhase]] = {
    _PENDING: {_RUNNING, _DONE},
    _RUNNING: {_FLUSHING, _ORPHANED, _DONE},
    _FLUSHING: {_DONE},
    _ORPHANED: {_DONE},
    _DONE: {_DONE},
}
