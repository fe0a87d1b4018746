"""The answer to one opening handshake, as bytes: the 101, a denial response or a refusal.

Rules of this file:
- No I/O and no phases: protocol.py writes what these return and moves its own phase.
- One answer per handshake, counted (metrics, while they are on) and logged (the access line,
  through the same `log_access` as HTTP's) once, when it is complete: at the 101, at the end
  of a denial's body, or with a refusal.
- The 101 and the denial are wsproto's (it computes Sec-WebSocket-Accept and negotiates the
  extension); a refusal is the HTTP core's (`refusal_response`). All carry the server's Date
  and Server headers as HTTP responses do, formatted once a second (http/state.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.extensions import Extension

from dualgate.http.framing import refusal_response
from dualgate.http.grammar import Headers
from dualgate.logs import log_access
from dualgate.ws.deflate import BoundedDeflate
from dualgate.ws.handshake import Handshake, HandshakeRefusal, HandshakeRequest, check_handshake

if TYPE_CHECKING:
    from dualgate.http.state import ServerState

__all__ = ["Answer"]


class Answer:
    """The server's answer to one opening handshake, and the access line it makes."""

    def __init__(
        self, request: HandshakeRequest, state: ServerState, client: tuple[str, int] | None
    ) -> None:
        self._request = request
        self._state = state
        self._client = client
        self._started = time.monotonic()
        self._status = 0
        self._sent = 0
        self._ws: WSConnection | None = None  # wsproto, once the handshake passed the checks
        self._deflate = False

    def check(self) -> Handshake | HandshakeRefusal:
        """The handshake, valid (the application is to answer it), or the refusal it gets."""
        result = check_handshake(self._request, deflate=self._state.config.ws_per_message_deflate)
        if isinstance(result, HandshakeRefusal):
            return result
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(_wsproto_headers(result), self._request.target)
            next(ws.events())
        except Exception:  # wsproto refused what the checks let through: still the client's fault
            return HandshakeRefusal(400, "Malformed WebSocket handshake")
        self._ws = ws
        self._deflate = result.deflate_offer is not None
        return result

    def accept(self, subprotocol: str | None, headers: Headers) -> tuple[bytes, Connection]:
        """The 101, and the wsproto connection that frames from then on."""
        ws = self._ws
        assert ws is not None
        extensions: list[Extension] = []
        if self._deflate:
            extensions.append(BoundedDeflate(self._state.config.ws_max_size))
        data = ws.send(
            AcceptConnection(
                subprotocol=subprotocol,
                extensions=extensions,
                extra_headers=headers + self._state.default_headers,
            )
        )
        assert ws.connection is not None  # wsproto makes it with the 101
        self._answered(101)
        return data, ws.connection

    def deny(self, status: int, headers: Headers) -> bytes:
        """The head of a denial response (the WebSocket Denial Response extension)."""
        assert self._ws is not None
        self._status = status
        return self._ws.send(
            RejectConnection(
                status_code=status,
                headers=[*headers, *self._state.default_headers, (b"connection", b"close")],
                has_body=True,
            )
        )

    def deny_body(self, body: bytes, more: bool) -> bytes:
        assert self._ws is not None
        self._sent += len(body)
        data = self._ws.send(RejectData(data=body, body_finished=not more))
        if not more:
            self._answered(self._status)
        return data

    def refuse(
        self, status: int, reason: str, *, retry_after: bool = False, headers: Headers | None = None
    ) -> bytes:
        """A short plain-text HTTP answer instead of the 101 (the connection closes after it)."""
        state = self._state
        data = refusal_response(
            status,
            reason,
            head_request=False,
            retry_after=retry_after,
            extra=state.default_headers,
            extra_head=state.default_head,
            more_headers=headers,
        )
        self._sent = len(data) - data.index(b"\r\n\r\n") - 4  # the body's length
        self._answered(status)
        return data

    def _answered(self, status: int) -> None:
        state = self._state
        if state.metrics.metered:
            state.metrics.response("websocket", status, time.monotonic() - self._started)
        if state.access_log:
            request = self._request
            log_access(
                self._client,
                b"GET",
                request.target,
                request.http_version,
                status,
                self._sent,
                self._started,
                request.headers,
            )


def _wsproto_headers(handshake: Handshake) -> Headers:
    """The request as wsproto is to see it: checked already, so only what it needs, canonical.

    The Host is a placeholder: wsproto decodes it with the idna codec, which refuses some valid
    host names (a label over 63 characters), and never uses it on the server side.
    """
    headers: Headers = [
        (b"host", b"localhost"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", handshake.key),
        (b"sec-websocket-version", b"13"),
    ]
    if handshake.subprotocols:
        headers.append((b"sec-websocket-protocol", ", ".join(handshake.subprotocols).encode()))
    if handshake.deflate_offer is not None:
        headers.append((b"sec-websocket-extensions", handshake.deflate_offer.encode("ascii")))
    return headers
