"""The PEP 3333 bridge: all of WSGI, and nothing of sockets or event loops.

Rules of this file:
- Everything here runs synchronously in the thread that runs the application. It talks to the
  outside through two small protocols: `BodySource` (request bytes in) and `ResponseSink`
  (response out). The server (workers.py) and `WSGIMiddleware` (middleware.py) each provide
  one; the PEP's rules live only here.
- The response head goes out with the first non-empty body chunk, or at the end; until then a
  later `start_response(..., exc_info)` may still replace it (PEP 3333, "Buffering and
  Streaming" and "The start_response() Callable").
- Whatever happens, the iterable's `close()` is called exactly once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, cast
from urllib.parse import unquote_to_bytes
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from dualgate.http.grammar import BAD_VALUE_TEXT, TOKEN_TEXT, Headers

__all__ = [
    "BodySource",
    "BytesSource",
    "ClientDisconnected",
    "FileWrapper",
    "ResponseSink",
    "WSGIInput",
    "build_environ",
    "path_info_from_raw",
    "run_wsgi",
]

logger = logging.getLogger("dualgate.error")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NO_BODY_STATUS = frozenset({204, 304})
# Bodies given whole (a list) up to this size are handed over in one piece.
_WHOLE_BODY_LIMIT = 1 << 20


class ClientDisconnected(OSError):
    """The client went away; raised into the application from wsgi.input or write()."""


class BodySource(Protocol):
    def read(self, size: int) -> bytes:
        """Up to `size` bytes (any amount when negative); at least one unless the body ended."""


class ResponseSink(Protocol):
    def start(self, status: int, reason: bytes, headers: Headers) -> None:
        """The response head; always followed by `write`, `sendfile`, `end` or `abort`."""

    def write(self, data: bytes) -> None:
        """Send body bytes; may block while the client is slow; raises ClientDisconnected."""

    def sendfile(self, file: Any, offset: int, count: int) -> bool:
        """Send `count` bytes of `file` from `offset`; False when this sink cannot."""

    def end(self, data: bytes) -> None:
        """The last body bytes; the response is complete."""

    def abort(self) -> None:
        """The response cannot be completed; the client must see it broken off."""


class BytesSource:
    """A body that arrived in full before the application started."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def read(self, size: int) -> bytes:
        start = self._position
        end = len(self._data) if size < 0 else min(len(self._data), start + size)
        self._position = end
        if start == 0 and end == len(self._data):
            return self._data
        return self._data[start:end]


class WSGIInput:
    """`wsgi.input`: a read-only binary stream over a BodySource."""

    def __init__(self, source: BodySource) -> None:
        self._source = source
        self._pending = b""

    def _take_pending(self, size: int) -> bytes:
        data = self._pending[:size]
        self._pending = self._pending[size:]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._pending]
            self._pending = b""
            while chunk := self._source.read(-1):
                parts.append(chunk)
            return b"".join(parts)
        if size <= len(self._pending):
            return self._take_pending(size)
        if self._pending:
            parts = [self._pending]
            self._pending = b""
        else:
            first = self._source.read(size)
            if len(first) == size or not first:
                return first  # the common case: no join, no copy
            parts = [first]
        wanted = size - len(parts[0])
        while wanted > 0:
            chunk = self._source.read(wanted)
            if not chunk:
                break
            parts.append(chunk)
            wanted -= len(chunk)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        while True:
            newline = self._pending.find(b"\n")
            if newline >= 0 and (limit < 0 or newline < limit):
                return self._take_pending(newline + 1)
            if 0 <= limit <= len(self._pending):
                return self._take_pending(limit)
            chunk = self._source.read(65536)
            if not chunk:
                return self._take_pending(len(self._pending))
            self._pending += chunk

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class FileWrapper:
    """`wsgi.file_wrapper`: iterates a file in blocks; the server may send it with sendfile."""

    def __init__(self, filelike: Any, block_size: int = 65536) -> None:
        self.filelike = filelike
        self.block_size = block_size
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while data := read(self.block_size):
            yield data

    def regular_file_span(self) -> tuple[int, int] | None:
        """(offset, bytes left) when the file is a regular OS file that sendfile can send."""
        try:
            fileno = self.filelike.fileno()
            offset = self.filelike.tell()
            stat = os.fstat(fileno)
        except (AttributeError, OSError, ValueError):
            return None
        import stat as stat_module

        if not stat_module.S_ISREG(stat.st_mode):
            return None
        return offset, max(0, stat.st_size - offset)


_environ_keys: dict[bytes, str] = {}


def _environ_key(name: bytes) -> str:
    key = _environ_keys.get(name)
    if key is None:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_environ_keys) < 512:
            _environ_keys[name] = key
    return key


def path_info_from_raw(raw_path: bytes) -> str:
    """PEP 3333's PATH_INFO: the percent-decoded bytes, carried in a latin-1 native string."""
    if b"%" not in raw_path:
        return raw_path.decode("latin-1")
    return unquote_to_bytes(raw_path).decode("latin-1")


def build_environ(
    *,
    method: str,
    script_name: str,
    path_info: str,
    query_string: str,
    headers: Iterable[tuple[bytes, bytes]],
    http_version: str,
    scheme: str,
    client: tuple[str, int | None] | None,
    server: tuple[str, int | None] | None,
    body: BodySource,
    multiprocess: bool = False,
) -> WSGIEnvironment:
    """The environ of one request, from already-parsed parts (lower-cased header names).

    `client` and `server` are what the application is to see (a trusted proxy's forwarded
    values, when the server believed it); a client port of None leaves REMOTE_PORT empty.
    """
    server_name, server_port = server if server is not None else ("localhost", None)
    if server_port is None:
        server_port = 443 if scheme == "https" else 80
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query_string,
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": "HTTP/" + http_version,
        "REMOTE_ADDR": client[0] if client else "",
        "REMOTE_PORT": str(client[1]) if client and client[1] is not None else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": WSGIInput(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
    # Values of a repeated header, joined once at the end: joining as they come copies the
    # value so far for every repetition, quadratic time for a head of many duplicates.
    repeated: dict[str, list[str]] = {}
    if scheme == "https":
        environ["HTTPS"] = "on"  # the CGI variable some applications test instead
    for name, raw_value in headers:
        value = raw_value.decode("latin-1")
        if name == b"content-type":
            environ["CONTENT_TYPE"] = value
        elif name == b"content-length":
            environ["CONTENT_LENGTH"] = value
        elif b"_" in name:
            # X_Forwarded_For would land on the same key as X-Forwarded-For: a proxy that
            # strips one does not strip the other, so underscored names are dropped.
            continue
        else:
            key = _environ_key(name)
            if key not in environ:
                environ[key] = value
            elif (values := repeated.get(key)) is not None:
                values.append(value)
            else:
                repeated[key] = [environ[key], value]
    for key, values in repeated.items():
        # Cookie pairs are separated by "; " (RFC 6265 section 5.4); every other repeatable
        # field by ", " (RFC 9110 section 5.3).
        environ[key] = ("; " if key == "HTTP_COOKIE" else ", ").join(values)
    return environ


class _Response:
    """start_response, write() and the body rules, feeding a ResponseSink."""

    def __init__(self, sink: ResponseSink, environ: WSGIEnvironment) -> None:
        self.sink = sink
        self.is_head = environ["REQUEST_METHOD"] == "HEAD"
        self.status = 0
        self.reason = b""
        self.headers: Headers | None = None
        self.head_sent = False
        # Set with the head: HEAD, 204 and 304 responses carry no body, whatever the app gives.
        self.no_body = False
        self.content_length: int | None = None
        self.sent = 0
        self.truncated = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.headers is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        self.status, self.reason = _parse_status(status)
        self.headers, self.content_length = _encode_headers(headers)
        return self.write

    def write(self, data: bytes) -> None:
        if self.headers is None:
            raise AssertionError("write() called before start_response()")
        if type(data) is not bytes:
            if not isinstance(data, bytes):
                raise TypeError(f"response body chunks must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if not self.head_sent:
            self._send_head()
        if self.no_body:
            return
        data = self._clip(data)
        if data:
            self.sink.write(data)

    def body_done(self) -> bool:
        """Nothing more can go out: PEP 3333 then wants the iterable no longer iterated."""
        if not self.head_sent:
            return False
        length = self.content_length
        return self.no_body or (length is not None and self.sent >= length)

    def _clip(self, data: bytes) -> bytes:
        if self.content_length is not None:
            room = self.content_length - self.sent
            if len(data) > room:
                if not self.truncated:
                    self.truncated = True
                    logger.warning(
                        "Application sent more than its Content-Length of %d; extra bytes dropped",
                        self.content_length,
                    )
                data = data[:room]
        self.sent += len(data)
        return data

    def _send_head(self) -> None:
        assert self.headers is not None
        self.head_sent = True
        self.no_body = self.is_head or self.status in _NO_BODY_STATUS
        self.sink.start(self.status, self.reason, self.headers)

    def finish(self, tail: bytes = b"") -> None:
        if self.headers is None:
            raise AssertionError("the application returned without calling start_response()")
        if tail:
            tail = self._clip(tail)
        if not self.head_sent:
            # Nothing went out yet, so `tail` is the whole body: its length can be declared.
            # A HEAD response's empty body says nothing of the GET body's length.
            if (
                self.content_length is None
                and not (self.is_head and not tail)
                and self.status not in _NO_BODY_STATUS
            ):
                self.headers.append((b"content-length", str(len(tail)).encode("ascii")))
                self.content_length = len(tail)
            self._send_head()
        if self.is_head or self.status in _NO_BODY_STATUS:
            # No body goes out, so a Content-Length (which a 304 may carry: RFC 9110 8.6) is
            # the GET's length, not a promise about this response: nothing is missing.
            tail = b""
        elif self.content_length is not None and self.sent < self.content_length:
            if tail:
                self.sink.write(tail)
            logger.error(
                "Application sent %d of its Content-Length of %d bytes; connection closed",
                self.sent,
                self.content_length,
            )
            self.sink.abort()
            return
        self.sink.end(tail)

    def fail(self, exc: BaseException) -> None:
        """After an application error: a 500 if nothing went out yet, else a broken-off body."""
        if self.head_sent:
            self.sink.abort()
            return
        body = b"Internal Server Error\n"
        self.sink.start(
            500,
            b"Internal Server Error",
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        )
        self.head_sent = True
        self.sink.end(b"" if self.is_head else body)


# start_response's answers already checked: a status string as (code, reason), and a header
# pair that needs no decision per response (not Content-Length) as its encoded pair. Bounded;
# past the bound (or for a long value) each is checked every time, as before.
_statuses: dict[str, tuple[int, bytes]] = {}
_encoded_pairs: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_CACHE_LIMIT = 1024
_CACHED_VALUE_LIMIT = 256


def _parse_status(status: str) -> tuple[int, bytes]:
    if type(status) is not str:
        raise TypeError(f"status must be a str, not {type(status).__name__}")
    parsed = _statuses.get(status)
    if parsed is not None:
        return parsed
    parsed = _check_status(status)
    if len(_statuses) < _CACHE_LIMIT:
        _statuses[status] = parsed
    return parsed


def _check_status(status: str) -> tuple[int, bytes]:
    code, _, reason = status.partition(" ")
    if len(code) != 3 or not code.isdigit() or not 200 <= int(code) <= 999:
        raise ValueError(f"status must start with a 3-digit final status code: {status!r}")
    if BAD_VALUE_TEXT.search(reason):
        raise ValueError(f"status contains control characters: {status!r}")
    return int(code), reason.encode("latin-1")


def _encode_headers(headers: list[tuple[str, str]]) -> tuple[Headers, int | None]:
    if not isinstance(headers, list):
        raise TypeError(f"headers must be a list, not {type(headers).__name__}")
    encoded: Headers = []
    content_length: int | None = None
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"each header must be a (name, value) tuple: {item!r}")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"header names and values must be str: {item!r}")
        pair = _encoded_pairs.get(item)
        if pair is not None:
            encoded.append(pair)
            continue
        if not TOKEN_TEXT.fullmatch(name):
            raise ValueError(f"invalid header name: {name!r}")
        if BAD_VALUE_TEXT.search(value):
            raise ValueError(f"header {name!r} has a control character (CR, LF, NUL) in its value")
        lower = name.lower()
        if lower in _HOP_BY_HOP:
            raise ValueError(f"{name!r} is a hop-by-hop header; a WSGI application may not set it")
        if lower == "content-length":
            if not value.isdigit() or not value.isascii():
                raise ValueError(f"invalid Content-Length: {value!r}")
            if content_length is not None and int(value) != content_length:
                raise ValueError("conflicting Content-Length headers")
            content_length = int(value)
        try:
            pair = (name.encode("latin-1"), value.encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r} is not latin-1 encodable") from None
        encoded.append(pair)
        if (
            lower != "content-length"
            and len(value) <= _CACHED_VALUE_LIMIT
            and len(_encoded_pairs) < _CACHE_LIMIT
        ):
            _encoded_pairs[(name, value)] = pair
    return encoded, content_length


def run_wsgi(app: WSGIApplication, environ: WSGIEnvironment, sink: ResponseSink) -> None:
    """Run one request through a WSGI application, start to finish, into `sink`."""
    response = _Response(sink, environ)
    result: Iterable[bytes] | None = None
    try:
        result = app(environ, cast(StartResponse, response.start_response))
        finished = False
        try:
            _send_result(result, response)
            finished = True
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    if not finished:
                        raise
                    # The response was already complete (its end recorded in the sink), so a
                    # failing close() is logged, not turned into a broken-off response the
                    # client would take for a network failure.
                    logger.exception("Exception in close() of the WSGI application's iterable")
    except ClientDisconnected:
        logger.debug(
            "Client disconnected during %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"]
        )
        if not response.head_sent:
            sink.abort()
    except Exception as exc:
        logger.exception("Exception in WSGI application %s", environ.get("PATH_INFO", ""))
        response.fail(exc)


def _send_result(result: Iterable[bytes], response: _Response) -> None:
    if type(result) in (list, tuple):
        chunks = cast("list[bytes]", result)
        if len(chunks) == 1 and type(chunks[0]) is bytes and len(chunks[0]) <= _WHOLE_BODY_LIMIT:
            if response.headers is None:
                raise AssertionError("the application returned without calling start_response()")
            response.finish(chunks[0])
            return
        if all(type(chunk) is bytes for chunk in chunks):
            total = sum(len(chunk) for chunk in chunks)
            if response.headers is not None and not response.head_sent:
                if total <= _WHOLE_BODY_LIMIT:
                    response.finish(b"".join(chunks))
                    return
                # A body given whole but too big to send in one piece still has a known
                # length: declare it (PEP 3333 "Handling the Content-Length Header") rather
                # than fall back to chunked, then stream it as usual.
                if response.content_length is None and response.status not in _NO_BODY_STATUS:
                    response.headers.append((b"content-length", str(total).encode("ascii")))
                    response.content_length = total
    if isinstance(result, FileWrapper) and _try_sendfile(result, response):
        return
    for chunk in result:
        response.write(chunk)
        if response.body_done():
            # The declared length is out (or no body may follow this head): iterating on
            # would only drop bytes, and an endless iterable would hold the thread forever.
            break
    response.finish()


def _try_sendfile(wrapper: FileWrapper, response: _Response) -> bool:
    span = wrapper.regular_file_span()
    if (
        span is None
        or response.headers is None
        or response.head_sent
        or response.is_head
        or response.status in _NO_BODY_STATUS
    ):
        return False
    offset, available = span
    if response.content_length is None:
        response.headers.append((b"content-length", str(available).encode("ascii")))
        response.content_length = available
    count = min(available, response.content_length)
    response._send_head()
    if not response.sink.sendfile(wrapper.filelike, offset, count):
        # Fall back to reading the file in blocks.
        response.sent = 0
        for chunk in wrapper:
            response.write(chunk)
            if response.sent >= count:
                break
        response.finish()
        return True
    response.sent = count
    response.finish()
    return True
