"""Property-based tests over real sockets against a running dualgate (hypothesis).

- Any valid request, pipelined with others and split at any byte boundaries, gives the
  application the same WSGI environ / ASGI scope and body as when it arrives in one piece, and
  what the application sees is what was sent.
- Any mutation of a valid request gets a valid answer (parsed by h11, tests/http_client.py) or
  a clean close: never an error logged by the server, a hang, or a second request reaching the
  application.
- Chunked bodies with random chunk sizes, size spellings, extensions and trailers round-trip.
- A header value holding any byte 0-255 is refused (400, the application never called) or
  passed exactly, by the rule of RFC 9110 section 5.5.

Each server is started once per module (running_server) with a recording application; one
worker thread, so WSGI calls happen in the order requests arrive and a request sent after an
example is answered only once everything before it has reached the application.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Reader, Receive, Scope, Send, asgi_app, connect, running_server
from tests.http_client import read_response

# Every server here runs once with each request head parser (h11, httptools).
pytestmark = pytest.mark.usefixtures("both_parsers")

TIMEOUT = 5.0  # per socket operation: longer means the server hangs
PIECE_GAP = 0.002  # seconds between the pieces of a split request, so each is its own segment
SYNC = "/__sync"
PROPS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# -- the recording applications -------------------------------------------------------------


@dataclass
class Recorder:
    """Every request path that reached the application, in order."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    paths: list[str] = field(default_factory=list)

    def add(self, path: str) -> None:
        with self.lock:
            self.paths.append(path)

    def take(self) -> list[str]:
        with self.lock:
            paths, self.paths = [p for p in self.paths if p != SYNC], []
            return paths


# The environ keys that do not change from one connection to the next (REMOTE_PORT does).
WSGI_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
)


def wsgi_recorder(recorder: Recorder) -> Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        recorder.add(environ["PATH_INFO"])
        body = environ["wsgi.input"].read()  # a client gone raises: dualgate handles it
        view = {key: environ.get(key) for key in WSGI_KEYS}
        view.update({key: value for key, value in environ.items() if key.startswith("HTTP_")})
        view["body"] = body.decode("latin-1")
        answer = json.dumps(view, sort_keys=True).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [answer]

    return app


def asgi_recorder(recorder: Recorder) -> Any:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        recorder.add(scope["path"])
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break

        def text(value: bytes) -> str:
            return value.decode("latin-1")

        view = {
            "type": scope["type"],
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": text(scope["raw_path"]),
            "query_string": text(scope["query_string"]),
            "root_path": scope["root_path"],
            "headers": [[text(name), text(value)] for name, value in scope["headers"]],
            "server": scope["server"],
            "body": text(bytes(body)),
        }
        answer = json.dumps(view).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return asgi_app(handler)


class Served(NamedTuple):
    interface: str
    port: int
    recorder: Recorder


class ErrorLog(logging.Handler):
    """Keeps every ERROR the server or asyncio logs: a client's bytes must never cause one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("dualgate.error", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def served(request: pytest.FixtureRequest, errors: ErrorLog, both_parsers: str) -> Iterator[Served]:
    # both_parsers: set before this server starts, so it reads with that module run's parser.
    recorder = Recorder()
    interface: str = request.param
    app = wsgi_recorder(recorder) if interface == "wsgi" else asgi_recorder(recorder)
    with running_server(app, threads=1, timeout_keep_alive=30) as server:
        yield Served(interface, server.port, recorder)
    assert not errors.records, [record.getMessage() for record in errors.records]


def sync(served: Served) -> None:
    """Returns once everything sent before has reached the application (see the docstring)."""
    with connect(served.port, TIMEOUT) as sock:
        sock.sendall(f"GET {SYNC} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status, _, _ = Reader(sock).read_response()
        assert status == b"HTTP/1.1 200 OK"


def send_pieces(sock: socket.socket, pieces: list[bytes]) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for index, piece in enumerate(pieces):
        if index:
            time.sleep(PIECE_GAP)
        sock.sendall(piece)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p for p in points if 0 < p < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- valid requests -------------------------------------------------------------------------

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Fields the framing or the connection depend on are the generator's own business.
RESERVED = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade",
            "te", "trailer", "keep-alive", "proxy-connection", "forwarded", "x-forwarded-for",
            "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"}  # fmt: skip
FIELD_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
PATH_PARTS = ["a", "Z", "0", "-", ".", "_", "~", "%20", "%2F", "%C3%A9", "%25", ";", "=", "@",
              ":", "!", "$", "&", "'", "(", ")", "*", "+", ",", "/"]  # fmt: skip
QUERY_PARTS = [*PATH_PARTS, "?", "&", "=", "%00", "%FF"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "X-CUSTOM"]


class Sent(NamedTuple):
    """A generated request: its bytes and what the application must see."""

    wire: bytes
    method: bytes
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]  # as the application sees them: names lower-cased
    body: bytes


names = st.text(TOKEN, min_size=1, max_size=12).filter(lambda name: name.lower() not in RESERVED)
values = st.binary(max_size=24).map(
    lambda raw: bytes(FIELD_BYTES[b % len(FIELD_BYTES)] for b in raw).strip(b" \t")
)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` in chunks of random sizes, hex spelled at random, with random extensions and
    maybe trailer fields (RFC 9112 section 7.1)."""
    sizes = draw(st.lists(st.integers(1, 64), max_size=12))
    out, start = bytearray(), 0
    for size in [*sizes, len(body)]:
        piece = body[start : start + size]
        start += len(piece)
        if not piece:
            continue
        out += _chunk_line(draw, len(piece)) + piece + b"\r\n"
        if start >= len(body):
            break
    out += _chunk_line(draw, 0)
    for name, value in draw(st.lists(st.tuples(names, values), max_size=3)):
        out += name.encode() + b": " + value + b"\r\n"
    return bytes(out + b"\r\n")


def _chunk_line(draw: st.DrawFn, size: int) -> bytes:
    digits = f"{size:x}"
    digits = draw(st.sampled_from([digits, digits.upper(), "0" * draw(st.integers(0, 3)) + digits]))
    line = digits.encode()[-16:] if len(digits) > 16 else digits.encode()
    for name in draw(st.lists(st.text(TOKEN, min_size=1, max_size=6), max_size=2)):
        value = draw(
            st.one_of(
                st.just(""),
                st.text(TOKEN, min_size=1, max_size=6).map(lambda v: "=" + v),
                st.text('abc \t!#\\"', max_size=6).map(
                    lambda v: '="' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                ),
            )
        )
        line += f";{name}{value}".encode()
    return line + b"\r\n"


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    method = draw(st.sampled_from(METHODS)).encode()
    path = ("/" + "".join(draw(st.lists(st.sampled_from(PATH_PARTS), max_size=8)))).encode()
    query = "".join(draw(st.lists(st.sampled_from(QUERY_PARTS), max_size=6))).encode()
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    headers = [(b"host", b"example.com")]
    headers += [(name.lower().encode(), value) for name, value in fields]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked"] if body else ["none", "length"]))
    lines = [b"host: example.com"] + [name.encode() + b": " + value for name, value in fields]
    if framing == "length":
        lines.append(b"content-length: %d" % len(body))
        headers.append((b"content-length", b"%d" % len(body)))
        payload = body
    elif framing == "chunked":
        lines.append(b"transfer-encoding: chunked")
        headers.append((b"transfer-encoding", b"chunked"))
        payload = draw(chunked(body))
    else:
        payload = b""
    target = path + (b"?" + query if query else b"")
    head = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(line + b"\r\n" for line in lines)
    return Sent(head + b"\r\n" + payload, method, path, query, headers, body)


def views(served: Served, pieces: list[bytes], count: int) -> list[dict[str, Any]]:
    """Send the pieces on one connection; the application's view of each of `count` requests."""
    with connect(served.port, TIMEOUT) as sock:
        send_pieces(sock, pieces)
        reader = Reader(sock)
        answers = []
        for _ in range(count):
            status, _, body = reader.read_response()
            assert status == b"HTTP/1.1 200 OK", (status, body)
            answers.append(json.loads(body))
    return answers


def check_view(served: Served, view: dict[str, Any], sent: Sent) -> None:
    """What the application saw is what was sent."""
    latin = sent.body.decode("latin-1")
    if served.interface == "asgi":
        assert view["method"] == sent.method.decode()
        assert view["raw_path"] == sent.path.decode("latin-1")
        assert view["query_string"] == sent.query.decode("latin-1")
        assert view["headers"] == [[n.decode(), v.decode("latin-1")] for n, v in sent.headers]
        assert view["body"] == latin
    else:
        assert view["REQUEST_METHOD"] == sent.method.decode()
        assert view["QUERY_STRING"] == sent.query.decode("latin-1")
        assert view["body"] == latin


def test_split_and_pipelined_requests_reach_the_app_as_sent_whole(served: Served) -> None:
    @settings(PROPS, max_examples=40)
    @given(batch=st.lists(requests(), min_size=1, max_size=4), data=st.data())
    def check(batch: list[Sent], data: st.DataObject) -> None:
        wire = b"".join(sent.wire for sent in batch)
        whole = views(served, [wire], len(batch))
        points = data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=8), "cuts")
        assert views(served, cut(wire, points), len(batch)) == whole
        for view, sent in zip(whole, batch, strict=True):
            check_view(served, view, sent)

    check()


# -- mutations ------------------------------------------------------------------------------

# Bytes that matter to a parser, for replacements and insertions; any byte for the others.
SHARP = b'\r\n\x00 \t:;,="-0123456789abcdefABCDEF\x7f\x80\xff'


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with one to four byte-level edits. No edit copies a span, so the
    bytes never hold a second whole request unless the first one's framing is cut short; the
    body is letters only, so then what follows cannot parse as a request either."""
    sent = draw(requests())
    wire = bytearray(sent.wire)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(wire) - 1)))
        edit = draw(st.sampled_from(["flip", "replace", "insert", "delete", "truncate"]))
        if edit == "flip" and wire:
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "replace" and wire:
            wire[at] = draw(st.sampled_from(SHARP))
        elif edit == "insert":
            wire.insert(at, draw(st.sampled_from(SHARP)))
        elif edit == "delete" and len(wire) > 1:
            del wire[at]
        elif edit == "truncate":
            del wire[max(1, at) :]
    return bytes(wire)


def answers(port: int, data: bytes) -> list[int]:
    """Send `data`, half-close, and parse everything until the server closes: every answer
    must be a whole, valid HTTP/1.1 response (h11 raises otherwise), and the server must close
    within TIMEOUT (a socket timeout here is a hang)."""
    method = b"HEAD" if data.startswith(b"HEAD ") else b"GET"
    statuses: list[int] = []
    with connect(port, TIMEOUT) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before all of it went out: a clean close
        reader = Reader(sock)
        for _ in range(10):
            try:
                response = read_response(reader, method)
            except ConnectionError:
                return statuses  # closed before another head: done
            assert response.complete, f"a broken-off {response.status} response"
            statuses.append(response.status)
    raise AssertionError(f"more answers than requests: {statuses}")


def test_a_mutated_request_gets_an_answer_or_a_clean_close_and_never_a_second_request(
    served: Served,
) -> None:
    @settings(PROPS, max_examples=150)
    @given(data=mutated())
    def check(data: bytes) -> None:
        served.recorder.take()
        statuses = answers(served.port, data)
        sync(served)
        reached = served.recorder.take()
        assert len(reached) <= 1, f"{len(reached)} requests reached the application: {reached}"
        # A request that reached the application is answered 200, or refused once its body
        # turned out malformed (before the application answered), or left unanswered when
        # the half-close cut its body short. Anything after it, or without it, is refused.
        if reached and statuses and statuses[0] == 200:
            statuses = statuses[1:]
        assert all(400 <= status < 600 for status in statuses), statuses

    check()


# -- chunked bodies --------------------------------------------------------------------------


def test_chunked_bodies_round_trip_whatever_their_chunks_and_extensions(served: Served) -> None:
    @settings(PROPS, max_examples=60)
    @given(body=st.binary(max_size=2000), data=st.data())
    def check(body: bytes, data: st.DataObject) -> None:
        wire = b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire += data.draw(chunked(body), "chunks")
        after = b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"  # framing must end just before it
        points = data.draw(st.lists(st.integers(1, len(wire)), max_size=6), "cuts")
        first, second = views(served, cut(wire + after, points), 2)
        assert first["body"] == body.decode("latin-1")
        assert second["body"] == ""
        assert (second.get("path") or second.get("PATH_INFO")) == "/after"

    check()


# -- header values with every byte -----------------------------------------------------------

VALID = frozenset(FIELD_BYTES) | {0x20}


def probe(served: Served, value: bytes) -> None:
    """A request whose X-Probe field line holds `value`: refused, or passed exactly."""
    served.recorder.take()
    data = b"GET /probe HTTP/1.1\r\nHost: x\r\nX-Probe: " + value + b"\r\n\r\n"
    with connect(served.port, TIMEOUT) as sock:
        sock.sendall(data)
        status, _, body = Reader(sock).read_response()
    stripped = value.strip(b" \t")  # RFC 9110 section 5.5: OWS around a value is not in it
    if all(byte in VALID for byte in stripped):
        assert status == b"HTTP/1.1 200 OK", (value, status, body)
        view = json.loads(body)
        if served.interface == "wsgi":
            seen = view["HTTP_X_PROBE"].encode("latin-1")
        else:
            seen = dict((n, v) for n, v in view["headers"])["x-probe"].encode("latin-1")
        assert seen == stripped, value
    else:
        assert status == b"HTTP/1.1 400 Bad Request", (value, status)
        sync(served)
        assert served.recorder.take() == [], value


@pytest.mark.parametrize("where", ["alone", "start", "middle", "end"])
def test_a_header_value_with_any_byte_is_refused_or_passed_exactly(
    served: Served, where: str
) -> None:
    for byte in range(256):
        one = bytes([byte])
        value = {
            "alone": one,
            "start": one + b"ab",
            "middle": b"a" + one + b"b",
            "end": b"ab" + one,
        }
        if one == b"\n" and where == "end":
            continue  # "ab\n\r\n": the bare LF ends the head, a case of its own below
        probe(served, value[where])


def test_random_header_values_are_refused_or_passed_exactly(served: Served) -> None:
    @settings(PROPS, max_examples=150)
    @given(value=st.binary(max_size=40).filter(lambda v: b"\r\n" not in v and b"\n" not in v))
    def check(value: bytes) -> None:
        probe(served, value)

    check()
