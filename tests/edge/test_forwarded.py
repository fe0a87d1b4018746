"""The proxy-header rules of dualgate/edge/forwarded.py, one table row per rule."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from dualgate.edge import forwarded as proxy_headers
from dualgate.edge.forwarded import (
    ForwardedView,
    ProxyTrust,
    parse_trust_list,
    websocket_scheme,
)

SERVER = ("127.0.0.1", 8000)
LOOPBACK_PEER = ("127.0.0.1", 50000)
OUTSIDER = ("203.0.113.9", 40000)
CLIENT = "198.51.100.7"

Headers = list[tuple[bytes, bytes]]


@dataclass
class Case:
    id: str
    headers: Headers
    client: tuple[str, int | None] | None
    scheme: str = "http"
    host: bytes | None = None
    server: tuple[str, int | None] | None = SERVER
    peer: tuple[str, int] | None = LOOPBACK_PEER
    trust: str = "127.0.0.1,unix:"
    hops: int | None = None
    connection_scheme: str = "http"
    extra: dict[str, Any] = field(default_factory=dict)


def xff(value: str) -> tuple[bytes, bytes]:
    return (b"x-forwarded-for", value.encode("latin-1"))


def fwd(value: str) -> tuple[bytes, bytes]:
    return (b"forwarded", value.encode("latin-1"))


def header(name: str, value: str) -> tuple[bytes, bytes]:
    return (name.encode("ascii"), value.encode("latin-1"))


UNCHANGED = LOOPBACK_PEER

CASES = [
    # -- who is believed -------------------------------------------------------------------
    Case("untrusted peer: nothing rewritten", [xff(CLIENT)], OUTSIDER, peer=OUTSIDER),
    Case(
        "untrusted peer: scheme and host not rewritten either",
        [header("x-forwarded-proto", "https"), header("x-forwarded-host", "evil.example")],
        OUTSIDER,
        peer=OUTSIDER,
    ),
    Case("trusted peer: its X-Forwarded-For is believed", [xff(CLIENT)], (CLIENT, None)),
    Case(
        "trusted by CIDR",
        [xff(CLIENT)],
        (CLIENT, None),
        peer=("10.1.2.3", 1234),
        trust="10.0.0.0/8",
    ),
    Case(
        "outside the CIDR",
        [xff(CLIENT)],
        ("11.1.2.3", 1234),
        peer=("11.1.2.3", 1234),
        trust="10.0.0.0/8",
    ),
    Case("unix socket peer with unix: trusted", [xff(CLIENT)], (CLIENT, None), peer=None),
    Case("unix socket peer without unix:", [xff(CLIENT)], None, peer=None, trust="127.0.0.1"),
    Case(
        "IPv6 peer trusted by address",
        [xff("2001:db8::1")],
        ("2001:db8::1", None),
        peer=("::1", 1),
        trust="::1",
    ),
    Case(
        "IPv6 peer trusted by CIDR, bracketed in the list",
        [xff(CLIENT)],
        (CLIENT, None),
        peer=("2001:db8::5", 1),
        trust="[2001:db8::]/32",
    ),
    Case(
        "IPv4-mapped peer of a dual-stack socket matches an IPv4 entry",
        [xff(CLIENT)],
        (CLIENT, None),
        peer=("::ffff:127.0.0.1", 1),
    ),
    Case("* trusts any peer", [xff(CLIENT)], (CLIENT, None), peer=OUTSIDER, trust="*"),
    # -- which entry is the client --------------------------------------------------------
    Case(
        "spoofed leftmost entry is passed over",
        [xff(f"6.6.6.6, {CLIENT}")],
        (CLIENT, None),
    ),
    Case(
        "chain longer than the trusted set: rightmost untrusted",
        [xff(f"6.6.6.6, {CLIENT}, 10.0.0.2, 10.0.0.1")],
        (CLIENT, None),
        trust="127.0.0.1,10.0.0.0/8",
    ),
    Case(
        "every entry trusted: the leftmost",
        [xff("10.0.0.3, 10.0.0.2")],
        ("10.0.0.3", None),
        trust="127.0.0.1,10.0.0.0/8",
    ),
    Case(
        "with * the client's own leftmost entry wins (spoofable)",
        [xff(f"6.6.6.6, {CLIENT}")],
        ("6.6.6.6", None),
        peer=OUTSIDER,
        trust="*",
    ),
    Case(
        "X-Forwarded-For over several header lines",
        [xff("6.6.6.6"), xff(f"{CLIENT}, 10.0.0.1")],
        (CLIENT, None),
        trust="127.0.0.1,10.0.0.0/8",
    ),
    Case("empty list elements are skipped", [xff(f" , {CLIENT},, ")], (CLIENT, None)),
    Case("IPv4 with a port", [xff(f"{CLIENT}:4711")], (CLIENT, 4711)),
    Case(
        "bracketed IPv6 with a port",
        [xff("[2001:DB8::1]:4711")],
        ("2001:db8::1", 4711),
    ),
    Case("bare IPv6 as nginx writes it", [xff("2001:db8::1")], ("2001:db8::1", None)),
    # -- garbage leaves the client as it was -----------------------------------------------
    Case("not an address", [xff("not-an-ip")], UNCHANGED),
    Case("octet out of range", [xff("300.1.1.1")], UNCHANGED),
    Case("leading zeros are not an address", [xff("010.0.0.1")], UNCHANGED),
    Case("port out of range", [xff(f"{CLIENT}:70000")], UNCHANGED),
    Case("empty port", [xff(f"{CLIENT}:")], UNCHANGED),
    Case("unclosed bracket", [xff("[2001:db8::1")], UNCHANGED),
    Case("IPv4 in brackets", [xff(f"[{CLIENT}]")], UNCHANGED),
    Case(
        "unparseable rightmost entry stops the walk",
        [xff(f"{CLIENT}, unknown")],
        UNCHANGED,
    ),
    Case("empty header", [xff("")], UNCHANGED),
    Case("non-ASCII bytes", [(b"x-forwarded-for", b"\xff\xfe")], UNCHANGED),
    # -- hops ------------------------------------------------------------------------------
    Case(
        "hops=1: the rightmost entry, trusted or not",
        [xff(f"6.6.6.6, {CLIENT}, 10.0.0.1")],
        ("10.0.0.1", None),
        trust="127.0.0.1,10.0.0.0/8",
        hops=1,
    ),
    Case(
        "hops=2: the second from the right",
        [xff(f"6.6.6.6, {CLIENT}, 10.0.0.1")],
        (CLIENT, None),
        hops=2,
    ),
    Case(
        "hops longer than the list: the leftmost",
        [xff(f"{CLIENT}, 10.0.0.1")],
        (CLIENT, None),
        hops=5,
    ),
    Case(
        "hops still need a trusted peer",
        [xff(CLIENT)],
        OUTSIDER,
        peer=OUTSIDER,
        hops=1,
    ),
    Case(
        "hops pick a garbage entry: client unchanged",
        [xff(f"{CLIENT}, garbage")],
        UNCHANGED,
        hops=1,
    ),
    # -- scheme ----------------------------------------------------------------------------
    Case(
        "X-Forwarded-Proto https",
        [header("x-forwarded-proto", "https")],
        UNCHANGED,
        scheme="https",
    ),
    Case(
        "scheme is case-insensitive",
        [header("x-forwarded-proto", "HTTPS")],
        UNCHANGED,
        scheme="https",
    ),
    Case("ws is not an HTTP scheme", [header("x-forwarded-proto", "wss")], UNCHANGED),
    Case("other schemes are ignored", [header("x-forwarded-proto", "javascript")], UNCHANGED),
    Case(
        "a trusted proxy may say http over our TLS",
        [header("x-forwarded-proto", "http")],
        UNCHANGED,
        scheme="http",
        connection_scheme="https",
    ),
    Case(
        "proto list as long as X-Forwarded-For: read at the client's position",
        [xff(f"{CLIENT}, 10.0.0.1"), header("x-forwarded-proto", "https, http")],
        (CLIENT, None),
        scheme="https",
        trust="127.0.0.1,10.0.0.0/8",
    ),
    Case(
        "proto list of another length: its rightmost entry",
        [xff(f"{CLIENT}, 10.0.0.1"), header("x-forwarded-proto", "https")],
        (CLIENT, None),
        scheme="https",
        trust="127.0.0.1,10.0.0.0/8",
    ),
    # -- host ------------------------------------------------------------------------------
    Case(
        "forwarded host: Host and server change",
        [header("x-forwarded-host", "example.com")],
        UNCHANGED,
        host=b"example.com",
        server=("example.com", 80),
    ),
    Case(
        "forwarded host over https: port 443",
        [header("x-forwarded-host", "example.com"), header("x-forwarded-proto", "https")],
        UNCHANGED,
        scheme="https",
        host=b"example.com",
        server=("example.com", 443),
    ),
    Case(
        "forwarded host with its own port",
        [header("x-forwarded-host", "example.com:9000")],
        UNCHANGED,
        host=b"example.com:9000",
        server=("example.com", 9000),
    ),
    Case(
        "X-Forwarded-Port joins a host without one",
        [header("x-forwarded-host", "example.com"), header("x-forwarded-port", "8443")],
        UNCHANGED,
        host=b"example.com:8443",
        server=("example.com", 8443),
    ),
    Case(
        "X-Forwarded-Port equal to the scheme's default stays out of Host",
        [
            header("x-forwarded-host", "example.com"),
            header("x-forwarded-proto", "https"),
            header("x-forwarded-port", "443"),
        ],
        UNCHANGED,
        scheme="https",
        host=b"example.com",
        server=("example.com", 443),
    ),
    Case(
        "X-Forwarded-Port alone changes nothing",
        [header("x-forwarded-port", "8443")],
        UNCHANGED,
    ),
    Case(
        "bad X-Forwarded-Port is ignored",
        [header("x-forwarded-host", "example.com"), header("x-forwarded-port", "99999")],
        UNCHANGED,
        host=b"example.com",
        server=("example.com", 80),
    ),
    Case(
        "IPv6 literal host",
        [header("x-forwarded-host", "[2001:db8::1]:8080")],
        UNCHANGED,
        host=b"[2001:db8::1]:8080",
        server=("2001:db8::1", 8080),
    ),
    Case(
        "empty port after the host",
        [header("x-forwarded-host", "example.com:")],
        UNCHANGED,
        host=b"example.com",
        server=("example.com", 80),
    ),
    Case("host with a path is ignored", [header("x-forwarded-host", "evil.com/x")], UNCHANGED),
    Case("host with a space is ignored", [header("x-forwarded-host", "a b")], UNCHANGED),
    Case("host with a bad port is ignored", [header("x-forwarded-host", "a:99999")], UNCHANGED),
    Case("bad IPv6 host is ignored", [header("x-forwarded-host", "[zz::1]")], UNCHANGED),
    Case("host with junk after ] is ignored", [header("x-forwarded-host", "[::1]x")], UNCHANGED),
    # -- RFC 7239 Forwarded ----------------------------------------------------------------
    Case(
        "Forwarded for, proto and host",
        [fwd(f"for={CLIENT};proto=https;host=example.com")],
        (CLIENT, None),
        scheme="https",
        host=b"example.com",
        server=("example.com", 443),
    ),
    Case(
        "Forwarded parameter names are case-insensitive, OWS around ;",
        [fwd(f"For={CLIENT} ; PROTO=https")],
        (CLIENT, None),
        scheme="https",
    ),
    Case(
        "Forwarded quoted IPv6 with a port",
        [fwd('for="[2001:db8:cafe::17]:4711"')],
        ("2001:db8:cafe::17", 4711),
    ),
    Case(
        "Forwarded quoted IPv4 with a port, quoted host with a port",
        [fwd(f'for="{CLIENT}:4711";host="example.com:8080"')],
        (CLIENT, 4711),
        host=b"example.com:8080",
        server=("example.com", 8080),
    ),
    Case(
        "Forwarded quoted-pair escapes",
        [fwd(r'for="\1\9\8.51.100.7"')],
        (CLIENT, None),
    ),
    Case(
        "Forwarded obfuscated node: client left alone, proto used",
        [fwd("for=_hidden;proto=https")],
        UNCHANGED,
        scheme="https",
    ),
    Case("Forwarded unknown node: client left alone", [fwd("for=unknown")], UNCHANGED),
    Case(
        "Forwarded obfuscated port keeps the address",
        [fwd('for="[2001:db8::1]:_abc"')],
        ("2001:db8::1", None),
    ),
    Case(
        "Forwarded by= and extensions are ignored",
        [fwd(f"by=10.0.0.1;for={CLIENT};ext=value")],
        (CLIENT, None),
    ),
    Case(
        "Forwarded chain: the element of the rightmost untrusted for=",
        [fwd(f"for={CLIENT};proto=https;host=example.com, for=127.0.0.1;proto=http;host=in")],
        (CLIENT, None),
        scheme="https",
        host=b"example.com",
        server=("example.com", 443),
    ),
    Case(
        "Forwarded over several header lines",
        [fwd("for=6.6.6.6"), fwd(f"for={CLIENT}")],
        (CLIENT, None),
    ),
    Case(
        "Forwarded element without for= stops the walk, its proto applies",
        [fwd(f"for={CLIENT}, proto=https")],
        UNCHANGED,
        scheme="https",
    ),
    Case(
        "Forwarded wins over X-Forwarded-* when both are present",
        [
            xff("203.0.113.1"),
            header("x-forwarded-proto", "https"),
            header("x-forwarded-host", "x.example"),
            fwd(f"for={CLIENT};proto=http"),
        ],
        (CLIENT, None),
        scheme="http",
    ),
    Case(
        "Forwarded wins even when it names no client",
        [xff("203.0.113.1"), fwd("proto=https")],
        UNCHANGED,
        scheme="https",
    ),
    Case(
        "a quote opened by the client cannot swallow the proxy's element",
        [fwd(f'for="6.6.6.6, for={CLIENT}')],
        (CLIENT, None),
    ),
    Case(
        "a quoted string opened by the client cannot pair with the proxy's quote",
        [fwd('x=", for="[2001:db8::9]"')],
        ("2001:db8::9", None),
    ),
    Case(
        "Forwarded duplicate parameter: the element is invalid",
        [fwd(f"for={CLIENT};for=6.6.6.6")],
        UNCHANGED,
    ),
    Case("Forwarded pairs without ; are invalid", [fwd(f"for={CLIENT} proto=https")], UNCHANGED),
    Case("Forwarded unquoted IPv6 is invalid", [fwd("for=2001:db8::1")], UNCHANGED),
    Case("Forwarded value missing", [fwd("for=")], UNCHANGED),
    Case("Forwarded garbage", [fwd("\"';=,,;")], UNCHANGED),
    Case("Forwarded scheme other than http(s) ignored", [fwd("proto=gopher")], UNCHANGED),
    Case(
        "Forwarded with hops",
        [fwd(f"for=6.6.6.6, for={CLIENT};proto=https, for=10.0.0.1")],
        (CLIENT, None),
        scheme="https",
        hops=2,
    ),
]


def resolve(case: Case) -> tuple[Any, ...]:
    trust = ProxyTrust(case.trust, hops=case.hops)
    view = trust.resolve(case.peer, case.headers, case.connection_scheme, SERVER)
    if view is None:
        return (case.peer, case.connection_scheme, None, SERVER)
    return (view.client, view.scheme, view.host, view.server)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_proxy_header_rules(case: Case) -> None:
    assert resolve(case) == (case.client, case.scheme, case.host, case.server)


def test_case_ids_are_unique() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


# -- the API around the table --------------------------------------------------------------


def test_no_forwarding_header_resolves_to_none() -> None:
    trust = ProxyTrust("127.0.0.1")
    headers = [(b"host", b"example.com"), (b"x-forwarded", b"1.2.3.4")]
    assert trust.resolve(LOOPBACK_PEER, headers, "http", SERVER) is None


def test_untrusted_peer_resolves_to_none_without_reading_headers() -> None:
    class Exploding:
        def __iter__(self) -> Any:
            raise AssertionError("headers read for an untrusted peer")

    trust = ProxyTrust("127.0.0.1")
    assert trust.resolve(OUTSIDER, Exploding(), "http", SERVER) is None


def test_proxy_headers_off_believes_nobody() -> None:
    trust = ProxyTrust("*", headers=False)
    assert not trust.believes_headers_from("127.0.0.1")
    assert trust.peer_is_trusted("127.0.0.1")  # the PROXY protocol still asks the list
    assert trust.resolve(LOOPBACK_PEER, [xff(CLIENT)], "http", SERVER) is None


def test_view_is_a_plain_value() -> None:
    trust = ProxyTrust("127.0.0.1")
    view = trust.resolve(LOOPBACK_PEER, [xff(CLIENT)], "https", SERVER)
    assert view == ForwardedView(client=(CLIENT, None), scheme="https", host=None, server=SERVER)


@pytest.mark.parametrize(
    ("peer", "trust", "expected"),
    [
        (None, "unix:", True),
        ("unix", "unix:", True),
        ("unix", "UNIX:", True),
        (None, "127.0.0.1", False),
        (None, "*", True),
        ("127.0.0.1", "unix:", False),
        ("127.0.0.2", "127.0.0.1", False),
        ("127.0.0.2", "127.0.0.0/8", True),
        ("fe80::1%eth0", "fe80::/10", True),
        ("::1", "127.0.0.1", False),
        ("localhost", "127.0.0.1", False),
        ("", "", False),
    ],
)
def test_peer_is_trusted(peer: str | None, trust: str, expected: bool) -> None:
    assert ProxyTrust(trust).peer_is_trusted(peer) is expected


@pytest.mark.parametrize(
    ("text", "everyone", "unix", "networks"),
    [
        ("127.0.0.1,unix:", False, True, ["127.0.0.1/32"]),
        (" 10.0.0.0/8 , ::1 ", False, False, ["10.0.0.0/8", "::1/128"]),
        ("[::1], [2001:db8::]/32", False, False, ["::1/128", "2001:db8::/32"]),
        ("*", True, False, []),
        ("", False, False, []),
        ("1.2.3.4,,", False, False, ["1.2.3.4/32"]),
    ],
)
def test_parse_trust_list(text: str, everyone: bool, unix: bool, networks: list[str]) -> None:
    parsed = parse_trust_list(text)
    assert (parsed.everyone, parsed.unix) == (everyone, unix)
    assert [str(network) for network in parsed.networks] == networks


@pytest.mark.parametrize(
    "text",
    ["localhost", "10.0.0.1/24", "10.0.0.0/33", "300.0.0.1", "unix", "*/8", "::1/129"],
)
def test_parse_trust_list_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        parse_trust_list(text)


def test_hops_must_be_positive() -> None:
    with pytest.raises(ValueError, match="hops"):
        ProxyTrust("127.0.0.1", hops=0)


def test_websocket_scheme() -> None:
    assert websocket_scheme("https") == "wss"
    assert websocket_scheme("http") == "ws"


def test_trust_decision_is_cached_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = ipaddress.ip_address

    def counting(text: Any) -> Any:
        calls.append(str(text))
        return real(text)

    monkeypatch.setattr(ipaddress, "ip_address", counting)
    trust = ProxyTrust("10.0.0.0/8")
    for _ in range(100):
        assert not trust.peer_is_trusted("203.0.113.9")
        assert trust.peer_is_trusted("10.0.0.1")
    assert calls == ["203.0.113.9", "10.0.0.1"]


def test_cache_is_bounded() -> None:
    trust = ProxyTrust("10.0.0.0/8")
    for index in range(5000):
        address = f"203.0.{index // 256}.{index % 256}"
        assert not trust.peer_is_trusted(address)
    assert trust.peer_is_trusted("10.9.9.9")
    assert len(trust._cache) <= proxy_headers._CACHE_SIZE


def test_from_config() -> None:
    from dualgate import Config

    config = Config(
        app="x:y", forwarded_allow_ips="10.0.0.0/8", forwarded_trust_hops=2, proxy_headers=False
    )
    trust = ProxyTrust.from_config(config)
    assert trust.hops == 2
    assert trust.headers is False
    assert trust.peer_is_trusted("10.1.1.1")
    assert not trust.peer_is_trusted("127.0.0.1")
