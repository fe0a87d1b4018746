"""The phases of one WebSocket connection, and the moves between them.

Theory of operation. The HTTP core reads the upgrade request and hands the transport over
(protocol.py); from then on the connection is always in exactly one phase, and it moves only as
`MOVES` allows:

    HANDSHAKE ──websocket.accept (101)──> OPEN ──a Close frame sent──> CLOSING
        │                                   │                             │
        ├──websocket.http.response.start──> DENYING                       │
        │                                   │                             │
        │     refusal, 403, 500, 503        v  body done, peer gone       v  peer's Close, EOF,
        └────────────────────────────────> CLOSED <──────────────────────────   the deadline
                                            ^
                      OPEN: the peer's Close answered (the server closes TCP first, RFC 6455
                      7.1.1), the peer gone, a peer that takes no bytes

- HANDSHAKE: the application has been called and has websocket.connect; it has not answered.
  Reading is paused, and bytes that came early wait for the 101 (RFC 6455 4.1: a client waits
  for it; one that does not is served anyway, once accepted). At most --ws-handshake-timeout.
- OPEN: frames both ways. Incoming messages queue for receive(); reading pauses while the queue
  is full (--ws-max-queue messages or --body-buffer-size bytes). send() waits while the
  transport is paused, at most --ws-write-timeout.
- DENYING: the application answered with a denial response (websocket.http.response.*) whose
  body is still being written.
- CLOSING: a Close frame went out (the application's websocket.close, its error or return, a
  graceful shutdown, or a failure: a protocol error, a message too big, a ping not answered).
  Normally the peer's Close is awaited; after a failure the write side is shut and incoming
  bytes are dropped until the peer closes, so the peer reads the Close frame instead of a
  reset. Either way at most --ws-handshake-timeout, then the transport is aborted.
- CLOSED: the TCP connection is closed or closing: nothing more is read or written.

The application hears `websocket.disconnect` once the connection is closed, after every message
queued before it (session.py).
"""

from __future__ import annotations

import enum

__all__ = ["MOVES", "Phase"]


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    DENYING = "denying"
    CLOSING = "closing"
    CLOSED = "closed"


_HANDSHAKE, _OPEN, _DENYING, _CLOSING, _CLOSED = Phase

# Where each phase may go next; WebSocketProtocol._move checks every move against it.
MOVES: dict[Phase, set[Phase]] = {
    _HANDSHAKE: {_OPEN, _DENYING, _CLOSED},
    _OPEN: {_CLOSING, _CLOSED},
    _DENYING: {_CLOSED},
    _CLOSING: {_CLOSED},
    _CLOSED: {_CLOSED},
}
