"""How a connection is recognised as HTTP/2: the client preface on a plain port, ALPN under TLS.

Prior knowledge (RFC 9113 section 3.3): a client that knows the server speaks HTTP/2 opens with
the 24-byte preface. The preface was chosen so that an HTTP/1.1 server refuses it ("PRI" with
version "HTTP/2.0"), so no HTTP/1.1 request starts with it, and a plain port can serve both:
the connection is HTTP/2 exactly when its first bytes are the preface. `sniff` decides that from
however few bytes have arrived, and says when it cannot decide yet (the bytes so far are a
proper prefix of the preface), so the caller keeps them and waits for more.

Under TLS the handshake has already chosen: ALPN offers `h2` before `http/1.1` (RFC 9113
section 3.2) when HTTP/2 is on, and `negotiated` reads the choice from the finished handshake.

`Upgrade: h2c` (RFC 7540 section 3.2) is not served: RFC 9113 deprecates it, no browser sends
it, and curl falls back to HTTP/1.1 when it is ignored; the Upgrade header is then just an
unknown upgrade to the HTTP/1.1 core.

No h2 import here: the server decides before it builds anything of HTTP/2.
"""

from __future__ import annotations

import enum
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualgate.config import Config

__all__ = [
    "ALPN_H2",
    "ALPN_HTTP11",
    "PREFACE",
    "Sniffed",
    "alpn_protocols",
    "http2_enabled",
    "negotiated",
    "sniff",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ALPN_H2 = "h2"
ALPN_HTTP11 = "http/1.1"


class Sniffed(enum.Enum):
    """What a connection's first bytes say it is."""

    HTTP2 = "http2"  # the preface, whole: hand the connection (and these bytes) to HTTP/2
    HTTP1 = "http1"  # anything else: HTTP/1.1 reads these bytes as usual
    UNDECIDED = "undecided"  # a proper prefix of the preface: keep the bytes, wait for more


def sniff(first: bytes | bytearray | memoryview) -> Sniffed:
    """The verdict on a connection's first bytes (all of them that have arrived so far)."""
    size = len(first)
    if size >= len(PREFACE):
        return Sniffed.HTTP2 if first[: len(PREFACE)] == PREFACE else Sniffed.HTTP1
    if size and first == PREFACE[:size]:
        return Sniffed.UNDECIDED
    # An empty read decides nothing either; a caller only asks once bytes have arrived.
    return Sniffed.UNDECIDED if not size else Sniffed.HTTP1


def http2_available() -> bool:
    """Whether h2 can be imported, found without importing it."""
    return importlib.util.find_spec("h2") is not None


def http2_enabled(config: Config) -> bool:
    """`--http2`: on and off as said; auto serves HTTP/2 when h2 is installed. Config already
    refused "on" without h2."""
    if config.http2 == "auto":
        return http2_available()
    return config.http2 == "on"


def alpn_protocols(http2: bool) -> list[str]:
    """What the TLS context offers, most preferred first (RFC 7301 lets the server choose)."""
    return [ALPN_H2, ALPN_HTTP11] if http2 else [ALPN_HTTP11]


def negotiated(ssl_object: Any) -> bool:
    """Whether a finished TLS handshake chose HTTP/2 (`ssl_object` from the transport's
    `get_extra_info("ssl_object")`; None for a plain connection)."""
    if ssl_object is None:
        return False
    return bool(ssl_object.selected_alpn_protocol() == ALPN_H2)
