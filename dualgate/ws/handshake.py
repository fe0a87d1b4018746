"""The WebSocket opening handshake, checked without I/O: RFC 6455 section 4.2.1, RFC 7692 offers.

Rules of this file:
- Pure functions over an already parsed HTTP request: no sockets, no asyncio, no wsproto (so
  the HTTP core can import it whether or not wsproto is installed).
- A handshake either passes (`Handshake`: what the protocol needs to answer it) or gets a
  `HandshakeRefusal` (status, reason, headers): 400 for a malformed request, 426 with
  `Sec-WebSocket-Version: 13` for a version other than 13. Never an exception.
- permessage-deflate offers are parsed here, with quoted values and duplicate parameters, because
  wsproto's own offer parser takes the last offer, lets flags of a declined offer leak into the
  chosen one and raises on a non-numeric value. wsproto is handed only the one offer chosen here,
  in a canonical form.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import unquote

from dualgate.http.grammar import TOKEN, Headers
from dualgate.http.paths import strip_root_path

if TYPE_CHECKING:
    from asgiref.typing import WebSocketScope

    from dualgate.config import Config

__all__ = [
    "ASGI_WEBSOCKET",
    "Handshake",
    "HandshakeRefusal",
    "HandshakeRequest",
    "build_scope",
    "check_handshake",
    "is_websocket_request",
    "negotiate_deflate",
    "websockets_unavailable",
]

# spec_version 2.5 of the HTTP & WebSocket ASGI spec: `reason` in websocket.disconnect (2.5),
# send() after close raises an OSError (2.4), `reason` in websocket.close (2.3).
ASGI_WEBSOCKET = {"version": "3.0", "spec_version": "2.5"}

# RFC 7692 section 7.1.2: window bits are 8 to 15 "without leading zeroes". zlib cannot make a
# raw deflate stream with a 256-byte window, so offers that ask for 8 are declined (section 7.1.1
# lets a server decline any offer).
_WINDOW_BITS = re.compile(r"9|1[0-5]")
_DEFLATE_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")


class HandshakeRequest(Protocol):
    """The parsed request the HTTP core hands over (its RequestCycle has these attributes)."""

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes


@dataclass(frozen=True)
class Handshake:
    """A valid opening handshake: what answering it needs."""

    key: bytes
    subprotocols: list[str]
    # The permessage-deflate offer accepted, in canonical form, or None (none acceptable or off).
    deflate_offer: str | None


@dataclass(frozen=True)
class HandshakeRefusal:
    """An opening handshake that must be answered with an HTTP error instead of a 101."""

    status: int
    reason: str
    headers: Headers = field(default_factory=list)


def is_websocket_request(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """A GET asking to upgrade to websocket: the request the HTTP core hands over."""
    if method != b"GET":
        return False
    return any(name == b"upgrade" and b"websocket" in _tokens(value) for name, value in headers)


def websockets_unavailable(config: Config) -> str | None:
    """Why WebSocket requests get a plain HTTP answer, or None when they are served."""
    if config.ws == "none":
        return "WebSockets are turned off on this server (--ws none)"
    try:
        import wsproto  # noqa: F401
    except ImportError:
        return "WebSockets need wsproto on this server: pip install 'dualgate[ws]'"
    return None


def check_handshake(request: HandshakeRequest, *, deflate: bool) -> Handshake | HandshakeRefusal:
    """RFC 6455 section 4.2.1, items 1 to 6, in that order; item 7 (Origin) is the app's."""
    if request.method != b"GET":
        return HandshakeRefusal(400, "A WebSocket handshake must be a GET request")
    if request.http_version in (b"0.9", b"1.0"):
        return HandshakeRefusal(400, "A WebSocket handshake needs HTTP/1.1")
    values: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        values.setdefault(name, []).append(value)
    if len(values.get(b"host", ())) != 1:
        return HandshakeRefusal(400, "A WebSocket handshake needs one Host header")
    if not any(b"websocket" in _tokens(value) for value in values.get(b"upgrade", ())):
        return HandshakeRefusal(400, "A WebSocket handshake needs 'Upgrade: websocket'")
    if not any(b"upgrade" in _tokens(value) for value in values.get(b"connection", ())):
        return HandshakeRefusal(400, "A WebSocket handshake needs 'Connection: Upgrade'")
    keys = values.get(b"sec-websocket-key", [])
    if len(keys) != 1 or not _valid_key(keys[0]):
        return HandshakeRefusal(400, "Sec-WebSocket-Key must be one base64-encoded 16-byte value")
    versions = values.get(b"sec-websocket-version", [])
    if versions != [b"13"]:
        # Section 4.2.2: the answer names the version(s) this server speaks.
        status = 426 if versions else 400
        version = [(b"sec-websocket-version", b"13")]
        return HandshakeRefusal(status, "Sec-WebSocket-Version must be 13", version)
    lengths = values.get(b"content-length", ())
    if values.get(b"transfer-encoding") or any(value != b"0" for value in lengths):
        return HandshakeRefusal(400, "A WebSocket handshake has no request body")
    subprotocols = []
    for value in values.get(b"sec-websocket-protocol", ()):
        for item in value.split(b","):
            item = item.strip(b" \t")
            if not item:
                continue  # RFC 9110 section 5.6.1: empty list elements are ignored
            if not TOKEN.fullmatch(item):
                return HandshakeRefusal(400, "Sec-WebSocket-Protocol must be a list of tokens")
            subprotocols.append(item.decode("ascii"))
    offer = negotiate_deflate(values.get(b"sec-websocket-extensions", ())) if deflate else None
    return Handshake(keys[0], subprotocols, offer)


def negotiate_deflate(values: Iterable[bytes]) -> str | None:
    """The first acceptable permessage-deflate offer (RFC 7692 section 7.1), canonical; or None.

    An offer with an unknown or repeated parameter, or a parameter value out of range, is
    declined (section 7.1: "MUST decline"), and the next one is considered.
    """
    for element in _extension_elements(values):
        if element is None or element[0] != "permessage-deflate":
            continue
        params = element[1]
        names = [name for name, _ in params]
        if len(set(names)) != len(names):
            continue
        chosen: list[str] = []
        for name, value in params:
            if name in _DEFLATE_FLAGS and value is None:
                chosen.append(name)
            elif name == "server_max_window_bits" and value and _WINDOW_BITS.fullmatch(value):
                chosen.append(f"{name}={value}")
            elif name == "client_max_window_bits" and value is None:
                chosen.append(name)
            elif name == "client_max_window_bits" and value and _WINDOW_BITS.fullmatch(value):
                chosen.append(f"{name}={value}")
            else:
                break
        else:
            return "; ".join(["permessage-deflate", *chosen])
    return None


def build_scope(
    request: HandshakeRequest,
    *,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    scheme: str,
    root_path: str,
    state: dict[str, Any] | None,
    subprotocols: list[str],
) -> WebSocketScope:
    """The ASGI `websocket` connection scope, with path and root_path as for HTTP requests."""
    raw_path, _, query = request.target.partition(b"?")
    path = unquote(raw_path.decode("ascii", "surrogateescape"))
    if strip_root_path(path, root_path) is None:
        # Behind a proxy that strips the prefix, the full path is the prefix plus what came.
        path = root_path + path
        raw_path = root_path.encode("utf-8") + raw_path
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": ASGI_WEBSOCKET,
        "http_version": "1.1",
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": request.headers,
        "client": client,
        "server": server,
        "subprotocols": subprotocols,
        "extensions": {"websocket.http.response": {}},
    }
    if state is not None:
        scope["state"] = state.copy()
    return cast("WebSocketScope", scope)


def _tokens(value: bytes) -> list[bytes]:
    return [item.strip(b" \t").lower() for item in value.split(b",")]


def _valid_key(key: bytes) -> bool:
    # Section 4.1: a 16-byte nonce, base64-encoded: always 24 characters ending in "==".
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


_PARAM = re.compile(
    r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*(?:([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)|"((?:[^"\\]|\\.)*)"))?\s*'
)


def _extension_elements(
    values: Iterable[bytes],
) -> Iterable[tuple[str, list[tuple[str, str | None]]] | None]:
    """Sec-WebSocket-Extensions elements (RFC 6455 section 9.1); None for one that is malformed.

    extension = token *( ";" extension-param ), param = token [ "=" (token | quoted-string) ].
    Commas inside quoted strings do not split elements.
    """
    for raw in values:
        text = raw.decode("latin-1")
        for element in _split_outside_quotes(text, ","):
            parts = _split_outside_quotes(element, ";")
            name = parts[0].strip()
            if not name:
                continue  # an empty list element
            if not TOKEN.fullmatch(name.encode("latin-1")):
                yield None
                continue
            params: list[tuple[str, str | None]] = []
            for part in parts[1:]:
                found = _PARAM.fullmatch(part)
                if found is None:
                    params = []
                    name = ""
                    break
                value = found.group(2)
                if found.group(3) is not None:
                    value = re.sub(r"\\(.)", r"\1", found.group(3))
                params.append((found.group(1).lower(), value))
            yield (name.lower(), params) if name else None


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces
