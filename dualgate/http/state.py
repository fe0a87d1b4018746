"""What every connection of one server shares: settings, the handler, the live connections, the
figures it counts (metrics.py), and the edge: whom to believe (ProxyTrust, built once) and the
TLS context holder. Also the direct writes' queue and spare wires (wire.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol

from dualgate.edge.forwarded import ProxyTrust
from dualgate.http.grammar import Headers
from dualgate.http.wire import DirectWire, Written
from dualgate.logs import access_logger
from dualgate.metrics.counters import Metrics

if TYPE_CHECKING:
    from dualgate.config import Config
    from dualgate.edge.tls import TLSContextHolder
    from dualgate.http.cycle import RequestCycle, View

__all__ = ["HTTP2", "Connection", "RequestHandler", "ServerState"]

RequestHandler = Callable[["RequestCycle"], None]


class Connection(Protocol):
    """A live connection as the server sees it: HTTP/1.1, or what an upgrade handed it to."""

    def shutdown(self) -> None:
        """Graceful stop: close once idle, letting work in flight finish."""

    def force_close(self) -> None:
        """Close now."""

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep (a few times a second) with the loop's time."""


class HTTP2(Protocol):
    """What serves a connection that turns out HTTP/2 (h2/cycles.py's H2Server)."""

    def take_over(
        self, transport: asyncio.BaseTransport, first: bytes, view: View, believed: bool
    ) -> None:
        """Serve it as HTTP/2 from now on: `first` is what was read of it already, `view` and
        `believed` what HTTP/1.1 decided of it when it was made (peer.py)."""


class ServerState:
    def __init__(
        self,
        config: Config,
        handler: RequestHandler,
        tls: TLSContextHolder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        # Always there: the free figures are counted whether metrics are on or not.
        self.metrics = metrics if metrics is not None else Metrics(metered=False)
        self.trust = ProxyTrust.from_config(config)
        self.tls = tls
        # The ASGI TLS extension is built per connection only when a client certificate is
        # asked for (README "TLS").
        self.tls_extension = tls is not None and tls.context.verify_mode != ssl.CERT_NONE
        self.connections: set[Connection] = set()
        # Responses pool threads wrote in full to the socket themselves, for the loop to finish
        # at its next event on any connection (wire.py).
        self.written = Written()
        # Wires no connection holds (an idle one gives its wire back): lent again first.
        self.spare_wires: list[DirectWire] = []
        self.shutting_down = False
        # Set by the server when HTTP/2 is on (--http2): connections hand over to it.
        self.http2: HTTP2 | None = None
        self.access_log = access_logger.isEnabledFor(logging.INFO)
        self.default_headers: Headers = []
        self.default_head = b""
        # --header: parsed once; one named Server or Date takes the place of dualgate's.
        self._added = config.response_headers()
        named = {name for name, _ in self._added}
        self._date = config.date_header and b"date" not in named
        self._server = config.server_header and b"server" not in named
        self.update_date()

    def update_date(self) -> None:
        """Called once a second by the server, so no request formats a date."""
        headers: Headers = []
        if self._date:
            headers.append((b"date", formatdate(time.time(), usegmt=True).encode("ascii")))
        if self._server:
            headers.append((b"server", b"dualgate"))
        headers += self._added
        self.default_headers = headers
        self.default_head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
