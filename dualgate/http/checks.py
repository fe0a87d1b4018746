"""The RFC 9112 and RFC 9110 requirements on requests that h11 leaves to the server. Pure.

h11 parses leniently in places: it accepts a request carrying both Content-Length and
Transfer-Encoding, obs-fold, bare LF line ends, any HTTP/d.d version, a Host of any shape, any
request target for any method, a head larger than its limit when it arrives whole, and loose
chunk framing. The request reader (reader.py) passes every head through `check_request` before
an application can see it, and every chunked body through `ChunkedFraming` as it arrives. This
module takes bytes and returns a `Refusal` or the request's framing; it knows nothing of
connections, so each rule is tested on its own (tests/http/test_checks.py).
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from dualgate.http.grammar import QUOTED_STRING, TOKEN_CHARS, Headers

__all__ = [
    "CHUNK_MOVES",
    "MAX_CHUNK_LINE",
    "ChunkState",
    "ChunkedFraming",
    "Framing",
    "Refusal",
    "check_request",
    "check_trailer_section",
    "final_coding_is_chunked",
    "origin_form",
    "oversized_head",
    "wants_keep_alive",
]


class Refusal(NamedTuple):
    """An answer to a request that must not reach the application; the connection then closes.

    `kind` groups refusals for logs and metrics: malformed, too_large, smuggling, unsupported,
    timeout, busy."""

    status: int
    message: str
    kind: str


class Framing(NamedTuple):
    """What a checked head says about its body and its connection."""

    content_length: int  # 0 when chunked or without a body
    chunked: bool
    keep_alive: bool  # the client allows another request on this connection
    upgrade: bytes  # the Upgrade header (lower-cased) when Connection names "upgrade", else b""


# uri-host [":" port] (RFC 9112 section 3.2, RFC 3986 section 3.2.2): IP-literal, or
# IPv4address / reg-name, which may be empty; no userinfo, path or whitespace.
_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z._~!$&'()*+,;=:-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)"
    rb"(?::[0-9]*)?"
)
# Host values already matched: a client sends the same Host on every request, and a set lookup
# costs a fifth of the match. Bounded, so that a stream of new names cannot grow it.
_good_hosts: set[bytes] = set()
_GOOD_HOSTS_MAX = 1024
# The framing of most requests: no body, no upgrade. Shared, being immutable.
_NO_BODY_KEEP = Framing(0, False, True, b"")
_NO_BODY_CLOSE = Framing(0, False, False, b"")


# A line that starts with white space continues the one before (obs-fold): one scan for both.
_OBS_FOLD = re.compile(rb"\n[ \t]")
# Every byte a head may hold but control characters (RFC 9110 section 5.5: a field value is
# VCHAR, obs-text, SP and HTAB only; CR and LF are the line checks' business). h11 refuses NUL,
# VT and FF in values itself but lets the other controls through to the application. Deleting
# these with bytes.translate leaves the controls, at half the cost of a regex search.
_HEAD_BYTES = bytes([9, 10, 13, *range(0x20, 0x7F), *range(0x80, 0x100)])
# A head that passes all three raw-head rules (CRLF line ends only, no obs-fold, no control
# character but HTAB), in one scan at half the cost of the three: lines of those bytes ended by
# CRLF, none after the first starting with white space, then the blank line. A match implies
# the three pass, whatever the input; a head the reader cut (first byte above 0x20, one blank
# line, at its end) that passes them matches.
_CLEAN_HEAD = re.compile(
    rb"[\t\x20-\x7e\x80-\xff]*\r\n(?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
).fullmatch


def oversized_head(head: bytes | bytearray, limit: int) -> Refusal | None:
    """The one rule for a head over `limit` bytes: 414 when the request line alone takes more
    than half of it (RFC 9112 section 3: the target is what is too long), else 431."""
    if len(head) <= limit:
        return None
    line_end = head.find(b"\n")
    if line_end < 0 or line_end > limit // 2:
        return Refusal(414, "Request target too long", "too_large")
    return Refusal(431, "Request head too large", "too_large")


def _connection_options(connection_values: list[bytes]) -> set[bytes]:
    """The options the Connection header(s) list: tokens, not substrings (RFC 9110 7.6.1)."""
    return {token.strip().lower() for value in connection_values for token in value.split(b",")}


def wants_keep_alive(http_version: bytes, connection_values: list[bytes]) -> bool:
    """Whether the client's request allows another request on this connection."""
    if len(connection_values) == 1:
        # One Connection field of one option, as nearly every client sends: no set built.
        option = connection_values[0].strip().lower()
        if option == b"close":
            return False
        if option == b"keep-alive":
            return True
    tokens = _connection_options(connection_values)
    if b"close" in tokens:
        return False
    return http_version == b"1.1" or b"keep-alive" in tokens


def check_request(
    method: bytes,
    target: bytes,
    headers: Headers,
    http_version: bytes,
    head: bytes,
    max_body_size: int | None,
) -> Refusal | Framing:
    """The RFC 9112 MUSTs that h11 leaves to us: a Refusal, or the request's framing."""
    if http_version[:2] != b"1.":
        return Refusal(505, "Only HTTP/1.x is served", "unsupported")
    if _CLEAN_HEAD(head) is None:
        # One of the three rules below is broken (or the head has an odd shape that passes
        # them all): each is checked on its own, for the refusal's reason.
        lf = head.count(b"\n")
        if lf != head.count(b"\r\n") or lf != head.count(b"\r"):
            return Refusal(400, "Bare CR or LF in the request head", "smuggling")
        if _OBS_FOLD.search(head):
            return Refusal(400, "Obsolete line folding in the request head", "smuggling")
        if head.translate(None, _HEAD_BYTES):
            # RFC 9110 section 5.5 lets a recipient keep these only "within a safe context"; a
            # server cannot know what the application does with a header, so it refuses them.
            return Refusal(400, "A control character in a header field value", "malformed")
    has_length = has_chunked = False
    length = 0
    connection: list[bytes] = []
    upgrade = b""
    for name, value in headers:
        if name == b"connection":
            connection.append(value)
        elif name == b"content-length":
            has_length = True
            length = int(value)
        elif name == b"transfer-encoding":
            has_chunked = True
        elif name == b"host" and value not in _good_hosts:
            if not _HOST.fullmatch(value):
                # RFC 9112 section 3.2: a Host that is not uri-host [":" port] MUST get a 400
                # (h11 checks only that there is exactly one).
                return Refusal(400, "Invalid Host header", "malformed")
            if len(_good_hosts) < _GOOD_HOSTS_MAX:
                _good_hosts.add(value)
        elif name == b"upgrade":
            upgrade = value.strip().lower()
    if has_length and has_chunked:
        return Refusal(400, "Both Content-Length and Transfer-Encoding", "smuggling")
    if has_chunked and http_version == b"1.0":
        # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding MUST be treated as
        # having faulty framing; a forwarder may have left part of it in its buffer.
        return Refusal(400, "Transfer-Encoding in an HTTP/1.0 request", "smuggling")
    if max_body_size is not None and length > max_body_size:
        return Refusal(413, "Request body too large", "too_large")
    if method == b"CONNECT":
        return Refusal(501, "CONNECT is not served", "unsupported")
    if b"#" in target:
        # RFC 9112 section 3.2: a fragment is not part of a request target.
        return Refusal(400, "A fragment (#) in the request target", "malformed")
    if target == b"*":
        if method != b"OPTIONS":
            return Refusal(400, "The * target is for OPTIONS only", "malformed")
    elif not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return Refusal(400, "Invalid request target", "malformed")
        # RFC 9110 sections 4.2.1 and 4.2.4: an http(s) URI with an empty host is invalid,
        # and userinfo in it is an error; the authority becomes the Host the app sees.
        authority = re.split(rb"[/?#]", rest, maxsplit=1)[0]
        if authority[:1] in (b"", b":") or not _HOST.fullmatch(authority):
            return Refusal(400, "Invalid request target", "malformed")
    keep_alive = (
        wants_keep_alive(http_version, connection) if connection else (http_version == b"1.1")
    )
    if upgrade and b"upgrade" not in _connection_options(connection):
        upgrade = b""  # RFC 9110 section 7.8: Upgrade counts only when Connection lists it
    if not (length or has_chunked or upgrade):
        return _NO_BODY_KEEP if keep_alive else _NO_BODY_CLOSE
    return Framing(0 if has_chunked else length, has_chunked, keep_alive, upgrade)


def final_coding_is_chunked(head: bytes | bytearray) -> bool:
    """Whether the Transfer-Encoding header(s) in a raw head end with chunked, applied once.

    Chunked twice ("chunked, chunked") is malformed (RFC 9112 section 7), so a 400 too.
    """
    codings: list[bytes] = []
    for line in bytes(head).split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.lower() == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
    return codings[-1:] == [b"chunked"] and codings.count(b"chunked") == 1


def origin_form(target: bytes, headers: Headers) -> tuple[bytes, Headers]:
    """An absolute-form target as the origin-form path (and query) every interface sees.

    RFC 9112 section 3.2.2: the server uses the target's authority as Host, ignoring any Host
    header the request carried.
    """
    rest = target.partition(b"://")[2]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, path_and_query = rest[:cut], rest[cut:]
    if not path_and_query.startswith(b"/"):
        path_and_query = b"/" + path_and_query
    headers = [(name, value) for name, value in headers if name != b"host"]
    headers.append((b"host", authority))
    return path_and_query, headers


# chunk = chunk-size [ chunk-ext ] CRLF (RFC 9112 section 7.1): hex digits (16 at most, so the
# size fits 64 bits as every other parser on the path reads it), then extensions, each
# BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ].
_TOKEN = TOKEN_CHARS + rb"+"
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*" + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + QUOTED_STRING + rb"))?)*)"
)  # fmt: skip


# Where ChunkedFraming is in a chunked body.
#
# Theory of operation. The framing is always in exactly one state; it moves only as
# `CHUNK_MOVES` allows, at the end of a line, or (DATA) once the chunk's bytes are counted:
#
#     SIZE ──size > 0──> DATA ──size bytes──> DATA_END ──CRLF──> SIZE
#       │
#       └──size 0──> TRAILER ──field line──> TRAILER ──empty line──> DONE
#
# - SIZE: a chunk-size line, extensions allowed (RFC 9112 section 7.1).
# - DATA: chunk data, skipped by count: no Python step per byte.
# - DATA_END: the CRLF that must follow the data.
# - TRAILER: trailer field lines, held to the head's field and size limits.
# - DONE: the body's framing is complete; bytes after it are the next request's.
#
# A refusal is returned, not a state: the reader stops feeding the framing then. States are
# compared by identity; every move is a plain assignment at a line's end, each written where
# the state before is known, so the table is checked by tests/http/test_checks.py rather than
# on every line.
ChunkState = enum.Enum("ChunkState", "SIZE DATA DATA_END TRAILER DONE")
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = ChunkState

# Where each state may go next.
CHUNK_MOVES: dict[ChunkState, frozenset[ChunkState]] = {
    _SIZE: frozenset({_DATA, _TRAILER}),
    _DATA: frozenset({_DATA_END}),
    _DATA_END: frozenset({_SIZE}),
    _TRAILER: frozenset({_TRAILER, _DONE}),
    _DONE: frozenset(),
}
# The longest chunk-size line or trailer line, line break excluded (RFC 9112 section 7.1.1: a
# server ought to limit chunk extensions).
MAX_CHUNK_LINE = 4096


class ChunkedFraming:
    """Decodes a chunked request body on the raw bytes, refusing every shape h11 let through.

    h11 reads a chunk line up to CRLF and accepts a bare LF inside a chunk extension, white
    space after the size, up to 20 hex digits, and bare LF in trailers: each a shape where a
    proxy in front may frame the body differently (request smuggling). Data bytes are skipped
    by count, so only the framing lines cost Python steps. Trailer fields are held to the
    head's field and size limits (431), and to the field grammar a head is held to (see
    `check_trailer_section`); every limit is decided on the bytes so far, so it does not
    depend on how they arrive. The data is kept for `take()`; once the body is complete
    (`done`), `rest` holds the bytes that followed it.
    """

    __slots__ = (
        "_data",
        "_fields_left",
        "_left",
        "_line",
        "_state",
        "_trailer_left",
        "_trailers",
        "rest",
    )

    def __init__(self, max_trailer_fields: int, max_trailer_size: int = 65536) -> None:
        self._state = _SIZE
        self._line = bytearray()
        self._left = 0
        self._fields_left = max_trailer_fields
        # Bytes the trailer section (its empty last line included) may still take.
        self._trailer_left = max_trailer_size
        self._data: list[bytes | bytearray] = []
        self._trailers: list[bytes] = []
        self.rest: bytes | bytearray = b""

    @property
    def done(self) -> bool:
        return self._state is _DONE

    def take(self) -> bytes:
        """The data decoded since the last call."""
        data = self._data
        if not data:
            return b""
        joined = data[0] if len(data) == 1 and type(data[0]) is bytes else b"".join(data)
        data.clear()
        return joined

    @property
    def state(self) -> ChunkState:
        return self._state

    def feed(self, data: bytes | bytearray) -> Refusal | None:
        """Decode the next raw bytes; a reason to refuse the request, or None."""
        position, size = 0, len(data)
        while position < size and self._state is not _DONE:
            if self._state is _DATA:
                taken = min(self._left, size - position)
                self._data.append(data if taken == size else data[position : position + taken])
                position += taken
                self._left -= taken
                if not self._left:
                    self._state = _DATA_END
                continue
            if self._state is _DATA_END:
                # Exactly CRLF, byte by byte: a wrong byte is refused at once, as h11 refused
                # it, not when a line break comes (which it might never do).
                byte = data[position]
                position += 1
                if byte == 0x0D and not self._line:
                    self._line += b"\r"
                elif byte == 0x0A and self._line:
                    self._line.clear()
                    self._state = _SIZE
                elif byte in (0x0A, 0x0D):
                    return Refusal(400, "Bare CR or LF in chunked framing", "smuggling")
                else:
                    return Refusal(400, "Chunk data not followed by CRLF", "smuggling")
                continue
            end = data.find(b"\n", position)
            if end < 0:
                self._line += data[position:]
                if self._state is _TRAILER and len(self._line) > self._trailer_left:
                    return Refusal(431, "Trailer section too large", "too_large")
                if len(self._line) > MAX_CHUNK_LINE:
                    return Refusal(400, "Chunked framing line too long", "smuggling")
                return None
            self._line += data[position : end + 1]
            position = end + 1
            # The limits a partial line is held to above, in the same order, so a line is
            # refused or not whatever TCP segments it arrived in.
            if self._state is _TRAILER:
                self._trailer_left -= len(self._line)
                if self._trailer_left < 0:
                    return Refusal(431, "Trailer section too large", "too_large")
            if len(self._line) - 1 > MAX_CHUNK_LINE:
                return Refusal(400, "Chunked framing line too long", "smuggling")
            refusal = self._end_of_line(bytes(self._line))
            self._line.clear()
            if refusal is not None:
                return refusal
        if self._state is _DONE:
            self.rest = data[position:]
        return None

    def _end_of_line(self, line: bytes) -> Refusal | None:
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            return Refusal(400, "Bare CR or LF in chunked framing", "smuggling")
        content = line[:-2]
        if self._state is _SIZE:
            match = _CHUNK_LINE.fullmatch(content)
            if match is None:
                return Refusal(400, "Invalid chunk size line", "smuggling")
            self._left = int(match.group(1), 16)
            self._state = _DATA if self._left else _TRAILER
        elif not content:  # the empty line that ends the trailer section
            self._state = _DONE
            if self._trailers:
                return check_trailer_section(self._trailers)
        else:
            self._fields_left -= 1
            if self._fields_left < 0:
                return Refusal(431, "Too many trailer fields", "too_large")
            self._trailers.append(content)
        return None


# A field line as h11 0.16 parses one (h11/_abnf.py, header_field): a token, a colon, and a value
# of anything but NUL and white space, inner runs of SP and HTAB allowed, OWS around it. A head
# is held to it by the head parser; a trailer section by the function below, in the same order
# h11 applied it, so that a chunked body is refused or not whichever head parser read its head.
_FIELD_LINE = re.compile(
    rb"(" + TOKEN_CHARS + rb"+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
_DIGITS = re.compile(rb"[0-9]+")


def check_trailer_section(lines: list[bytes]) -> Refusal | None:
    """The trailer fields' grammar, and the framing fields among them, checked as h11 checked
    them: obs-fold joined, every line a field line, then Content-Length and Transfer-Encoding
    values (never used: RFC 9110 section 6.5.1; but a malformed one is a malformed message)."""
    fields: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return Refusal(400, "Malformed trailer: continuation line first", "malformed")
            fields[-1] += b" " + line.lstrip(b" \t")
        else:
            fields.append(line)
    parsed = [_FIELD_LINE.fullmatch(field) for field in fields]
    if None in parsed:
        return Refusal(400, "Malformed trailer: illegal field line", "malformed")
    length: bytes | None = None
    transfer_coding = False
    for match in parsed:
        assert match is not None
        name, value = match.group(1).lower(), match.group(2)
        if name == b"content-length":
            values = {item.strip() for item in value.split(b",")}
            single = values.pop() if len(values) == 1 else b""
            if not _DIGITS.fullmatch(single) or len(single) > 20 or length not in (None, single):
                return Refusal(400, "Malformed trailer: bad Content-Length", "malformed")
            length = single
        elif name == b"transfer-encoding":
            # h11 answered these 501; the reader's rule turns a final coding other than chunked
            # into a 400 (RFC 9112 section 6.3), and a trailer carries no coding at all.
            if transfer_coding or value.lower() != b"chunked":
                return Refusal(400, "Malformed trailer: Transfer-Encoding", "smuggling")
            transfer_coding = True
    return None
