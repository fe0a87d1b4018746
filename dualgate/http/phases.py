"""The phases of one HTTP/1.1 connection, and the moves between them.

Theory of operation. A connection is always in exactly one phase; it moves only as `MOVES`
allows, and each phase names the deadline that runs in it:

    IDLE ──bytes──> HEAD ──head with a body──> BODY ──body ends──> RESPONDING
      ^               │                          │                     │
      │               └──head without a body─────┼────────────────────>┤
      │                                          │ response done first │
      │                                          v                     │
      ├────────────body ends─────────────── DRAINING                   │
      └───────────────────response done, keep-alive────────────────────┤
                                                                       ├──101──> UPGRADED
    any phase ──refusal, timeout, error, close──> CLOSED               │
    IDLE ──the HTTP/2 preface, or ALPN h2──> UPGRADED

- IDLE: waiting for a request (keep-alive deadline).
- HEAD: a request head is arriving (head deadline; when it passes, 408).
- BODY: the request has been handed to its handler and its body is still arriving (body
  deadline, suspended while reading is paused because the application is not taking bytes).
  The response may already be under way (an ASGI echo).
- RESPONDING: the request is complete and its response is not; no read deadline (the
  application may take its time), a write timeout while the client takes no bytes.
- DRAINING: the response finished before the body did: the rest is read and dropped, up to
  `_MAX_DRAIN` bytes, so the connection can be kept.
- UPGRADED: the transport belongs to another protocol (a WebSocket, or HTTP/2 from the start:
  h2/cycles.py); nothing here runs again.
- CLOSED: the transport is closed or closing.

"""

from __future__ import annotations

import enum

__all__ = ["MOVES", "ConnectionPhase"]


ConnectionPhase = enum.Enum("ConnectionPhase", "IDLE HEAD BODY RESPONDING DRAINING UPGRADED CLOSED")
_IDLE, _HEAD, _BODY, _RESPONDING, _DRAINING, _UPGRADED, _CLOSED = ConnectionPhase

# Where each phase may go next; HTTPProtocol._move checks every move against it.
MOVES: dict[ConnectionPhase, set[ConnectionPhase]] = {
    _IDLE: {_HEAD, _UPGRADED, _CLOSED},
    _HEAD: {_BODY, _RESPONDING, _CLOSED},
    _BODY: {_RESPONDING, _DRAINING, _CLOSED},
    _RESPONDING: {_IDLE, _HEAD, _UPGRADED, _CLOSED},
    _DRAINING: {_IDLE, _HEAD, _CLOSED},
    _UPGRADED: {_CLOSED},
    _CLOSED: {_CLOSED},
}
