"""The rules on HTTP/2 request and response fields that h2 leaves to its user. Pure.

h2 is told not to validate or normalise received fields (machine.py): its checks raise a
connection error, where RFC 9113 section 8.1.1 makes a malformed request a stream error that
leaves the other streams alone. So every rule is here, and each answer is one of:
- a `RequestHead`, the request as every interface sees it;
- `Malformed`: RST_STREAM with PROTOCOL_ERROR (RFC 9113 sections 8.1.1, 8.2, 8.3);
- an `Answer`: a response the server gives itself (431, 413, 501), as HTTP/1.1 would.

The request rules, in RFC 9113's terms: field names are lowercase tokens (section 8.2.1; a
token is stricter than "no CTL, no uppercase" and is what HTTP/1.1 requires); values carry no
control character but HTAB (section 8.2.1 forbids NUL, CR and LF; the HTTP/1.1 core refuses
every control character, and an application must not see on HTTP/2 what it never sees on
HTTP/1.1) and no white space at either end; no connection-specific field, `te` only as
"trailers" (section 8.2.2); the pseudo-header fields :method, :scheme, :path (and :authority)
each once, before every regular field, no other one (section 8.3; :protocol is RFC 8441's,
which is not offered); a CONNECT has :authority and neither :scheme nor :path (section 8.5)
and is answered 501 as HTTP/1.1 answers it; :path is "*" for OPTIONS only or starts with "/"
(section 8.3.1), without a fragment or white space; :authority has no userinfo (section
8.3.1) and a Host beside it names the same authority; Content-Length is digits, the same in
every field (and the DATA must add up to it: core.py). Cookie fields are joined with "; "
(section 8.2.3); the head's `headers` start with `host`, the authority, as the ASGI spec asks.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from dualgate.http.grammar import BAD_VALUE, TOKEN, Headers

__all__ = [
    "Answer",
    "Malformed",
    "RequestHead",
    "check_request",
    "check_trailers",
    "response_fields",
    "trailer_fields",
]

# uri-host [":" port] (RFC 3986 section 3.2.2); no userinfo, path or white space.
_AUTHORITY = re.compile(
    rb"(?:\[[0-9A-Za-z._~!$&'()*+,;=:-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)"
    rb"(?::[0-9]*)?"
)
_SCHEME = re.compile(rb"[a-z][a-z0-9+.-]*")
# Names cannot hold these bytes unless they are tokens; lower-case tokens are the RFC 9113 rule.
_LOWER_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-z]+")
# Bytes a :path may not hold: white space, controls and the fragment mark.
_BAD_PATH = re.compile(rb"[\x00-\x20\x7f#]")
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
# RFC 9113 section 6.5.2: a field's size is its name and value lengths plus 32.
_FIELD_OVERHEAD = 32

_valid_response_names: dict[bytes, bytes] = {}


class Malformed(NamedTuple):
    """A malformed request or trailer section: the stream is reset with PROTOCOL_ERROR."""

    reason: str


class Answer(NamedTuple):
    """A request the server answers itself; `kind` groups it as HTTP/1.1's refusals are."""

    status: int
    message: str
    kind: str


class RequestHead(NamedTuple):
    """One HTTP/2 request head, checked; read-only once made."""

    method: bytes
    target: bytes
    scheme: bytes
    authority: bytes
    headers: Headers
    content_length: int | None
    expects_continue: bool

    @property
    def http_version(self) -> bytes:
        return b"2"

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.scheme!r}://{self.authority!r}{self.target!r}>"


def _field_error(name: bytes, value: bytes) -> str | None:
    if not _LOWER_TOKEN.fullmatch(name):
        return f"invalid field name {name!r}"
    if value and (BAD_VALUE.search(value) or value[0] in b" \t" or value[-1] in b" \t"):
        return f"invalid value in field {name!r}"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {name!r}"
    if name == b"te" and value.lower() != b"trailers":
        return "te other than trailers"
    return None


def check_request(
    fields: Headers, max_list_size: int, max_fields: int, max_body_size: int | None
) -> RequestHead | Malformed | Answer:
    """A received header list (h2's RequestReceived, undecoded, unvalidated) as a head."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    cookies: list[bytes] = []
    cookie_at = -1
    size = 0
    lengths: set[bytes] = set()
    host: bytes | None = None
    expects_continue = False
    for name, value in fields:
        size += len(name) + len(value) + _FIELD_OVERHEAD
        if name[:1] == b":":
            if headers or cookies:
                return Malformed(f"pseudo-header field {name!r} after a regular field")
            if name not in _PSEUDO:
                return Malformed(f"unknown pseudo-header field {name!r}")
            if name in pseudo:
                return Malformed(f"pseudo-header field {name!r} twice")
            if BAD_VALUE.search(value):
                return Malformed(f"invalid value in {name!r}")
            pseudo[name] = value
            continue
        error = _field_error(name, value)
        if error is not None:
            return Malformed(error)
        if name == b"cookie":
            if cookie_at < 0:
                cookie_at = len(headers)
            cookies.append(value)
            continue
        if name == b"content-length":
            lengths.add(value)
        elif name == b"host":
            if host is not None:
                return Malformed("two host fields")
            host = value
        elif name == b"expect":
            expects_continue = value.lower() == b"100-continue"
        headers.append((name, value))
    if size > max_list_size or len(headers) + len(cookies) > max_fields:
        return Answer(431, "Request header fields too large", "too_large")
    method = pseudo.get(b":method")
    if method is None or not TOKEN.fullmatch(method):
        return Malformed("no valid :method")
    authority = pseudo.get(b":authority")
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo or authority is None:
            return Malformed("a CONNECT has :authority and neither :scheme nor :path")
        return Answer(501, "CONNECT is not served", "unsupported")
    scheme, target = pseudo.get(b":scheme"), pseudo.get(b":path")
    if scheme is None or not _SCHEME.fullmatch(scheme):
        return Malformed("no valid :scheme")
    if not target or _BAD_PATH.search(target):
        return Malformed("no valid :path")
    if target == b"*":
        if method != b"OPTIONS":
            return Malformed("the * target is for OPTIONS only")
    elif target[:1] != b"/":
        return Malformed(":path must start with /")
    if authority is None:
        if host is None:
            return Malformed("neither :authority nor host")
        authority = host
    elif host is not None and host.lower() != authority.lower():
        return Malformed("host and :authority differ")
    if not _AUTHORITY.fullmatch(authority):
        return Malformed("invalid :authority")
    content_length = None
    if lengths:
        if len(lengths) > 1 or not all(value.isdigit() for value in lengths):
            return Malformed("invalid content-length")
        content_length = int(lengths.pop())
        if max_body_size is not None and content_length > max_body_size:
            return Answer(413, "Request body too large", "too_large")
    if cookies:
        headers.insert(cookie_at, (b"cookie", b"; ".join(cookies)))
    if host is None:
        headers.insert(0, (b"host", authority))
    else:
        headers = [(b"host", authority), *(field for field in headers if field[0] != b"host")]
    return RequestHead(method, target, scheme, authority, headers, content_length, expects_continue)


def check_trailers(fields: Headers, max_list_size: int, max_fields: int) -> Malformed | None:
    """A request's trailer section: regular fields only (RFC 9113 section 8.1), under the same
    limits as the head; past them the stream is reset too, the response may be under way."""
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + _FIELD_OVERHEAD
        if name[:1] == b":":
            return Malformed(f"pseudo-header field {name!r} in trailers")
        error = _field_error(name, value)
        if error is not None:
            return Malformed(error)
    if size > max_list_size or len(fields) > max_fields:
        return Malformed("trailer section too large")
    return None


def _checked_name(name: bytes) -> bytes:
    lower = _valid_response_names.get(name)
    if lower is None:
        if not TOKEN.fullmatch(name):
            raise ValueError(f"invalid response header name {name!r}")
        lower = name.lower()
        if len(_valid_response_names) < 1024:
            _valid_response_names[name] = lower
    return lower


def trailer_fields(trailers: Headers) -> list[tuple[bytes, bytes]]:
    """Response trailers as h2 sends them; ValueError when one is not valid. Fields that only
    framing or the connection may carry are dropped, as in a head."""
    fields = []
    for name, value in trailers:
        lower = _checked_name(name)
        if BAD_VALUE.search(value):
            raise ValueError(f"invalid value for response trailer {name!r}: {value!r}")
        if lower not in _CONNECTION_SPECIFIC and lower != b"content-length":
            fields.append((lower, value.strip(b" \t")))
    return fields


def response_fields(
    status: int, headers: Headers, extra: Headers
) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """A response head as h2 sends it (":status" first, names lower-cased), and the body
    length its Content-Length promises (None without one). ValueError when it is not valid.

    The connection-specific fields an application written for HTTP/1.1 sends (Connection,
    Transfer-Encoding, Keep-Alive, Upgrade) are dropped: HTTP/2 frames the body and manages the
    connection itself (RFC 9113 section 8.2.2). `extra` (Date, Server) is added where the
    application gave none, as on HTTP/1.1.
    """
    if not 200 <= status <= 999:
        raise ValueError(f"invalid final status code {status}")
    fields = [(b":status", b"%d" % status)]
    content_length: int | None = None
    has_date = has_server = False
    for name, value in headers:
        lower = _checked_name(name)
        if BAD_VALUE.search(value):
            raise ValueError(f"invalid value for response header {name!r}: {value!r}")
        if lower in _CONNECTION_SPECIFIC:
            continue
        value = value.strip(b" \t")
        if lower == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise ValueError(f"invalid Content-Length {value!r}")
            if content_length is not None:
                continue
            content_length = int(value)
        elif lower == b"date":
            has_date = True
        elif lower == b"server":
            has_server = True
        fields.append((lower, value))
    for name, value in extra:
        if not ((name == b"date" and has_date) or (name == b"server" and has_server)):
            fields.append((name, value))
    return fields, content_length
