"""The PROXY protocol reader (dualgate/edge/proxy_protocol.py), in memory, byte by byte."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from dualgate.edge.proxy_protocol import (
    NEED_MORE,
    V1_MAX_SIZE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyProtocolError,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(
    command: int = 1,
    family: int = 1,
    transport: int = 1,
    block: bytes = b"",
    *,
    version: int = 2,
    length: int | None = None,
) -> bytes:
    size = len(block) if length is None else length
    return (
        V2_SIGNATURE
        + bytes([(version << 4) | command, (family << 4) | transport])
        + struct.pack("!H", size)
        + block
    )


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def read(data: bytes) -> ProxyHeader:
    result = ProxyHeaderReader().feed(data)
    assert isinstance(result, ProxyHeader), result
    return result


def read_bytewise(data: bytes) -> ProxyHeader:
    """Feed one byte at a time: NEED_MORE until the header's last byte, then the result."""
    reader = ProxyHeaderReader()
    for index in range(len(data)):
        result = reader.feed(data[index : index + 1])
        if result is not NEED_MORE:
            assert isinstance(result, ProxyHeader)
            return result
    raise AssertionError("the header never completed")


def refuse(data: bytes, match: str) -> None:
    with pytest.raises(ProxyProtocolError, match=match):
        ProxyHeaderReader().feed(data)


# -- valid headers: every one, whole, byte by byte, and split at every point ----------------

V1_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n"
V1_UNKNOWN_SHORT = b"PROXY UNKNOWN\r\n"
V1_WORST = (
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)
V2_TCP4 = v2(block=inet4("192.0.2.1", "198.51.100.2", 56324, 443))
V2_TCP6 = v2(family=2, block=inet6("2001:db8::1", "2001:db8::2", 1, 65535))
V2_UNIX = v2(family=3, block=unix(b"/run/client.sock", b"/run/dualgate.sock"))
V2_TLVS = v2(
    block=inet4("192.0.2.1", "198.51.100.2", 1000, 80)
    + tlv(0x01, b"http/1.1")
    + tlv(0x02, b"example.com")
    + tlv(0x04, b"\0" * 10)
    + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x21, b"TLSv1.3")),
)
V2_LOCAL = v2(command=0, family=0, transport=0)
V2_LOCAL_WITH_BLOCK = v2(command=0, block=inet4("10.0.0.1", "10.0.0.2", 1, 2))

VALID: list[tuple[str, bytes, ProxyHeader]] = [
    (
        "v1 TCP4",
        V1_TCP4,
        ProxyHeader(1, "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 443)),
    ),
    ("v1 TCP6", V1_TCP6, ProxyHeader(1, "TCP6", ("2001:db8::1", 65535), ("2001:db8::2", 0))),
    ("v1 UNKNOWN short", V1_UNKNOWN_SHORT, ProxyHeader(1, "LOCAL")),
    ("v1 UNKNOWN worst case, 107 bytes", V1_WORST, ProxyHeader(1, "LOCAL")),
    ("v1 UNKNOWN anything", b"PROXY UNKNOWN whatever \x01 here\r\n", ProxyHeader(1, "LOCAL")),
    (
        "v2 TCP4",
        V2_TCP4,
        ProxyHeader(2, "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 443)),
    ),
    ("v2 TCP6", V2_TCP6, ProxyHeader(2, "TCP6", ("2001:db8::1", 1), ("2001:db8::2", 65535))),
    (
        "v2 UNIX",
        V2_UNIX,
        ProxyHeader(
            2, "UNIX", source_path="/run/client.sock", destination_path="/run/dualgate.sock"
        ),
    ),
    (
        "v2 UNIX unnamed",
        v2(family=3, block=unix(b"", b"/s")),
        ProxyHeader(2, "UNIX", source_path="", destination_path="/s"),
    ),
    ("v2 TLVs skipped", V2_TLVS, ProxyHeader(2, "TCP4", ("192.0.2.1", 1000), ("198.51.100.2", 80))),
    ("v2 LOCAL", V2_LOCAL, ProxyHeader(2, "LOCAL")),
    ("v2 LOCAL ignores its block", V2_LOCAL_WITH_BLOCK, ProxyHeader(2, "LOCAL")),
    (
        "v2 LOCAL ignores the family byte",
        v2(command=0, family=9, transport=9),
        ProxyHeader(2, "LOCAL"),
    ),
    ("v2 PROXY UNSPEC", v2(family=0, transport=0), ProxyHeader(2, "LOCAL")),
    (
        "v2 PROXY UNSPEC with a block",
        v2(family=0, transport=1, block=b"xyz"),
        ProxyHeader(2, "LOCAL"),
    ),
    ("v2 INET with UNSPEC transport", v2(family=1, transport=0), ProxyHeader(2, "LOCAL")),
    (
        "v2 UDP4 falls back to the real peer",
        v2(family=1, transport=2, block=inet4("192.0.2.1", "192.0.2.2", 1, 2)),
        ProxyHeader(2, "LOCAL"),
    ),
    (
        "v2 UDP6 falls back to the real peer",
        v2(family=2, transport=2, block=inet6("::1", "::2", 1, 2)),
        ProxyHeader(2, "LOCAL"),
    ),
    (
        "v2 UNIX datagram falls back to the real peer",
        v2(family=3, transport=2, block=unix(b"/a", b"/b")),
        ProxyHeader(2, "LOCAL"),
    ),
]


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_header_whole(name: str, data: bytes, expected: ProxyHeader) -> None:
    assert read(data) == expected
    with_request = read(data + REQUEST)
    assert with_request.leftover == REQUEST
    assert with_request.local is (expected.family == "LOCAL")


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_header_byte_by_byte(name: str, data: bytes, expected: ProxyHeader) -> None:
    assert read_bytewise(data + REQUEST) == expected  # leftover: nothing past the last byte


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_header_split_anywhere(name: str, data: bytes, expected: ProxyHeader) -> None:
    stream = data + REQUEST
    for cut in range(1, len(stream)):
        reader = ProxyHeaderReader()
        first = reader.feed(stream[:cut])
        if cut >= len(data):
            assert isinstance(first, ProxyHeader)
            assert first.leftover == stream[len(data) : cut]
            continue
        assert first is NEED_MORE, cut
        second = reader.feed(stream[cut:])
        assert isinstance(second, ProxyHeader)
        assert second.leftover == REQUEST
        assert second.source == expected.source
        assert second.family == expected.family


def test_worst_case_line_is_exactly_the_limit() -> None:
    assert len(V1_WORST) == V1_MAX_SIZE


# -- refused ------------------------------------------------------------------------------

REFUSED: list[tuple[str, bytes, str]] = [
    ("plain HTTP", REQUEST, "does not start"),
    ("TLS ClientHello", b"\x16\x03\x01\x02\x00", "does not start"),
    ("lower-case proxy", b"proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n", "does not start"),
    ("PROXY without a space", b"PROXYTCP4", "does not start"),
    ("v1 unknown protocol", b"PROXY TCP5 1.2.3.4 1.2.3.4 1 1\r\n", "malformed"),
    ("v1 double space", b"PROXY TCP4  1.2.3.4 1.2.3.4 1 1\r\n", "malformed"),
    ("v1 missing port", b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "malformed"),
    ("v1 extra field", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1 1\r\n", "malformed"),
    ("v1 trailing space", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1 \r\n", "malformed"),
    ("v1 nothing after PROXY", b"PROXY \r\n", "malformed"),
    ("v1 TCP4 with IPv6", b"PROXY TCP4 ::1 ::1 1 1\r\n", "not a TCP4 address"),
    ("v1 TCP6 with IPv4", b"PROXY TCP6 1.2.3.4 1.2.3.4 1 1\r\n", "not a TCP6 address"),
    ("v1 leading zero octet", b"PROXY TCP4 1.2.3.04 1.2.3.4 1 1\r\n", "not a TCP4 address"),
    ("v1 octet over 255", b"PROXY TCP4 1.2.3.256 1.2.3.4 1 1\r\n", "not a TCP4 address"),
    ("v1 short IPv4", b"PROXY TCP4 1.2.3 1.2.3.4 1 1\r\n", "not a TCP4 address"),
    ("v1 IPv6 scope id", b"PROXY TCP6 fe80::1%eth0 ::1 1 1\r\n", "not a TCP6 address"),
    ("v1 non-ASCII address", b"PROXY TCP4 1.2.3.\xb4 1.2.3.4 1 1\r\n", "not a TCP4 address"),
    ("v1 port leading zero", b"PROXY TCP4 1.2.3.4 1.2.3.4 080 1\r\n", "not a port"),
    ("v1 port over 65535", b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n", "not a port"),
    ("v1 port not a number", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 http\r\n", "not a port"),
    ("v1 negative port", b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 1\r\n", "not a port"),
    ("v1 bare LF", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n", "bare CR or LF"),
    ("v1 bare CR then data", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\rX", "bare CR or LF"),
    ("v1 LF inside, CRLF later", b"PROXY UNKNOWN a\nb\r\n", "bare CR or LF"),
    ("v1 CR inside, CRLF later", b"PROXY UNKNOWN a\rb\r\n", "bare CR or LF"),
    ("v1 no CRLF within 107 bytes", b"PROXY UNKNOWN " + b"f" * 200, "no CRLF"),
    ("v1 CRLF one byte too late", V1_WORST[:-2] + b"f\r\n", "no CRLF"),
    ("v2 bad signature", V2_SIGNATURE[:5] + b"X", "signature"),
    ("v2 version 1", v2(version=1), "version 1"),
    ("v2 version 3", v2(version=3), "version 3"),
    ("v2 unknown command", v2(command=2), "unknown command"),
    ("v2 unknown family", v2(family=4), "unknown address family"),
    ("v2 unknown transport", v2(transport=3), "unknown transport"),
    ("v2 TCP4 block too short", v2(block=b"\0" * 11), "family needs 12"),
    ("v2 TCP6 block too short", v2(family=2, block=b"\0" * 35), "family needs 36"),
    ("v2 UNIX block too short", v2(family=3, block=b"\0" * 215), "family needs 216"),
    ("v2 UDP4 block too short", v2(transport=2, block=b"\0" * 3), "family needs 12"),
    ("v2 length over the cap", v2(length=4096 - 15), "over 4096"),
    ("v2 length 65535", v2(length=65535), "over 4096"),
]


@pytest.mark.parametrize(("name", "data", "match"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(name: str, data: bytes, match: str) -> None:
    refuse(data, match)


@pytest.mark.parametrize(("name", "data", "match"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_byte_by_byte(name: str, data: bytes, match: str) -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyProtocolError, match=match):
        for index in range(len(data)):
            assert reader.feed(data[index : index + 1]) is NEED_MORE
    with pytest.raises(RuntimeError):
        reader.feed(b"x")


@pytest.mark.parametrize(
    ("first_bytes", "refused_at"),
    [
        (b"G", 1),
        (b"PRX", 3),
        (b"PROXX", 5),
        (b"\r\n\r\nX", 5),
        (b"\r\r", 2),
    ],
)
def test_refused_as_soon_as_the_bytes_cannot_be_a_header(
    first_bytes: bytes, refused_at: int
) -> None:
    reader = ProxyHeaderReader()
    for index in range(refused_at - 1):
        assert reader.feed(first_bytes[index : index + 1]) is NEED_MORE
    with pytest.raises(ProxyProtocolError):
        reader.feed(first_bytes[refused_at - 1 : refused_at])


def test_v2_length_over_the_cap_is_refused_before_the_block_arrives() -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyProtocolError, match="over 4096"):
        reader.feed(v2(length=5000)[:16])


def test_v1_without_crlf_is_refused_at_107_bytes_not_later() -> None:
    reader = ProxyHeaderReader()
    data = b"PROXY UNKNOWN " + b"f" * 200
    for index in range(V1_MAX_SIZE - 1):
        assert reader.feed(data[index : index + 1]) is NEED_MORE
    with pytest.raises(ProxyProtocolError, match="no CRLF"):
        reader.feed(data[V1_MAX_SIZE - 1 : V1_MAX_SIZE])


def test_custom_v2_cap() -> None:
    block = inet4("192.0.2.1", "192.0.2.2", 1, 2) + tlv(0x04, b"\0" * 100)
    assert read(v2(block=block)).source == ("192.0.2.1", 1)
    with pytest.raises(ProxyProtocolError, match="over 64"):
        ProxyHeaderReader(max_v2_size=64).feed(v2(block=block))
    with pytest.raises(ValueError, match="at least 16"):
        ProxyHeaderReader(max_v2_size=15)


def test_empty_feed_needs_more() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"") is NEED_MORE
    assert reader.feed(b"") is NEED_MORE
    assert isinstance(reader.feed(V1_TCP4), ProxyHeader)


def test_reader_is_single_use() -> None:
    reader = ProxyHeaderReader()
    assert isinstance(reader.feed(V1_TCP4 + REQUEST), ProxyHeader)
    with pytest.raises(RuntimeError):
        reader.feed(REQUEST)
