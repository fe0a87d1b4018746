"""What one connection is, decided once when it is made; and what a proxy says per request.

The edge is decided once per connection, by `describe` from `HTTPProtocol.connection_made`:
the client (the peer, or the address a PROXY header carried: edge.py passes it in), the scheme
(https under TLS), whether forwarding headers are believed at all (`believed`), the ASGI TLS
extension, and whether files may go out by sendfile (never under TLS: it cannot encrypt). Per
request, only a believed connection reads the forwarding headers (`forward`): the result is
the view and the request the cycle is built with, where every interface reads client, scheme
and server. Nothing rewrites a cycle once it is built.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from typing import Literal, NamedTuple

from dualgate.edge.forwarded import ProxyTrust
from dualgate.http.cycle import View, loop_can_sendfile
from dualgate.http.reader import Request
from dualgate.http.state import ServerState

__all__ = ["FROM_PEER", "ConnectionFacts", "GivenClient", "describe", "forward"]


class _Peer(enum.Enum):
    FROM_PEER = "the transport's peer"


# The client is the transport's peer (no PROXY header in front of the connection).
FROM_PEER: Literal[_Peer.FROM_PEER] = _Peer.FROM_PEER
# Who the client of a new connection is: FROM_PEER, an address a PROXY header carried, or None
# (a PROXY header's unix source, or LOCAL with no address).
GivenClient = tuple[str, int] | Literal[_Peer.FROM_PEER] | None


class ConnectionFacts(NamedTuple):
    view: View  # what every request on this connection sees, unless a proxy forwards another
    believed: bool  # forwarding headers from this connection are read at all
    can_sendfile: bool


def describe(
    transport: asyncio.BaseTransport,
    state: ServerState,
    loop: asyncio.AbstractEventLoop,
    given_client: GivenClient,
) -> ConnectionFacts:
    client = given_client
    if client is FROM_PEER:
        peer = transport.get_extra_info("peername")
        client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
    server: tuple[str, int | None] | None = None
    local = transport.get_extra_info("sockname")
    if isinstance(local, tuple) and len(local) >= 2:
        server = (str(local[0]), int(local[1]))
    elif isinstance(local, str):
        server = (local, None)
    believed = False
    if client is not None:
        believed = state.trust.believes_headers_from(client[0])
    elif given_client is None or _on_unix_socket(transport):
        # A unix-socket peer (or one a PROXY header says came over a unix socket), which
        # `unix:` trusts. A TCP peer whose address is unknown is believed by nobody.
        believed = state.trust.believes_headers_from(None)
    tls = state.tls
    if tls is None:
        view = _new(View, (client, server, "http", None))
        return _new(ConnectionFacts, (view, believed, loop_can_sendfile(loop)))
    extension = None
    if state.tls_extension:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            extension = tls.scope_extension(ssl_object)
    return ConnectionFacts(View(client, server, "https", extension), believed, False)


# Made once per connection: a NamedTuple's own __new__ is Python code, tuple's is not.
_new = tuple.__new__


def forward(view: View, request: Request, trust: ProxyTrust) -> tuple[View, Request]:
    """The view and the request as a trusted proxy's forwarding headers say they are (the
    connection's own when it says nothing)."""
    forwarded = trust.resolve(view.client, request.headers, view.scheme, view.server, believed=True)
    if forwarded is None:
        return view, request
    view = View(forwarded.client, forwarded.server, forwarded.scheme, view.tls)
    if forwarded.host is not None:
        request = request.with_host(forwarded.host)
    return view, request


def _on_unix_socket(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family == socket.AF_UNIX
