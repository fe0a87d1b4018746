"""The two loggers of dualgate and the shape of an access line.

`dualgate.error` carries start-up, shutdown and every failure (with tracebacks); `dualgate.access`
carries one record per response. Both are plain stdlib loggers, so an embedding application can
route them like any other; how this process sets them up is logsetup.py's.

An access record carries its facts as attributes (`ACCESS_FIELDS`, passed as `extra=`), so a
JSON formatter or a format string gets them one by one; its message is the access line, the
built-in one or an `--access-log-format` of gunicorn's atoms (`AccessFormat`). Nothing is built
for a record that is not emitted: `log_access` asks `isEnabledFor` first, and the line's text is
left to the handler that formats it (the record's args are formatted lazily by `logging`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence

__all__ = [
    "ACCESS_ATOMS",
    "ACCESS_FIELDS",
    "AccessFormat",
    "access_logger",
    "error_logger",
    "log_access",
    "use_access_format",
]

error_logger = logging.getLogger("dualgate.error")
access_logger = logging.getLogger("dualgate.access")

# The attributes of every access record, in this order; "-" where a text is unknown.
ACCESS_FIELDS = (
    "client_addr",
    "method",
    "path",
    "http_version",
    "status_code",
    "bytes",
    "duration_ms",
    "user_agent",
    "referer",
    "request_id",
)

# gunicorn's atoms (its glogging.py gives them these meanings), plus {name}i and {name}o for
# a request and a response header. Its {name}e (the WSGI environ) has no meaning for ASGI.
ACCESS_ATOMS = {
    "h": "client address, without the port",
    "l": "-",
    "u": "user name of HTTP Basic authentication, or -",
    "t": "time the request came, [10/Oct/2026:13:55:36 +0000]",
    "r": "request line: GET /path?q HTTP/1.1",
    "m": "method",
    "U": "path without the query",
    "q": "query string, without the ?",
    "H": "protocol: HTTP/1.1",
    "s": "status code",
    "B": "body bytes sent",
    "b": "body bytes sent",
    "f": "Referer",
    "a": "User-Agent",
    "T": "duration in whole seconds",
    "D": "duration in microseconds",
    "M": "duration in milliseconds",
    "L": "duration in seconds, 6 decimals",
    "p": "process id, <1234>",
}

_DEFAULT_LINE = '%s "%s %s HTTP/%s" %d %d %.1fms'
_DEFAULT_LINE_NO_DURATION = '%s "%s %s HTTP/%s" %d %d -'
_HEADER_ATOM = re.compile(r"\{([!#$%&'*+.^_`|~0-9A-Za-z-]+)\}([io])")
_PERCENT = re.compile(r"%(?:\(([^)]*)\)(.)|(.)|$)")
_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')
# Atoms that are a request header, escaped like {name}i.
_FROM_HEADERS = {"a": b"user-agent", "f": b"referer"}


class AccessFormat:
    """An `--access-log-format`, checked once: `%(atom)s` and `%%`, nothing else (a `%d` would
    fail on a "-" at the first refused request, long after start-up)."""

    def __init__(self, text: str) -> None:
        for match in _PERCENT.finditer(text):
            name, kind, other = match.groups()
            if name is None and other != "%":
                raise ValueError(
                    f"{match.group(0)!r} at {match.start()}: use %(atom)s for an atom and "
                    "%% for a percent sign"
                )
            if name is not None and kind != "s":
                raise ValueError(f"%({name}){kind}: atoms are written %({name})s")
            if name is not None and name not in ACCESS_ATOMS and not _HEADER_ATOM.fullmatch(name):
                known = " ".join(ACCESS_ATOMS)
                raise ValueError(f"unknown atom %({name})s; known: {known} {{header}}i {{header}}o")
        self.text = text


# The format in use in this process (set by logsetup.configure_logging), None for the built-in
# line. Process-wide, like the loggers it serves.
_format: AccessFormat | None = None


def use_access_format(access_format: AccessFormat | None) -> None:
    global _format
    _format = access_format


def log_access(
    client: tuple[str, int | None] | None,
    method: bytes,
    target: bytes,
    http_version: bytes,
    status: int,
    sent: int,
    started_at: float | None,
    request_headers: Sequence[tuple[bytes, bytes]],
    response_headers: Sequence[tuple[bytes, bytes]] | None = None,
) -> None:
    """One access record for a finished (or broken-off) response, naming the real client (the
    one a trusted proxy forwarded, when it did). Every protocol calls this one, with values:
    the HTTP/1.1 connection, the WebSocket handshake, a refusal before any request line (whose
    method, target and version are b"-", and whose start is unknown: None)."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    now = time.monotonic()
    user_agent = referer = request_id = "-"
    for name, value in request_headers:
        if name == b"user-agent":
            user_agent = _text(value)
        elif name == b"referer":
            referer = _text(value)
        elif name == b"x-request-id":
            request_id = _text(value)
    duration_ms = None if started_at is None else round((now - started_at) * 1000, 3)
    fields = {
        "client_addr": _client(client),
        "method": method.decode("ascii", "replace"),
        "path": target.decode("ascii", "replace"),
        "http_version": http_version.decode("ascii", "replace"),
        "status_code": status,
        "bytes": sent,
        "duration_ms": "-" if duration_ms is None else duration_ms,
        "user_agent": user_agent,
        "referer": referer,
        "request_id": request_id,
    }
    access_format = _format
    if access_format is not None:
        host = "-" if client is None else client[0]
        atoms = _Atoms(fields, host, duration_ms, request_headers, response_headers or ())
        access_logger.info(access_format.text, atoms, extra=fields)
    elif duration_ms is None:
        access_logger.info(_DEFAULT_LINE_NO_DURATION, *_line_values(fields), extra=fields)
    else:
        access_logger.info(_DEFAULT_LINE, *_line_values(fields), duration_ms, extra=fields)


def _line_values(fields: dict[str, object]) -> tuple[object, ...]:
    return tuple(
        fields[name]
        for name in ("client_addr", "method", "path", "http_version", "status_code", "bytes")
    )


class _Atoms(Mapping[str, object]):
    """gunicorn's atoms of one record, each worked out only when the line's format reads it
    (`logging` formats the message with this mapping, when and if a handler formats it)."""

    def __init__(
        self,
        fields: dict[str, object],
        host: str,
        duration_ms: float | None,
        request_headers: Sequence[tuple[bytes, bytes]],
        response_headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        self._fields = fields
        self._host = host
        self._duration_ms = duration_ms
        self._request_headers = request_headers
        self._response_headers = response_headers
        self._logged_at = time.time()

    def __getitem__(self, atom: str) -> object:
        header = _HEADER_ATOM.fullmatch(atom)
        if header is not None:
            headers = self._request_headers if header.group(2) == "i" else self._response_headers
            return _escaped(_header(headers, header.group(1).lower().encode("ascii")))
        if atom in _FROM_HEADERS:
            return _escaped(_header(self._request_headers, _FROM_HEADERS[atom]))
        if atom == "u":
            return _basic_user(self._request_headers)
        value = self._atom(atom)
        return _quoted(value) if isinstance(value, str) else value

    def _atom(self, atom: str) -> object:
        fields = self._fields
        path = str(fields["path"])
        if atom == "h":
            return self._host
        if atom == "r":
            return f"{fields['method']} {path} HTTP/{fields['http_version']}"
        if atom in ("b", "B"):
            return fields["bytes"]
        if atom == "s":
            return fields["status_code"]
        if atom == "m":
            return fields["method"]
        if atom == "U":
            return path.partition("?")[0]
        if atom == "q":
            return path.partition("?")[2]
        if atom == "H":
            return "-" if fields["http_version"] == "-" else f"HTTP/{fields['http_version']}"
        if atom == "p":
            return f"<{os.getpid()}>"
        if atom == "t":
            came = self._logged_at - (self._duration_ms or 0.0) / 1000
            return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(came))
        if atom == "l" or self._duration_ms is None:
            return "-"
        micros = round(self._duration_ms * 1000)
        if atom == "T":
            return micros // 1_000_000
        if atom == "D":
            return micros
        if atom == "M":
            return micros // 1000
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"  # "L": AccessFormat checked

    # A Mapping to `logging` (which unpacks a single mapping argument into the record's args);
    # only the atoms the format names are ever asked for.
    def __iter__(self) -> Iterator[str]:
        return iter(ACCESS_ATOMS)

    def __len__(self) -> int:
        return len(ACCESS_ATOMS)


def _header(headers: Sequence[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name.lower() == wanted:
            return value
    return None


def _basic_user(headers: Sequence[tuple[bytes, bytes]]) -> str:
    scheme, _, credentials = (_header(headers, b"authorization") or b"").partition(b" ")
    if scheme.lower() != b"basic":
        return "-"
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "-"
    return _escaped(decoded.partition(b":")[0] or None)


def _text(value: bytes) -> str:
    # Header values may hold any byte but CR, LF and NUL: escaped, never decoded into a line
    # that would read differently from what was sent.
    return value.decode("ascii", "backslashreplace")


def _quoted(value: str) -> str:
    # As gunicorn does, so that a value cannot close the quotes a format puts around it; the
    # backslash too, so that a value ending in one cannot either.
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _escaped(value: bytes | None) -> str:
    """A header value as Apache writes one into a line: printable ASCII as is, a quote and a
    backslash escaped, any other byte as \\xhh; "-" when absent."""
    if value is None:
        return "-"
    return _UNSAFE.sub(_escape_byte, value).decode("ascii")


def _escape_byte(match: re.Match[bytes]) -> bytes:
    byte = match.group(0)
    return b"\\" + byte if byte in (b'"', b"\\") else b"\\x%02x" % byte[0]


def _client(client: tuple[str, int | None] | None) -> str:
    if client is None:
        return "-"
    return client[0] if client[1] is None else f"{client[0]}:{client[1]}"
