"""HAProxy's PROXY protocol, versions 1 (text) and 2 (binary), read sans-IO.

A proxy that speaks it (HAProxy `send-proxy`/`send-proxy-v2`, AWS NLB, nginx `proxy_protocol`)
writes one header before any byte of the client's, naming the client's address. Usage, per
connection, before anything else is parsed::

    reader = ProxyHeaderReader()
    result = reader.feed(data)       # raises ProxyProtocolError: close the connection
    if result is NEED_MORE: ...      # wait for more bytes (under the request-head deadline)
    else: result.source, result.local, result.leftover  # leftover: the client's first bytes

Rules of this file (from haproxy's doc/proxy-protocol.txt):

- The receiver never guesses: the first bytes must be a v1 or v2 header, else error. Bytes
  that cannot begin either are refused as soon as they arrive, not after a timeout.
- v1 is one US-ASCII line "PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n" with single spaces,
  canonical addresses (no leading zeros) and the CRLF within the first 107 bytes; a bare CR or
  LF is an error. "PROXY UNKNOWN ...\\r\\n" means: keep the real connection's addresses.
- v2 is 16 bytes (signature, version 2 + command, family + transport, length) and `length`
  more. Command LOCAL (a health check of the proxy's own) keeps the real addresses, whatever
  follows, family byte included. Unknown version or command is an error, and so is an unknown
  family or transport under PROXY. Family UNSPEC,
  transport UNSPEC, and datagram transports fall back to the real addresses, as the spec
  allows a receiver that does not implement them. An address block shorter than its family
  needs is an error; bytes past it (TLVs) are skipped unread.
- Bounded: v1 reads at most 107 bytes, v2 at most `max_v2_size` (default 4 KiB), checked as
  soon as the length field is in, so a peer cannot make the reader buffer more.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "NEED_MORE",
    "V1_MAX_SIZE",
    "V2_MAX_SIZE",
    "V2_SIGNATURE",
    "NeedMore",
    "ProxyHeader",
    "ProxyHeaderReader",
    "ProxyProtocolError",
]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX: Final = b"PROXY "
V1_MAX_SIZE: Final = 107
V2_MAX_SIZE: Final = 4096
_V2_FIXED: Final = 16
_UNIX_PATH: Final = 108
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")

Family = Literal["TCP4", "TCP6", "UNIX", "LOCAL"]


class ProxyProtocolError(ValueError):
    """The connection does not start with a valid PROXY header: close it, pass nothing on."""


class NeedMore(enum.Enum):
    NEED_MORE = "need more"


NEED_MORE: Final = NeedMore.NEED_MORE


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed header. `family` LOCAL means: keep the connection's real peer.

    TCP4/TCP6 give `source`/`destination` as (address, port); UNIX gives the socket paths
    (empty for an unnamed socket). `leftover` holds the bytes read past the header.
    """

    version: Literal[1, 2]
    family: Family
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    source_path: str | None = None
    destination_path: str | None = None
    leftover: bytes = b""

    @property
    def local(self) -> bool:
        return self.family == "LOCAL"


class ProxyHeaderReader:
    """Reads one PROXY header off the start of a connection, in as many pieces as it comes."""

    __slots__ = ("_buffer", "_done", "_max_v2")

    def __init__(self, max_v2_size: int = V2_MAX_SIZE) -> None:
        if max_v2_size < _V2_FIXED:
            raise ValueError(f"max_v2_size must be at least {_V2_FIXED}")
        self._max_v2 = max_v2_size
        self._buffer = b""
        self._done = False

    def feed(self, data: bytes) -> ProxyHeader | Literal[NeedMore.NEED_MORE]:
        """Add bytes; the header once complete, NEED_MORE before. Raises ProxyProtocolError."""
        if self._done:
            raise RuntimeError("this reader already gave its result (or its error)")
        self._buffer += data
        try:
            result = self._parse(self._buffer)
        except ProxyProtocolError:
            self._done = True
            self._buffer = b""
            raise
        if result is not NEED_MORE:
            self._done = True
            self._buffer = b""
        return result

    def _parse(self, buffer: bytes) -> ProxyHeader | Literal[NeedMore.NEED_MORE]:
        if not buffer:
            return NEED_MORE
        if buffer[0] == V2_SIGNATURE[0]:
            return self._parse_v2(buffer)
        if buffer[0] == _V1_PREFIX[0]:
            return _parse_v1(buffer)
        raise ProxyProtocolError("the connection does not start with a PROXY protocol header")

    def _parse_v2(self, buffer: bytes) -> ProxyHeader | Literal[NeedMore.NEED_MORE]:
        size = len(V2_SIGNATURE)
        if buffer[:size] != V2_SIGNATURE[: len(buffer)]:
            raise ProxyProtocolError("bad PROXY v2 signature")
        if len(buffer) < _V2_FIXED:
            return NEED_MORE
        version, command = buffer[12] >> 4, buffer[12] & 0x0F
        family, transport = buffer[13] >> 4, buffer[13] & 0x0F
        if version != 2:
            raise ProxyProtocolError(f"PROXY v2: version {version} (only 2 is defined)")
        if command > 1:
            raise ProxyProtocolError(f"PROXY v2: unknown command {command}")
        # LOCAL ignores the family byte (the spec says so), so only PROXY has it checked.
        if command == 1 and family > 3:
            raise ProxyProtocolError(f"PROXY v2: unknown address family {family}")
        if command == 1 and transport > 2:
            raise ProxyProtocolError(f"PROXY v2: unknown transport protocol {transport}")
        total = _V2_FIXED + int.from_bytes(buffer[14:16], "big")
        if total > self._max_v2:
            raise ProxyProtocolError(f"PROXY v2: header of {total} bytes, over {self._max_v2}")
        if len(buffer) < total:
            return NEED_MORE
        block, leftover = buffer[_V2_FIXED:total], buffer[total:]
        if command == 0:
            return ProxyHeader(version=2, family="LOCAL", leftover=leftover)
        if family == 0 or transport == 0:
            return ProxyHeader(version=2, family="LOCAL", leftover=leftover)
        width = {1: 4, 2: 16, 3: _UNIX_PATH}[family]
        needed = 2 * width + (4 if family != 3 else 0)
        if len(block) < needed:
            raise ProxyProtocolError(
                f"PROXY v2: address block of {len(block)} bytes, the family needs {needed}"
            )
        if transport == 2:
            # Datagrams cannot have carried this stream: use the real endpoints.
            return ProxyHeader(version=2, family="LOCAL", leftover=leftover)
        if family == 3:
            return ProxyHeader(
                version=2,
                family="UNIX",
                source_path=_unix_path(block[:_UNIX_PATH]),
                destination_path=_unix_path(block[_UNIX_PATH : 2 * _UNIX_PATH]),
                leftover=leftover,
            )
        kind = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
        ports = 2 * width
        return ProxyHeader(
            version=2,
            family="TCP4" if family == 1 else "TCP6",
            source=(str(kind(block[:width])), int.from_bytes(block[ports : ports + 2], "big")),
            destination=(
                str(kind(block[width:ports])),
                int.from_bytes(block[ports + 2 : ports + 4], "big"),
            ),
            leftover=leftover,
        )


def _parse_v1(buffer: bytes) -> ProxyHeader | Literal[NeedMore.NEED_MORE]:
    if buffer[: len(_V1_PREFIX)] != _V1_PREFIX[: len(buffer)]:
        raise ProxyProtocolError("the connection does not start with a PROXY protocol header")
    end = buffer.find(b"\r\n", 0, V1_MAX_SIZE)
    if end < 0:
        window = buffer[:V1_MAX_SIZE]
        cr = window.find(b"\r")
        if b"\n" in window or 0 <= cr < len(window) - 1:
            raise ProxyProtocolError("PROXY v1: a bare CR or LF in the header line")
        if len(buffer) >= V1_MAX_SIZE:
            raise ProxyProtocolError(f"PROXY v1: no CRLF in the first {V1_MAX_SIZE} bytes")
        return NEED_MORE
    line, leftover = buffer[:end], buffer[end + 2 :]
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1: a bare CR or LF in the header line")
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        # The sender could not fill the line; whatever follows UNKNOWN is to be ignored.
        return ProxyHeader(version=1, family="LOCAL", leftover=leftover)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1: malformed line {line[:V1_MAX_SIZE]!r}")
    family: Family = "TCP4" if parts[1] == b"TCP4" else "TCP6"
    source = _v1_address(parts[2], family)
    destination = _v1_address(parts[3], family)
    return ProxyHeader(
        version=1,
        family=family,
        source=(source, _v1_port(parts[4])),
        destination=(destination, _v1_port(parts[5])),
        leftover=leftover,
    )


def _v1_address(raw: bytes, family: Family) -> str:
    try:
        text = raw.decode("ascii")
        if family == "TCP4":
            address = str(ipaddress.IPv4Address(text))
            if address != text:
                raise ValueError("not canonical")
            return address
        if "%" in text:
            raise ValueError("a scope id")
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1: {raw!r} is not a {family} address") from None


def _v1_port(raw: bytes) -> int:
    if _V1_PORT.fullmatch(raw) is None or int(raw) > 65535:
        raise ProxyProtocolError(f"PROXY v1: {raw!r} is not a port")
    return int(raw)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
