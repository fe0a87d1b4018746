"""dualgate's two request readers, over h11 and over llhttp (`--http h11|httptools`), give the
same events for the same bytes: every corpus request (tests/corpus/requests), every fuzz seed
(benchmarks/fuzz_corpus) and hypothesis-made requests, valid and mutated.

Each input is fed whole, byte by byte (answering each request only when the next byte has
arrived, so PAUSED shows), and cut in two at every position (a sample of positions for long
inputs), then EOF; under the default limits and under small ones. The two event logs must be
equal: each Request with every field the connection reads, the body bytes joined, END, a
Refusal's status and kind, PAUSED, CLOSED, and where the connection closes or changes protocol
(with the bytes handed over). Any difference fails, with both logs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_target import decode
from dualgate.http.checks import Refusal
from dualgate.http.heads import Head, HeadParser, parse_head_h11
from dualgate.http.heads_llhttp import parse_head_llhttp
from dualgate.http.reader import CLOSED, END, NEED_DATA, PAUSED, Request, RequestReader

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "corpus" / "requests").glob("*.http"))
SEEDS = sorted((ROOT / "benchmarks" / "fuzz_corpus").iterdir())
LIMITS = {"default": (65536, 100, None), "small": (512, 8, 64)}
ALL_CUTS = 300  # inputs up to this long are cut at every position; longer ones at a sample
SAMPLED_CUTS = 40
BYTEWISE = 8192
MAX_EVENTS = 100_000

Log = list[tuple[object, ...]]


def events(
    parse_head: HeadParser,
    pieces: list[bytes],
    limits: tuple[int, int, int | None],
    answer_late: bool = False,
) -> Log:
    """What a connection sees: events after each piece, each complete request answered at once
    (or, with `answer_late`, only once the next piece has arrived), then EOF."""
    connection = _Connection(RequestReader(*limits, parse_head))
    for piece in pieces:
        if connection.over:
            break
        if answer_late:
            connection.answer()
        connection.reader.feed(piece)
        connection.pump()
        if not answer_late:
            connection.answer()
    if not connection.over:
        connection.answer()
        connection.reader.feed_eof()
        connection.pump()
        connection.answer()
    return connection.log


class _Connection:
    """The connection's side of a reader, logging what it sees."""

    def __init__(self, reader: RequestReader) -> None:
        self.reader = reader
        self.log: Log = []
        self.request: Request | None = None
        self.complete = False  # the request is whole and waits for its answer
        self.over = False  # refused, closed after a last request, or switched protocol

    def pump(self) -> None:
        log = self.log
        for _ in range(MAX_EVENTS):
            event = self.reader.next_event()
            if type(event) is Request:
                log.append(_request_fields(event))
                self.request = event
                self.complete = not event.has_body
            elif type(event) is bytes:
                if log and log[-1][0] == "body":
                    log[-1] = ("body", cast(bytes, log[-1][1]) + event)
                else:
                    log.append(("body", event))
            elif event is END:
                log.append(("end",))
                self.complete = True
            elif type(event) is Refusal:
                log.append(("refusal", event.status, event.kind))
                self.over = True
                return
            elif event is NEED_DATA:
                return
            else:
                assert event is PAUSED or event is CLOSED, event
                if not log or log[-1] != (repr(event),):
                    log.append((repr(event),))
                return
        raise AssertionError(f"no waiting event within {MAX_EVENTS} events")

    def answer(self) -> None:
        """The response to the complete request is done: read on, close, or switch."""
        while self.complete and not self.over:
            request = self.request
            assert request is not None
            self.complete = False
            if request.upgrade or request.method == b"CONNECT":
                self.log.append(("switch", self.reader.take_leftover()))
                self.over = True
            elif not request.keep_alive:
                self.log.append(("close",))
                self.over = True
            else:
                self.reader.start_next()
                self.pump()


def _request_fields(request: Request) -> tuple[object, ...]:
    return (
        "request",
        request.method,
        request.target,
        tuple(request.headers),
        request.http_version,
        request.content_length,
        request.chunked,
        request.keep_alive,
        request.upgrade,
        request.expects_continue,
    )


def ways(data: bytes, all_cuts: int = ALL_CUTS) -> list[tuple[list[bytes], bool]]:
    """The ways `data` is fed: whole, byte by byte (answering late), cut in two at every
    position when it is at most `all_cuts` long, else at a sample of positions."""
    found: list[tuple[list[bytes], bool]] = [([data], False)]
    # Byte by byte for all but the longest inputs (a reader looks over its whole head window
    # at each piece, so 70 KB byte by byte takes seconds): those go in pieces of 997 bytes.
    step = 1 if len(data) <= BYTEWISE else 997
    if len(data) > 1:
        found.append(([data[i : i + step] for i in range(0, len(data), step)], True))
    if len(data) <= all_cuts:
        cuts = list(range(1, len(data)))
    else:
        rng = random.Random(data)
        cuts = sorted(rng.sample(range(1, len(data)), min(SAMPLED_CUTS, len(data) - 1)))
    found += [([data[:cut], data[cut:]], False) for cut in cuts]
    return found


def assert_same(
    data: bytes, limit_sets: tuple[str, ...] = ("default", "small"), all_cuts: int = ALL_CUTS
) -> int:
    """The two readers agree on `data` every way it is fed; returns the number of runs."""
    runs = 0
    for name in limit_sets:
        limits = LIMITS[name]
        for pieces, late in ways(data, all_cuts):
            ours = events(parse_head_h11, pieces, limits, late)
            theirs = events(parse_head_llhttp, pieces, limits, late)
            runs += 1
            if ours != theirs:
                cut = [len(piece) for piece in pieces[:-1]] if len(pieces) < 3 else "bytewise"
                raise AssertionError(
                    f"the readers disagree ({name} limits, cut {cut}) on {data[:300]!r}\n"
                    f"h11:       {ours}\nhttptools: {theirs}"
                )
    return runs


# -- the stored inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_the_readers_agree_on_the_corpus(path: Path) -> None:
    assert_same(path.read_bytes())


@pytest.mark.parametrize("path", SEEDS, ids=[path.name for path in SEEDS])
def test_the_readers_agree_on_the_fuzz_seeds(path: Path) -> None:
    # The seed's stream (its cuts and options aside: cuts are sampled here, the small limits
    # tried). Seeds are mostly corpus requests with a fuzzer's edits, so a sample of the cuts.
    _, pieces = decode(path.read_bytes())
    assert_same(b"".join(pieces), all_cuts=0)


# -- hypothesis: requests made valid, then mutated ------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"PATCH"]),
    st.sampled_from([b"CONNECT", b"PRI", b"M-SEARCH", b"get", b"FOO", b"PROPFIND", b"GET\t"]),
    st.text(TOKEN_CHARS, min_size=1, max_size=6).map(str.encode),
)
targets = st.one_of(
    st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h:80/p?q", b"h:443", b"/#f", b"//x"]),
    st.binary(min_size=1, max_size=12).map(lambda b: b"/" + b),
    st.text("/abc%?=&;:@!$'()*+,-._~\"<>\\^`{|}", min_size=1, max_size=12).map(str.encode),
)
versions = st.sampled_from(
    [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0"]
    + [b"http/1.1", b"HTTP/1.10", b"RTSP/1.0", b"ICE/1.0", b"HTTP/1", b""]
)  # fmt: skip
names = st.one_of(
    st.sampled_from(
        [
            *(b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect"),
            *(b"Upgrade", b"X-A", b"Cookie", b"Content-length", b"TRANSFER-ENCODING"),
        ]
    ),
    st.text(TOKEN_CHARS, min_size=1, max_size=6).map(str.encode),
)
values = st.one_of(
    st.sampled_from(
        [
            *(b"h", b"0", b"5", b"05", b"5, 5", b"5,6", b"chunked", b"CHUNKED", b" chunked "),
            *(b"gzip", b"gzip, chunked", b"chunked, chunked", b"close", b"keep-alive", b"upgrade"),
            *(b"Upgrade, keep-alive", b"100-continue", b"websocket", b"h:80", b"", b"a b"),
            b"0" * 21,
            *(b"18446744073709551616", b"+5", b"-1", b"0x5", b"a\tb", b"\xff", b"h@x"),
        ]
    ),
    st.binary(max_size=10),
)
separators = st.sampled_from([b": ", b":", b":\t", b" : "])
fields = st.lists(st.tuples(names, separators, values), max_size=6)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method, target, version = draw(methods), draw(targets), draw(versions)
    line = b" ".join(part for part in (method, target, version) if part) + b"\r\n"
    head = [name + sep + value + draw(st.sampled_from([b"", b" ", b"\t"])) for name, sep, value in
            draw(fields)]  # fmt: skip
    if draw(st.booleans()):
        head.insert(draw(st.integers(0, len(head))), b"Host: h")
    body = draw(st.binary(max_size=20))
    framing = draw(st.sampled_from(["none", "length", "chunked", "chunked-trailers"]))
    tail = b""
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        tail = body
    elif framing.startswith("chunked"):
        head.append(b"Transfer-Encoding: chunked")
        tail = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n"
        if framing == "chunked-trailers":
            tail += b"".join(n + s + v + b"\r\n" for n, s, v in draw(fields))
        tail += b"\r\n"
    return line + b"".join(field + b"\r\n" for field in head) + b"\r\n" + tail


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Each edit at a position: replace, insert or delete bytes, or duplicate a stretch."""
    for position, kind, blob in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            data = data[:at] + blob + data[at + len(blob) :]
        elif kind == 1:
            data = data[:at] + blob + data[at:]
        elif kind == 2:
            data = data[:at] + data[at + 1 + len(blob) :]
        else:
            data = data[:at] + data[at : at + 8] + data[at:]
    return data


ODD = b"\r\n \t\x00:,;\x7f\x80\xff\x0b\x0c0aA/H#"
edits = st.lists(
    st.tuples(st.integers(0, 1 << 16), st.integers(0, 3), st.binary(max_size=3).map(
        lambda b: bytes(ODD[x % len(ODD)] for x in b)
    )),
    min_size=1,
    max_size=4,
)  # fmt: skip
streams = st.lists(requests(), min_size=1, max_size=3).map(b"".join)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=streams)
def test_the_readers_agree_on_generated_requests(data: bytes) -> None:
    assert_same(data, ("default",) if len(data) > ALL_CUTS else ("default", "small"))


@SETTINGS
@given(data=streams, changes=edits)
def test_the_readers_agree_on_mutated_requests(
    data: bytes, changes: list[tuple[int, int, bytes]]
) -> None:
    assert_same(mutate(data, changes), ("default",))


# -- the comparison itself ------------------------------------------------------------------


def _dropping_last_field(head: bytes) -> Head | Refusal:
    parsed = parse_head_h11(head)
    if isinstance(parsed, Refusal) or not parsed.headers:
        return parsed
    return parsed._replace(headers=parsed.headers[:-1])


def _refusing_kind(head: bytes) -> Head | Refusal:
    parsed = parse_head_h11(head)
    return parsed._replace(kind="smuggling") if isinstance(parsed, Refusal) else parsed


@pytest.mark.parametrize(
    ("parser", "data"),
    [
        (_dropping_last_field, b"GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\n\r\n"),
        (_refusing_kind, b"GET / HTTP/1.1\r\nHost: h\r\nX : 1\r\n\r\n"),
    ],
)
def test_the_comparison_sees_a_difference(
    parser: Callable[[bytes], Head | Refusal], data: bytes
) -> None:
    limits = LIMITS["default"]
    assert events(parse_head_h11, [data], limits) != events(parser, [data], limits)


def test_the_log_shows_pauses_closes_and_hand_overs() -> None:
    get = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    upgrade = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nrest"
    limits = LIMITS["default"]
    late = events(parse_head_h11, [get + get], limits, answer_late=True)
    assert [item[0] for item in late] == ["request", "PAUSED", "request", "CLOSED"]
    assert events(parse_head_h11, [upgrade], limits)[-1] == ("switch", b"rest")
    close = events(parse_head_h11, [get.replace(b"h\r\n", b"h\r\nConnection: close\r\n") + get],
                   limits)  # fmt: skip
    assert [item[0] for item in close] == ["request", "PAUSED", "close"]
