"""The pure request checks (dualgate/http/checks.py), one rule at a time, without a connection."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dualgate.http.checks import (
    CHUNK_MOVES,
    ChunkedFraming,
    ChunkState,
    Framing,
    Refusal,
    check_request,
    final_coding_is_chunked,
    origin_form,
    oversized_head,
    wants_keep_alive,
)
from dualgate.http.grammar import Headers

HOST: Headers = [(b"host", b"example.com")]
MAX_FIELDS = 100


def head_of(method: bytes, target: bytes, headers: Headers, version: bytes) -> bytes:
    lines = [b"%s %s HTTP/%s" % (method, target, version)]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def check(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: Headers | None = None,
    version: bytes = b"1.1",
    head: bytes | None = None,
    max_body: int | None = None,
) -> Refusal | Framing:
    headers = HOST if headers is None else headers
    if head is None:
        head = head_of(method, target, headers, version)
    return check_request(method, target, headers, version, head, max_body)


# -- refusals -----------------------------------------------------------------------------

BASIC = head_of(b"GET", b"/", HOST, b"1.1")

REFUSALS: dict[str, tuple[dict[str, object], int, str]] = {
    "http-2": ({"version": b"2.0"}, 505, "unsupported"),
    "http-0.9": ({"version": b"0.9"}, 505, "unsupported"),
    "bare-lf": ({"head": BASIC.replace(b"\r\nhost", b"\nhost")}, 400, "smuggling"),
    "bare-cr": ({"head": BASIC.replace(b"\r\nhost", b"\rhost")}, 400, "smuggling"),
    "bare-cr-in-value": ({"head": BASIC.replace(b"example", b"exa\rmple")}, 400, "smuggling"),
    "obs-fold-space": (
        {"head": BASIC.replace(b"\r\n\r\n", b"\r\n folded\r\n\r\n")},
        400,
        "smuggling",
    ),
    "obs-fold-tab": (
        {"head": BASIC.replace(b"\r\n\r\n", b"\r\n\tfolded\r\n\r\n")},
        400,
        "smuggling",
    ),
    "length-and-chunked": (
        {"headers": [*HOST, (b"content-length", b"5"), (b"transfer-encoding", b"chunked")]},
        400,
        "smuggling",
    ),
    "chunked-in-1.0": (
        {"headers": [(b"transfer-encoding", b"chunked")], "version": b"1.0"},
        400,
        "smuggling",
    ),
    "body-too-large": (
        {"headers": [*HOST, (b"content-length", b"101")], "max_body": 100},
        413,
        "too_large",
    ),
    "connect": ({"method": b"CONNECT", "target": b"example.com:443"}, 501, "unsupported"),
    "fragment": ({"target": b"/a#b"}, 400, "malformed"),
    "asterisk-for-get": ({"target": b"*"}, 400, "malformed"),
    "relative-target": ({"target": b"a/b"}, 400, "malformed"),
    "other-scheme": ({"target": b"ftp://example.com/"}, 400, "malformed"),
    "scheme-without-slashes": ({"target": b"http:example.com/"}, 400, "malformed"),
    "empty-authority": ({"target": b"http:///path"}, 400, "malformed"),
    "port-without-host": ({"target": b"http://:8080/"}, 400, "malformed"),
    "userinfo": ({"target": b"http://user:pw@example.com/"}, 400, "malformed"),
    "host-with-space": ({"headers": [(b"host", b"a b")]}, 400, "malformed"),
    "host-with-path": ({"headers": [(b"host", b"a/b")]}, 400, "malformed"),
    "host-with-userinfo": ({"headers": [(b"host", b"u@a")]}, 400, "malformed"),
    "host-bad-port": ({"headers": [(b"host", b"a:8x")]}, 400, "malformed"),
    "host-bad-escape": ({"headers": [(b"host", b"a%4")]}, 400, "malformed"),
    # RFC 9110 section 5.5: no control character but HTAB in a field value (h11 lets most by).
    "control-in-value": ({"head": BASIC.replace(b"example", b"exa\x01mple")}, 400, "malformed"),
    "escape-in-value": ({"head": BASIC.replace(b"example", b"exa\x1bmple")}, 400, "malformed"),
    "unit-separator-in-value": (
        {"head": BASIC.replace(b"example", b"exa\x1fmple")},
        400,
        "malformed",
    ),
    "delete-in-value": ({"head": BASIC.replace(b"example", b"exa\x7fmple")}, 400, "malformed"),
    "control-ending-a-value": ({"head": BASIC.replace(b"example.com", b"x\x08")}, 400, "malformed"),
}


@pytest.mark.parametrize(("args", "status", "kind"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals(args: dict[str, object], status: int, kind: str) -> None:
    result = check(**args)  # type: ignore[arg-type]
    assert type(result) is Refusal
    assert (result.status, result.kind) == (status, kind)
    assert result.message


ACCEPTED: dict[str, dict[str, object]] = {
    "origin-form": {"target": b"/a/b?c=d"},
    "asterisk-for-options": {"method": b"OPTIONS", "target": b"*"},
    "absolute-http": {"target": b"http://example.com/p?q"},
    "absolute-https-upper": {"target": b"HTTPS://example.com:8443"},
    "absolute-ipv6": {"target": b"http://[::1]:8080/"},
    "host-ipv6": {"headers": [(b"host", b"[::1]:8080")]},
    "host-empty": {"headers": [(b"host", b"")]},
    "host-escaped": {"headers": [(b"host", b"%41bc.example")]},
    "host-empty-port": {"headers": [(b"host", b"example.com:")]},
    "http-1.0-without-host": {"headers": [], "version": b"1.0"},
    "body-at-the-limit": {"headers": [*HOST, (b"content-length", b"100")], "max_body": 100},
    "tab-in-value": {"head": BASIC.replace(b"example.com", b"example.com\t")},
    "obs-text-in-value": {"head": BASIC.replace(b"example.com", b"caf\xe9\x80\xff")},
}


@pytest.mark.parametrize("args", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(args: dict[str, object]) -> None:
    assert type(check(**args)) is Framing  # type: ignore[arg-type]


def test_refusals_are_checked_in_order_of_severity() -> None:
    # A body too large is answered before the target is looked at, and an unsupported version
    # before anything else.
    result = check(
        method=b"CONNECT", headers=[*HOST, (b"content-length", b"9")], max_body=1, version=b"3.0"
    )
    assert type(result) is Refusal and result.status == 505
    result = check(method=b"CONNECT", headers=[*HOST, (b"content-length", b"9")], max_body=1)
    assert type(result) is Refusal and result.status == 413


# -- framing --------------------------------------------------------------------------------

FRAMINGS: dict[str, tuple[dict[str, object], Framing]] = {
    "no-body": ({}, Framing(0, False, True, b"")),
    "content-length": (
        {"headers": [*HOST, (b"content-length", b"42")]},
        Framing(42, False, True, b""),
    ),
    "content-length-zero": (
        {"headers": [*HOST, (b"content-length", b"0")]},
        Framing(0, False, True, b""),
    ),
    "chunked": (
        {"headers": [*HOST, (b"transfer-encoding", b"chunked")]},
        Framing(0, True, True, b""),
    ),
    "upgrade": (
        {"headers": [*HOST, (b"connection", b"Upgrade"), (b"upgrade", b" WebSocket ")]},
        Framing(0, False, True, b"websocket"),
    ),
    "upgrade-among-options": (
        {"headers": [*HOST, (b"connection", b"keep-alive, upgrade"), (b"upgrade", b"h2c")]},
        Framing(0, False, True, b"h2c"),
    ),
    "upgrade-in-a-second-connection-header": (
        {
            "headers": [
                *HOST,
                (b"connection", b"keep-alive"),
                (b"upgrade", b"websocket"),
                (b"connection", b"upgrade"),
            ]
        },
        Framing(0, False, True, b"websocket"),
    ),
    # RFC 9110 section 7.8: Upgrade counts only when Connection lists it.
    "upgrade-without-connection": (
        {"headers": [*HOST, (b"upgrade", b"websocket")]},
        Framing(0, False, True, b""),
    ),
    "upgrade-with-connection-close": (
        {"headers": [*HOST, (b"connection", b"close"), (b"upgrade", b"websocket")]},
        Framing(0, False, False, b""),
    ),
}


@pytest.mark.parametrize(("args", "framing"), FRAMINGS.values(), ids=FRAMINGS.keys())
def test_framing(args: dict[str, object], framing: Framing) -> None:
    assert check(**args) == framing  # type: ignore[arg-type]


KEEP_ALIVE: list[tuple[bytes, list[bytes], bool]] = [
    (b"1.1", [], True),
    (b"1.1", [b"close"], False),
    (b"1.1", [b"Close"], False),
    (b"1.1", [b"keep-alive"], True),
    (b"1.1", [b"Keep-Alive, Close"], False),
    (b"1.1", [b"upgrade", b" close "], False),
    (b"1.1", [b"closed"], True),  # a token, not a substring
    (b"1.0", [], False),
    (b"1.0", [b"keep-alive"], True),
    (b"1.0", [b"Keep-Alive"], True),
    (b"1.0", [b"foo,keep-alive"], True),
    (b"1.0", [b"foo", b"keep-alive"], True),
    (b"1.0", [b"keep-alive", b"close"], False),
    (b"1.0", [b"keep-alive-ish"], False),
]


@pytest.mark.parametrize(("version", "connection", "expected"), KEEP_ALIVE)
def test_keep_alive(version: bytes, connection: list[bytes], expected: bool) -> None:
    assert wants_keep_alive(version, connection) is expected
    headers = [*HOST, *((b"connection", value) for value in connection)]
    if version == b"1.0":
        headers = headers[1:]
    framing = check(headers=headers, version=version)
    assert type(framing) is Framing and framing.keep_alive is expected


# -- oversized heads ------------------------------------------------------------------------

LIMIT = 100


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"x" * LIMIT, None),  # at the limit
        (b"GET / HTTP/1.1\r\n" + b"h" * (LIMIT - 16), None),
        (b"x" * (LIMIT + 1), 414),  # no line end: the request line alone is over
        (b"GET /" + b"a" * 60 + b"\r\n" + b"h" * 40, 414),  # the line takes over half
        (b"G" * (LIMIT // 2) + b"\n" + b"h" * LIMIT, 431),  # line end at exactly half
        (b"G" * (LIMIT // 2 + 1) + b"\n" + b"h" * LIMIT, 414),
        (b"GET / HTTP/1.1\r\n" + b"h" * LIMIT, 431),
    ],
)
def test_oversized_head(head: bytes, status: int | None) -> None:
    result = oversized_head(head, LIMIT)
    assert (result.status if result else None) == status
    if result is not None:
        assert result.kind == "too_large"
    assert oversized_head(bytearray(head), LIMIT) == result


# -- chunked framing ----------------------------------------------------------------------

VALID_BODIES = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;a=b;c\r\nhello\r\n0\r\n\r\n",
    b'5 ; a = "q\\"uoted" ; b\r\nhello\r\n0\r\n\r\n',  # BWS around ; and = (RFC 9112 7.1.1)
    b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
    b"000000000000000F\r\n" + b"f" * 15 + b"\r\n0\r\n\r\n",  # 16 digits
    b"3\r\n\r\n\n\r\n0\r\n\r\n",  # CR and LF inside data are data
    b"0\r\nX-Trailer: 1\r\nY: two words\r\n\r\n",
    b"0\r\n\r\nGET / HTTP/1.1\r\n\n\r\x00",  # what follows the body is not its concern
]

INVALID_BODIES = [
    (b"5\nhello\r\n0\r\n\r\n", "Bare CR or LF in chunked framing"),
    (b"5\r\r\nhello\r\n0\r\n\r\n", "Bare CR or LF in chunked framing"),
    (b"5;a\nb\r\nhello\r\n0\r\n\r\n", "Bare CR or LF in chunked framing"),
    (b"5\r\nhello\n0\r\n\r\n", "Bare CR or LF in chunked framing"),
    (b"5\r\nhello\r\n0\r\nX: 1\n\r\n", "Bare CR or LF in chunked framing"),
    (b"5\r\nhello\r\n0\r\n\n", "Bare CR or LF in chunked framing"),
    (b"\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"5 \r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"0x5\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"-5\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"+5\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"G\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"00000000000000005\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),  # 17 digits
    (b"5;\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"5;a=\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"5;a b\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b'5;a="unterminated\r\nhello\r\n0\r\n\r\n', "Invalid chunk size line"),
    (b"5;a=b c\r\nhello\r\n0\r\n\r\n", "Invalid chunk size line"),
    (b"5\r\nhelloX\r\n0\r\n\r\n", "Chunk data not followed by CRLF"),
    (b"5\r\nhello\r\n" + b"f" * 5000, "Chunked framing line too long"),
]


def split_feeds(data: bytes) -> list[list[bytes]]:
    """Whole, every cut in two, every cut in three around the middle, and byte by byte."""
    ways = [[data]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    middle = len(data) // 2
    ways += [[data[:i], data[i:middle], data[middle:]] for i in range(1, middle)]
    ways.append([data[i : i + 1] for i in range(len(data))])
    return ways


def first_refusal(
    pieces: Sequence[bytes | bytearray], max_fields: int = MAX_FIELDS
) -> Refusal | None:
    framing = ChunkedFraming(max_fields)
    for piece in pieces:
        refusal = framing.feed(piece)
        if refusal is not None:
            return refusal
    return None


@pytest.mark.parametrize("body", VALID_BODIES)
def test_chunked_framing_accepts_valid_bodies_in_every_split(body: bytes) -> None:
    for pieces in split_feeds(body):
        assert first_refusal(pieces) is None, pieces
        assert first_refusal([bytearray(piece) for piece in pieces]) is None


@pytest.mark.parametrize(("body", "message"), INVALID_BODIES)
def test_chunked_framing_refuses_in_every_split(body: bytes, message: str) -> None:
    expected = Refusal(400, message, "smuggling")
    ways = split_feeds(body) if len(body) < 200 else [[body], [body[:20], body[20:]]]
    for pieces in ways:
        assert first_refusal(pieces) == expected, pieces


def test_chunked_framing_skips_data_by_count() -> None:
    # A megabyte of data in one chunk costs no line scanning: it is skipped by its size.
    size = 1 << 20
    framing = ChunkedFraming(MAX_FIELDS)
    assert framing.feed(b"%x\r\n" % size) is None
    payload = b"\n" * 4096  # line ends inside data are data
    for _ in range(size // len(payload)):
        assert framing.feed(payload) is None
    assert framing.feed(b"\r\n0\r\n\r\n") is None


def test_chunked_framing_ignores_bytes_after_the_body() -> None:
    framing = ChunkedFraming(MAX_FIELDS)
    assert framing.feed(b"0\r\n\r\n") is None
    assert framing.feed(b"\n\n\nnot a chunk line at all" * 400) is None


# -- Transfer-Encoding codings and absolute-form targets ---------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"Transfer-Encoding: chunked"], True),
        ([b"transfer-encoding: CHUNKED"], True),
        ([b"Transfer-Encoding: gzip, chunked"], True),
        ([b"Transfer-Encoding: gzip , chunked "], True),
        ([b"Transfer-Encoding: , chunked,"], True),  # empty list elements do not count
        ([b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"], True),
        ([b"Transfer-Encoding: chunked, gzip"], False),
        ([b"Transfer-Encoding: gzip"], False),
        ([b"Transfer-Encoding: chunked, chunked"], False),
        ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], False),
        ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"], False),
        ([b"Transfer-Encoding:"], False),
        ([b"X-Transfer-Encoding: chunked"], False),
        ([], False),
    ],
)
def test_final_coding_is_chunked(lines: list[bytes], expected: bool) -> None:
    head = b"\r\n".join([b"POST / HTTP/1.1", b"Host: h", *lines]) + b"\r\n\r\n"
    assert final_coding_is_chunked(head) is expected
    assert final_coding_is_chunked(bytearray(head)) is expected
    # The body is not the head: a header-like line in it is not a header.
    assert final_coding_is_chunked(head + b"Transfer-Encoding: gzip\r\n\r\n") is expected
    # The request line is not a header either.
    assert not final_coding_is_chunked(b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize(
    ("target", "path", "host"),
    [
        (b"http://example.com/p?q=1", b"/p?q=1", b"example.com"),
        (b"http://example.com:8080/a/b", b"/a/b", b"example.com:8080"),
        (b"https://Example.COM", b"/", b"Example.COM"),
        (b"http://example.com?x=1", b"/?x=1", b"example.com"),
        (b"http://example.com/?x=/y", b"/?x=/y", b"example.com"),
        (b"http://[::1]:80/v6", b"/v6", b"[::1]:80"),
        (b"http://h/%2F?", b"/%2F?", b"h"),
    ],
)
def test_origin_form(target: bytes, path: bytes, host: bytes) -> None:
    headers = [(b"host", b"ignored"), (b"accept", b"*/*"), (b"host", b"twice")]
    new_target, new_headers = origin_form(target, headers)
    assert new_target == path
    # RFC 9112 section 3.2.2: the target's authority is the Host; any Host header is ignored.
    assert new_headers == [(b"accept", b"*/*"), (b"host", host)]
    assert headers[0] == (b"host", b"ignored")  # the caller's list is left as it was


@pytest.mark.parametrize(
    "line",
    [
        b"5;name=" + b"v" * 5000 + b"\r\n",  # a chunk line
        b"X-Trailer: " + b"v" * 5000 + b"\r\n",  # a trailer line
    ],
    ids=["extension", "trailer"],
)
def test_the_framing_line_limit_does_not_depend_on_how_the_line_arrives(line: bytes) -> None:
    # A line over the limit is refused whether it comes whole or in pieces; were it refused
    # only in pieces, the same request would pass or fail with the TCP segments it came in.
    body = line + b"hello\r\n0\r\n\r\n" if line[:1] == b"5" else b"0\r\n" + line + b"\r\n"
    expected = Refusal(400, "Chunked framing line too long", "smuggling")
    start = 0 if line[:1] == b"5" else 3
    for cut in (start + 10, start + 4200, start + len(line) - 1, start + len(line)):
        for pieces in ([body], [body[:cut], body[cut:]]):
            assert first_refusal(pieces) == expected, (cut, len(pieces))


def test_a_framing_line_at_the_limit_is_accepted_however_it_arrives() -> None:
    line = b"5;n=" + b"v" * (4096 - 5) + b"\r\n"  # 4096 bytes before its LF
    body = line + b"hello\r\n0\r\n\r\n"
    ways = [[body], [body[i : i + 1] for i in range(len(body))]]
    ways += [[body[:cut], body[cut:]] for cut in (1, 100, 4095, 4096, 4097, 4098)]
    for pieces in ways:
        assert first_refusal(pieces) is None
    # One byte more is over.
    longer = line[:4] + b"v" + line[4:] + b"hello\r\n0\r\n\r\n"
    too_long = Refusal(400, "Chunked framing line too long", "smuggling")
    assert first_refusal([longer]) == too_long
    assert first_refusal([longer[:4096], longer[4096:]]) == too_long
    assert first_refusal([longer[:4097], longer[4097:]]) == too_long


@pytest.mark.parametrize("connection", [b"x-upgrade", b"upgrades", b"no-upgrade, keep-alive"])
def test_upgrade_counts_only_when_connection_lists_the_upgrade_option(connection: bytes) -> None:
    # RFC 9110 sections 7.6.1 and 7.8: Connection is a list of option tokens; an option whose
    # name merely contains "upgrade" is another option.
    headers = [*HOST, (b"connection", connection), (b"upgrade", b"websocket")]
    framing = check(headers=headers)
    assert type(framing) is Framing and framing.upgrade == b""
    headers = [*HOST, (b"connection", connection + b", Upgrade"), (b"upgrade", b"websocket")]
    framing = check(headers=headers)
    assert type(framing) is Framing and framing.upgrade == b"websocket"


def test_chunked_framing_counts_trailer_fields() -> None:
    def trailers(count: int) -> bytes:
        return b"0\r\n" + b"".join(b"T%d: v\r\n" % i for i in range(count)) + b"\r\n"

    for pieces in split_feeds(trailers(3)):
        assert first_refusal(pieces, 3) is None
    expected = Refusal(431, "Too many trailer fields", "too_large")
    for pieces in split_feeds(trailers(4)):
        assert first_refusal(pieces, 3) == expected
    # Data lines are not trailer fields, however many chunks there are.
    many_chunks = b"1\r\nx\r\n" * 50 + trailers(3)
    assert first_refusal([many_chunks], 3) is None


@pytest.mark.parametrize(
    "body",
    [
        b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        b"3\r\nabc\r\n0\r\nName: value\r\nOther: v\r\n\r\n",
        b"0\r\n\r\n",
    ],
)
def test_every_move_the_chunked_framing_makes_is_in_its_table(body: bytes) -> None:
    framing = ChunkedFraming(10)
    seen: set[tuple[ChunkState, ChunkState]] = set()
    for i in range(len(body)):  # byte by byte: no two moves hide in one feed
        before = framing.state
        assert framing.feed(body[i : i + 1]) is None
        if framing.state is not before:
            seen.add((before, framing.state))
    assert framing.state is ChunkState.DONE
    for before, after in seen:
        assert after in CHUNK_MOVES[before], (before, after)


def test_the_chunked_table_names_every_state_and_done_is_the_end() -> None:
    assert set(CHUNK_MOVES) == set(ChunkState)
    assert CHUNK_MOVES[ChunkState.DONE] == frozenset()


def test_hosts_seen_are_remembered_within_a_bound_and_bad_ones_never() -> None:
    from dualgate.http import checks

    checks._good_hosts.clear()
    for _ in range(2):
        # Refused each time: a bad Host is never taken for a remembered good one.
        assert check(headers=[(b"host", b"a b")]) == Refusal(
            400, "Invalid Host header", "malformed"
        )
    assert checks._good_hosts == set()
    for i in range(checks._GOOD_HOSTS_MAX + 100):
        assert type(check(headers=[(b"host", b"h%d.example" % i)])) is Framing
    assert len(checks._good_hosts) == checks._GOOD_HOSTS_MAX
    # Past the bound, a new good host is still matched and served, just not remembered.
    assert type(check(headers=[(b"host", b"late.example")])) is Framing
    assert b"late.example" not in checks._good_hosts
    checks._good_hosts.clear()


def test_a_request_without_a_body_gets_one_shared_framing() -> None:
    assert check() is check(headers=[(b"host", b"other.example")])
    closing = check(headers=[*HOST, (b"connection", b"close")])
    assert closing == Framing(0, False, False, b"")
    assert closing is check(version=b"1.0", headers=[])
