"""The response half of HTTP/1.1: one response head as one bytes join, and its body framing.

Why not `h11.Connection.send`: per response it builds a fresh Response event, normalises and
re-validates every header, and runs its writers; that is half of h11's cost per request (see
`python -m benchmarks --scenarios floor`). h11 still parses every request; the rules for
writing a response are few, and these are they (RFC 9112 section 6, RFC 9110 section 6.4.1):
- no body for HEAD, 1xx, 204 and 304 (a HEAD response keeps the framing headers a GET gets);
- a Content-Length given by the application frames the body; without one, a body known whole
  gets one, a HTTP/1.1 client gets chunked, a HTTP/1.0 client a body ended by closing;
- `Connection: close` whenever the server will close, `keep-alive` to a HTTP/1.0 client it keeps.
Header names must be tokens and values free of control characters, as h11 would insist.
"""

from __future__ import annotations

from dualgate.http.grammar import BAD_VALUE, REASONS, TOKEN, Headers

__all__ = [
    "CHUNKED",
    "CLOSE",
    "EMPTY",
    "FRAMED",
    "LENGTH",
    "ResponseHead",
    "build_head",
    "refusal_response",
]

# How a response body is framed on the wire.
EMPTY = 0  # no body may be sent (HEAD, 1xx, 204, 304)
LENGTH = 1  # Content-Length
CHUNKED = 2  # Transfer-Encoding: chunked
CLOSE = 3  # ended by closing the connection (HTTP/1.0 clients only)
FRAMED = 4  # framed by the protocol below, and ended with its stream (HTTP/2 DATA frames)

_valid_names: set[bytes] = set()
# Parts of heads already checked, each as it goes on the wire: the status line of a (status,
# reason) and the line of a (name, value) field that needs no framing decision. Most responses
# repeat them, so a head is mostly dictionary look-ups. Bounded, like `_valid_names`: past the
# bound (or for a long value) a part is checked each time, as before.
_status_lines: dict[tuple[int, bytes], bytes] = {}
_field_lines: dict[tuple[bytes, bytes], bytes] = {}
# Content-Length fields already checked, with their value as an int: it frames each response
# anew, so it is remembered apart from the lines (and still compared with any other one).
_length_fields: dict[tuple[bytes, bytes], int] = {}
_CACHE_LIMIT = 1024
_CACHED_VALUE_LIMIT = 256
# Fields that decide the framing or stand in for a default header: never cached, always read.
_DECIDING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date", b"server"})


class ResponseHead:
    """A serialised response head and what it decided about the body and the connection."""

    __slots__ = ("data", "framing", "keep_alive", "length")

    def __init__(self, data: bytes, framing: int, length: int, keep_alive: bool) -> None:
        self.data = data
        self.framing = framing
        self.length = length
        self.keep_alive = keep_alive


def _check_name(name: bytes) -> None:
    if name not in _valid_names:
        if not TOKEN.fullmatch(name):
            raise ValueError(f"invalid response header name {name!r}")
        if len(_valid_names) < 1024:
            _valid_names.add(name)


def build_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    head_request: bool,
    http11: bool,
    keep_alive: bool,
    whole_body: int | None,
    extra: Headers,
    extra_head: bytes,
) -> ResponseHead:
    """Serialise a response head. `whole_body` is the body's length when it is known in full;
    `extra` (Date, Server) is added where the application gave none, `extra_head` being it
    already serialised."""
    status_line = _status_lines.get((status, reason))
    if status_line is None:
        status_line = _status_line(status, reason)
    lines = [status_line]
    content_length: int | None = None
    chunked = False
    has_date = has_server = False
    field_lines = _field_lines
    length_fields = _length_fields
    for field in headers:
        line = field_lines.get(field)
        if line is not None:
            lines.append(line)
            continue
        length = length_fields.get(field)
        if length is not None:
            if content_length is not None and length != content_length:
                raise ValueError(f"invalid Content-Length {field[1]!r}")
            content_length = length
            continue
        name, value = field
        _check_name(name)
        if BAD_VALUE.search(value):
            raise ValueError(f"invalid value for response header {name!r}: {value!r}")
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise ValueError(f"invalid Content-Length {value!r}")
            content_length = int(value)
            if len(length_fields) < _CACHE_LIMIT and type(name) is bytes and type(value) is bytes:
                length_fields[(name, value)] = content_length
            continue
        if lower == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise ValueError(f"unsupported Transfer-Encoding {value!r}")
            chunked = True
            continue
        if lower == b"connection":
            if b"close" in value.lower():
                keep_alive = False
            continue
        if lower == b"date":
            has_date = True
        elif lower == b"server":
            has_server = True
        line = name + b": " + value + b"\r\n"
        if (
            lower not in _DECIDING
            and len(value) <= _CACHED_VALUE_LIMIT
            and len(field_lines) < _CACHE_LIMIT
            and type(name) is bytes
            and type(value) is bytes
        ):
            field_lines[(name, value)] = line
        lines.append(line)
    if chunked:
        content_length = None
    if head_request or status in (204, 304):
        framing = EMPTY
        if status != 204:
            # HEAD and 304 carry the framing a GET would have had: never chunked to a HTTP/1.0
            # client (RFC 9112 section 6.1), whose GET would have been ended by closing.
            if content_length is not None:
                lines.append(b"content-length: %d\r\n" % content_length)
            elif chunked and http11:
                lines.append(b"transfer-encoding: chunked\r\n")
    elif content_length is not None:
        framing = LENGTH
        lines.append(b"content-length: %d\r\n" % content_length)
    elif whole_body is not None:
        framing = LENGTH
        content_length = whole_body
        lines.append(b"content-length: %d\r\n" % whole_body)
    elif http11:
        framing = CHUNKED
        lines.append(b"transfer-encoding: chunked\r\n")
    else:
        framing = CLOSE
        keep_alive = False
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    elif not http11:
        lines.append(b"connection: keep-alive\r\n")
    if not (has_date or has_server):
        lines.append(extra_head)
    else:
        for name, value in extra:
            if (name == b"date" and has_date) or (name == b"server" and has_server):
                continue
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return ResponseHead(b"".join(lines), framing, content_length or 0, keep_alive)


def _status_line(status: int, reason: bytes) -> bytes:
    if not 200 <= status <= 999:
        raise ValueError(f"invalid final status code {status}")
    if BAD_VALUE.search(reason):
        raise ValueError(f"invalid reason phrase {reason!r}")
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    if len(_status_lines) < _CACHE_LIMIT and type(reason) is bytes and type(status) is int:
        _status_lines[(status, reason)] = line
    return line


def refusal_response(
    status: int,
    message: str,
    *,
    head_request: bool,
    retry_after: bool,
    extra: Headers,
    extra_head: bytes,
    more_headers: Headers | None = None,
) -> bytes:
    """A whole plain-text answer from the server itself, announcing that it closes.

    An empty `message` makes an empty body (a WebSocket closed before its accept is a bare 403);
    `more_headers` are the refusal's own (a WebSocket's Sec-WebSocket-Version).
    """
    body = message.encode("utf-8", "replace") + b"\n" if message else b""
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if more_headers:
        headers += more_headers
    if retry_after:
        headers.append((b"retry-after", b"1"))
    head = build_head(
        status,
        REASONS.get(status, b""),
        headers,
        head_request=head_request,
        http11=True,
        keep_alive=False,
        whole_body=len(body),
        extra=extra,
        extra_head=extra_head,
    )
    return head.data if head.framing == EMPTY else head.data + body
