"""The start of a `--proxy-protocol` connection: the PROXY header, then (under TLS) the
handshake, then the HTTP protocol takes over the connection.

Rules of this file:
- Only a peer on `--forwarded-allow-ips` may send a PROXY header; any other connection is
  closed at once, before a byte of it is read.
- The header, and the TLS handshake after it, run under the request-head deadline: an
  `EdgeProtocol` is in `state.connections` (so the server's sweep and shutdown reach it) until
  it hands the connection over, and then the HTTP protocol is.
- Nothing reaches the application unless the header is valid: a malformed header, EOF, a
  failed handshake or the deadline closes the connection, with a debug line and no answer.
- The client the HTTP protocol is given is the address the header carries (None for a unix
  socket behind the proxy; the real peer for a LOCAL header, as health checks send); the
  bytes read past the header are the client's first bytes (its request, or its ClientHello).
"""

from __future__ import annotations

import asyncio
from typing import cast

from dualgate.edge.proxy_protocol import NEED_MORE, ProxyHeaderReader, ProxyProtocolError
from dualgate.edge.tls_bio import BIOTransport
from dualgate.http.connection import HTTPProtocol
from dualgate.http.state import ServerState
from dualgate.logs import error_logger

__all__ = ["EdgeProtocol"]


class EdgeProtocol(asyncio.Protocol):
    def __init__(
        self,
        state: ServerState,
        loop: asyncio.AbstractEventLoop,
        http: type[HTTPProtocol] = HTTPProtocol,
    ) -> None:
        self.state = state
        self.loop = loop
        self._http = http  # the protocol the connection is handed to (metered.py's, when on)
        self.transport: asyncio.Transport
        self._reader = ProxyHeaderReader()
        self._peer: tuple[str, int] | None = None
        self._deadline = 0.0
        self._client: tuple[str, int] | None = None
        self._tls: BIOTransport | None = None

    # -- the PROXY header -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        if not self.state.trust.peer_is_trusted(self._peer[0] if self._peer else None):
            error_logger.debug("%s: not trusted to send a PROXY header; closing", self._name())
            transport.close()
            return
        self.state.connections.add(self)
        self._deadline = self.loop.time() + self.state.config.timeout_request_head

    def data_received(self, data: bytes) -> None:
        try:
            header = self._reader.feed(data)
        except ProxyProtocolError as exc:
            error_logger.debug("%s: %s; closing", self._name(), exc)
            self.close()
            return
        if header is NEED_MORE:
            return
        self._client = self._peer if header.local else header.source
        tls = self.state.tls
        if tls is None:
            self._hand_over(self.transport, header.leftover)
            return
        # TLS starts after the header, from bytes already read: a BIOTransport (tls_bio.py).
        self._tls = bio = BIOTransport(
            self.transport, tls.context, self.loop, self._handshake_done, self._handshake_failed
        )
        self.transport.set_protocol(bio.raw_side)
        if header.leftover:
            bio.received(header.leftover)

    def eof_received(self) -> bool:
        error_logger.debug("%s: closed before a complete PROXY header", self._name())
        self._release()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()

    # -- handing over ---------------------------------------------------------------------

    def _handshake_done(self, bio: BIOTransport) -> None:
        self._hand_over(bio, b"")

    def _handshake_failed(self, exc: BaseException | None) -> None:
        if exc is not None:
            error_logger.debug("%s: TLS handshake failed: %s", self._name(), exc)
        self._release()

    def _hand_over(self, transport: asyncio.Transport, leftover: bytes) -> None:
        self._release()
        protocol = self._http(self.state, self.loop, client=self._client)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if leftover:
            protocol.data_received(leftover)

    def _release(self) -> None:
        self._deadline = 0.0
        self.state.connections.discard(self)

    def _name(self) -> str:
        return f"{self._peer[0]}:{self._peer[1]}" if self._peer else "unix socket peer"

    # -- the server's side (state.Connection) ---------------------------------------------

    def check_deadline(self, now: float) -> None:
        if self._deadline and now >= self._deadline:
            self.state.metrics.timed_out("head")
            stage = "PROXY header" if self._tls is None else "TLS handshake"
            error_logger.debug("%s: no complete %s in time; closing", self._name(), stage)
            self.close()

    def shutdown(self) -> None:
        self.close()

    def force_close(self) -> None:
        self._release()
        self.transport.abort()

    def close(self) -> None:
        self._release()
        self.transport.close()
