"""Trusted proxy headers: what the application must see when a proxy we trust forwards a request.

Pure: no I/O, no asyncio. The connection code asks two questions, at two rates.

Per connection (once, cached per peer address, so an untrusted peer costs one dict lookup)::

    trust = ProxyTrust.from_config(config)        # once per server
    believed = trust.believes_headers_from(peer)  # peer: host string, or None / "unix"

Per request, only when `believed` (`resolve` asks the trust question itself unless it is told
the connection asked once already)::

    view = trust.resolve(client, headers, scheme, server, believed=True)
    if view is not None:  # None: nothing forwarded that changes anything; keep the connection's
        client, scheme, server = view.client, view.scheme, view.server
        if view.host is not None: ...  # the Host header (HTTP_HOST) becomes view.host

`client` is the connection's (host, port), or None for a unix-socket peer; `headers` are h11's
(lower-case name, value) byte pairs; `scheme` is "http" or "https" (TLS); `server` is the
connection's (host, port). `resolve` returns a `ForwardedView` or None, and never raises on
anything a client sent. `websocket_scheme(view.scheme)` gives "ws"/"wss".

The rules (README "Behind a proxy" says the same for users):

- `--forwarded-allow-ips` (env FORWARDED_ALLOW_IPS; default "127.0.0.1,unix:") lists addresses
  and CIDR networks (IPv4 and IPv6), `unix:` for unix-socket peers, `*` for everyone. Headers
  are believed only from a peer on that list; `peer_is_trusted` alone is what the PROXY
  protocol asks.
- The client is the rightmost X-Forwarded-For (or `Forwarded: for=`) entry that is not itself
  trusted: every trusted proxy appends the address it saw, so entries right of the first
  untrusted one were written by proxies we trust, and anything left of it may be forged. With
  `*` every entry is trusted and the leftmost wins, which the client itself wrote.
- `--forwarded-trust-hops N` instead takes the Nth entry from the right (a fixed chain of N
  proxies); a shorter list was written by trusted proxies only, so its leftmost entry is taken.
- An entry that does not parse as an address (`unknown`, an obfuscated `_name`, garbage) stops
  the walk and leaves the client as the connection had it.
- When a `Forwarded` header is present, every X-Forwarded-* header is ignored. Its `proto=` and
  `host=` come from the same element as the client. For X-Forwarded-Proto/-Host/-Port, a list
  as long as X-Forwarded-For is read at the client's position, any other list at its rightmost
  entry (the one our own proxy wrote).
- A forwarded scheme other than http/https is ignored; a forwarded host that is not a valid
  `host[:port]` is ignored. The server (SERVER_NAME/SERVER_PORT, ASGI `server`) changes only
  with a forwarded host: its port is the host's own, else X-Forwarded-Port, else the default
  port of the scheme.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dualgate.config import Config

__all__ = [
    "DEFAULT_FORWARDED_ALLOW_IPS",
    "ForwardedView",
    "ProxyTrust",
    "TrustList",
    "parse_trust_list",
    "websocket_scheme",
]

DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,unix:"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Client = tuple[str, int | None]
Server = tuple[str, int | None]
# Header fields as (name, value) pairs, in any iterable: not grammar.Headers (edge stays pure).
HeaderPairs = Iterable[tuple[bytes, bytes]]

# Distinct addresses remembered by one ProxyTrust. Forwarded lists are client-controlled, so
# the cache is bounded: past this many entries it starts over.
_CACHE_SIZE = 1024

_FORWARDED = b"forwarded"
_X_FOR = b"x-forwarded-for"
_X_PROTO = b"x-forwarded-proto"
_X_HOST = b"x-forwarded-host"
_X_PORT = b"x-forwarded-port"
_NAMES = frozenset((_FORWARDED, _X_FOR, _X_PROTO, _X_HOST, _X_PORT))

_SCHEMES = frozenset(("http", "https"))
_DEFAULT_PORTS = {"http": 80, "https": 443}

# RFC 7239 section 4 (token and quoted-string from RFC 9110 section 5.6). The lookahead keeps
# "for=a proto=b" (no ";") from passing as one pair.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
_PAIR = re.compile(rf"({_TOKEN})=({_TOKEN}|{_QUOTED})[ \t]*(?=;|$)")
_QUOTED_PAIR = re.compile(r"\\(.)")
_PORT = re.compile(r"[0-9]{1,5}")
# A DNS name or IPv4 address, optionally with a port; IPv6 literals are checked apart.
_HOST = re.compile(r"([A-Za-z0-9._~-]+)(?::([0-9]{0,5}))?")


def websocket_scheme(scheme: str) -> str:
    """The WebSocket scheme that goes with an HTTP one."""
    return "wss" if scheme == "https" else "ws"


@dataclass(frozen=True, slots=True)
class TrustList:
    """Parsed `--forwarded-allow-ips`."""

    everyone: bool
    unix: bool
    networks: tuple[Network, ...]


def parse_trust_list(text: str) -> TrustList:
    """Parse "127.0.0.1, 10.0.0.0/8, ::1, unix:" (or "*"); ValueError names the bad entry."""
    everyone = unix = False
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == "*":
            everyone = True
            continue
        if entry.lower() == "unix:":
            unix = True
            continue
        literal = entry
        if literal.startswith("["):
            # "[::1]" or "[2001:db8::]/32": the brackets of a URL, not part of the address.
            literal = literal[1:].replace("]", "", 1)
        try:
            networks.append(ipaddress.ip_network(literal))
        except ValueError as exc:
            raise ValueError(
                f"{entry!r} is not an IP address, a CIDR network, 'unix:' or '*' ({exc})"
            ) from None
    return TrustList(everyone=everyone, unix=unix, networks=tuple(networks))


@dataclass(frozen=True, slots=True)
class ForwardedView:
    """What the application sees of one request forwarded by a trusted proxy.

    `client` is (host, port), the port None when the proxy did not give one (ASGI wants an int
    there: use 0). `host` is the Host header value to use instead of the request's, or None
    when no host was forwarded; `server` changes only together with it.
    """

    client: Client | None
    scheme: str
    host: bytes | None
    server: Server | None


class ProxyTrust:
    """The trust list and hop count of one server, with a per-address cache."""

    __slots__ = ("_cache", "_everyone", "_networks", "_unix", "headers", "hops")

    def __init__(
        self, trust: TrustList | str, *, headers: bool = True, hops: int | None = None
    ) -> None:
        if isinstance(trust, str):
            trust = parse_trust_list(trust)
        if hops is not None and hops < 1:
            raise ValueError(f"hops must be 1 or more, got {hops}")
        self.headers = headers
        self.hops = hops
        self._everyone = trust.everyone
        self._unix = trust.unix
        self._networks = trust.networks
        self._cache: dict[str, bool] = {}

    @classmethod
    def from_config(cls, config: Config) -> ProxyTrust:
        return cls(
            config.forwarded_allow_ips,
            headers=config.proxy_headers,
            hops=config.forwarded_trust_hops,
        )

    # -- per connection --------------------------------------------------------------------

    def peer_is_trusted(self, peer: str | None) -> bool:
        """Is this peer on the trust list? `peer` is a host string, or None/"unix" for a unix
        socket. (What the PROXY protocol asks; proxy headers also need `headers` on.)"""
        if peer is None or peer == "unix":
            return self._unix or self._everyone
        return self._address_is_trusted(peer)

    def believes_headers_from(self, peer: str | None) -> bool:
        """Should this connection's forwarding headers be read at all?"""
        return self.headers and self.peer_is_trusted(peer)

    # -- per request -----------------------------------------------------------------------

    def resolve(
        self,
        client: Client | None,
        headers: HeaderPairs,
        scheme: str,
        server: Server | None,
        *,
        believed: bool = False,
    ) -> ForwardedView | None:
        """The request as the application must see it, or None when nothing changes.
        `believed`: the connection is known to be believed (asked once per connection), so
        only the headers are read."""
        if not believed and not self.believes_headers_from(
            client[0] if client is not None else None
        ):
            return None
        found: dict[bytes, list[str]] | None = None
        for name, value in headers:
            if name in _NAMES:
                if found is None:
                    found = {}
                found.setdefault(name, []).append(value.decode("latin-1"))
        if found is None:
            return None
        if _FORWARDED in found:
            node, proto, host, port = self._from_forwarded(found[_FORWARDED])
        else:
            node, proto, host, port = self._from_x_forwarded(found)
        new_client: Client | None = client
        if node is not None:
            parsed = _parse_node(node)
            if parsed is not None:
                new_client = parsed
        if proto is not None and proto.lower() in _SCHEMES:
            scheme = proto.lower()
        new_host: bytes | None = None
        if host is not None:
            forwarded = _forwarded_host(host, port, scheme)
            if forwarded is not None:
                new_host, server = forwarded
        return ForwardedView(client=new_client, scheme=scheme, host=new_host, server=server)

    # -- the two header families -----------------------------------------------------------

    def _from_forwarded(
        self, values: list[str]
    ) -> tuple[str | None, str | None, str | None, str | None]:
        elements = _parse_forwarded(values)
        if not elements:
            return None, None, None, None
        params = elements[self._select([e.get("for") if e else None for e in elements])]
        if params is None:
            return None, None, None, None
        return params.get("for"), params.get("proto"), params.get("host"), None

    def _from_x_forwarded(
        self, found: dict[bytes, list[str]]
    ) -> tuple[str | None, str | None, str | None, str | None]:
        nodes = _split_list(found.get(_X_FOR))
        index = self._select(nodes) if nodes else None
        node = nodes[index] if index is not None else None

        def pick(name: bytes) -> str | None:
            entries = _split_list(found.get(name))
            if not entries:
                return None
            if index is not None and len(entries) == len(nodes):
                return entries[index]
            return entries[-1]

        return node, pick(_X_PROTO), pick(_X_HOST), pick(_X_PORT)

    def _select(self, nodes: Sequence[str | None]) -> int:
        """Index of the entry that names the client (see the module docstring)."""
        if self.hops is not None:
            return max(len(nodes) - self.hops, 0)
        for index in range(len(nodes) - 1, -1, -1):
            node = nodes[index]
            parsed = _parse_node(node) if node is not None else None
            if parsed is None or not self._address_is_trusted(parsed[0]):
                return index
        return 0

    def _address_is_trusted(self, host: str) -> bool:
        known = self._cache.get(host)
        if known is not None:
            return known
        trusted = self._everyone or self._check(host)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = trusted
        return trusted

    def _check(self, host: str) -> bool:
        try:
            address: Address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if any(address in network for network in self._networks):
            return True
        # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return mapped is not None and any(mapped in network for network in self._networks)


def _split_list(values: list[str] | None) -> list[str]:
    """A comma-separated header list, over repeated lines, without empty elements."""
    if not values:
        return []
    return [entry for entry in (part.strip(" \t") for part in ",".join(values).split(",")) if entry]


def _parse_forwarded(values: list[str]) -> list[dict[str, str] | None]:
    """RFC 7239 elements, left to right; None for an element that does not parse.

    Elements are split at every comma, quoted or not. A proxy appends its element after a
    comma, and no value a proxy writes (for, by, proto, host) holds one; splitting on quoted
    commas instead would let a client open a quote in its own part and swallow the trusted
    proxy's element. (An extension parameter with a quoted comma becomes unparseable pieces,
    which stop the walk: the safe side.)
    """
    elements: list[dict[str, str] | None] = []
    for piece in ",".join(values).split(","):
        text = piece.strip(" \t")
        if text:
            elements.append(_parse_element(text))
    return elements


def _parse_element(text: str) -> dict[str, str] | None:
    params: dict[str, str] = {}
    position = 0
    end = len(text)
    while True:
        while position < end and text[position] in " \t;":
            position += 1
        if position >= end:
            return params
        match = _PAIR.match(text, position)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in params:
            return None  # RFC 7239 section 4: a parameter occurs once per element
        value = match.group(2)
        if value.startswith('"'):
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        params[name] = value
        position = match.end()


def _parse_node(text: str) -> Client | None:
    """An address with an optional port, as X-Forwarded-For or RFC 7239 section 6 write it:
    "192.0.2.1", "192.0.2.1:80", "[2001:db8::1]:80", and bare "2001:db8::1" (nginx writes
    that into X-Forwarded-For). "unknown", obfuscated "_names" and garbage give None."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        host, rest = text[1:close], text[close + 1 :]
        if ":" not in host:
            return None
    elif text.count(":") > 1:
        host, rest = text, ""
    else:
        host, colon, port = text.partition(":")
        rest = colon + port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not rest:
        return str(address), None
    if rest[0] != ":" or len(rest) == 1:
        return None
    port_text = rest[1:]
    if port_text[0] == "_":
        return str(address), None  # an obfuscated port hides the port, not the address
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        return None
    return str(address), int(port_text)


def _forwarded_host(host: str, port: str | None, scheme: str) -> tuple[bytes, Server] | None:
    """The Host header and server address for a forwarded host (and X-Forwarded-Port)."""
    parsed = _parse_host(host)
    if parsed is None:
        return None
    name, host_port = parsed
    if host_port is None:
        host = host.removesuffix(":")  # "example.com:" has an empty port (RFC 3986 3.2.3)
    if host_port is None and port is not None and _PORT.fullmatch(port) and int(port) <= 65535:
        host_port = int(port)
        if host_port != _DEFAULT_PORTS.get(scheme):
            host = f"{host}:{host_port}"
    if host_port is None:
        host_port = _DEFAULT_PORTS.get(scheme, 80)
    return host.encode("latin-1"), (name, host_port)


def _parse_host(text: str) -> tuple[str, int | None] | None:
    """A Host value (RFC 9110 section 7.2: uri-host [":" port]) as (name, port)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        try:
            ipaddress.IPv6Address(text[1:close])
        except ValueError:
            return None
        name, rest = text[1:close], text[close + 1 :]
        if not rest:
            return name, None
        if rest[0] != ":":
            return None
        port = rest[1:]
    else:
        match = _HOST.fullmatch(text)
        if match is None:
            return None
        name, port = match.group(1), match.group(2) or ""
    if not port:
        return name, None
    if not _PORT.fullmatch(port) or int(port) > 65535:
        return None
    return name, int(port)
