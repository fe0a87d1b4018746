"""The request and response field rules of dualgate/h2/checks.py, one at a time, without h2."""

from __future__ import annotations

import pytest

from dualgate.h2.checks import (
    Answer,
    Malformed,
    RequestHead,
    check_request,
    check_trailers,
    response_fields,
)
from dualgate.http.grammar import Headers
from tests.h2.support import request


def check(fields: Headers, max_body: int | None = None) -> RequestHead | Malformed | Answer:
    return check_request(fields, 65536, 100, max_body)


def test_a_plain_request_becomes_a_head_with_host_first() -> None:
    head = check(request(b"GET", b"/a?b=c", (b"accept", b"*/*"), (b"user-agent", b"t")))
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.scheme, head.authority) == (
        b"GET",
        b"/a?b=c",
        b"http",
        b"example.com",
    )
    assert head.http_version == b"2"
    # ASGI: pseudo-headers removed, :authority as host at the start.
    assert head.headers == [(b"host", b"example.com"), (b"accept", b"*/*"), (b"user-agent", b"t")]
    assert head.content_length is None and not head.expects_continue


def test_host_alone_stands_for_the_authority_and_a_matching_pair_is_one_host() -> None:
    fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"a:1")]
    head = check(fields)
    assert isinstance(head, RequestHead) and head.authority == b"a:1"
    assert head.headers == [(b"host", b"a:1")]
    both = check(request(b"GET", b"/", (b"x", b"1"), (b"host", b"EXAMPLE.com")))
    assert isinstance(both, RequestHead)
    assert both.headers == [(b"host", b"example.com"), (b"x", b"1")]


def test_cookie_crumbs_are_joined_where_the_first_one_was() -> None:
    head = check(
        request(b"GET", b"/", (b"a", b"1"), (b"cookie", b"x=1"), (b"b", b"2"), (b"cookie", b"y=2"))
    )
    assert isinstance(head, RequestHead)
    assert head.headers == [
        (b"host", b"example.com"),
        (b"a", b"1"),
        (b"cookie", b"x=1; y=2"),
        (b"b", b"2"),
    ]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([(b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")], "no :method"),
        (request()[:1] + request()[2:], "no :scheme"),
        (request()[:3], "no :path"),
        (request(b"GET", b""), "empty :path"),
        (request(b"GET", b"a/b"), "relative :path"),
        (request(b"GET", b"http://a/b"), "absolute :path"),
        (request(b"GET", b"*"), "* for GET"),
        (request(b"GET", b"/a b"), "space in :path"),
        (request(b"GET", b"/a#frag"), "fragment"),
        ([*request(), (b":path", b"/again")], "pseudo after regular"),
        ([(b":path", b"/b"), *request()], "duplicate :path"),
        ([(b":method", b"GET"), *request()[1:], (b":method", b"GET")], "duplicate :method"),
        ([*request()[:2], (b":protocol", b"websocket"), *request()[2:]], ":protocol"),
        ([*request()[:2], (b":status", b"200"), *request()[2:]], "response pseudo-header"),
        ([*request(), (b"x", b"1"), (b":authority", b"b")], "pseudo-header after a field"),
        (request(b"GET", b"/", (b"Content-Type", b"a")), "uppercase name"),
        (request(b"GET", b"/", (b"a b", b"1")), "space in a name"),
        (request(b"GET", b"/", (b"a:b", b"1")), "colon in a name"),
        (request(b"GET", b"/", (b"", b"1")), "empty name"),
        (request(b"GET", b"/", (b"x", b" padded")), "leading white space"),
        (request(b"GET", b"/", (b"x", b"padded\t")), "trailing white space"),
        (request(b"GET", b"/", (b"x", b"a\x00b")), "NUL"),
        (request(b"GET", b"/", (b"x", b"a\r\nb: c")), "CR LF"),
        (request(b"GET", b"/", (b"x", b"a\x01b")), "a control character"),
        (request(b"GET", b"/", (b"connection", b"keep-alive")), "connection"),
        (request(b"GET", b"/", (b"keep-alive", b"5")), "keep-alive"),
        (request(b"GET", b"/", (b"proxy-connection", b"x")), "proxy-connection"),
        (request(b"GET", b"/", (b"transfer-encoding", b"chunked")), "transfer-encoding"),
        (request(b"GET", b"/", (b"upgrade", b"h2c")), "upgrade"),
        (request(b"GET", b"/", (b"te", b"gzip")), "te other than trailers"),
        (request(b"GET", b"/", (b"host", b"other.example")), "host and :authority differ"),
        (request(b"GET", b"/", (b"host", b"a"), (b"host", b"a")), "two hosts"),
        ([*request()[:2], *request()[3:]], "neither :authority nor host"),
        (
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"u@a"),
                (b":path", b"/"),
            ],
            "userinfo",
        ),
        (
            [(b":method", b"GET"), (b":scheme", b"9p"), (b":authority", b"a"), (b":path", b"/")],
            "scheme",
        ),
        ([(b":method", b"G T"), *request()[1:]], "method not a token"),
        (request(b"POST", b"/", (b"content-length", b"-1")), "negative length"),
        (request(b"POST", b"/", (b"content-length", b"1, 1")), "list length"),
        (
            request(b"POST", b"/", (b"content-length", b"1"), (b"content-length", b"2")),
            "two lengths",
        ),
        ([(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")], "CONNECT :path"),
        ([(b":method", b"CONNECT"), (b":scheme", b"http")], "CONNECT without :authority"),
    ],
)
def test_malformed_requests(fields: Headers, why: str) -> None:
    assert isinstance(check(fields), Malformed), why


def test_what_is_allowed_near_the_rules() -> None:
    assert isinstance(check(request(b"OPTIONS", b"*")), RequestHead)
    assert isinstance(check(request(b"GET", b"/", (b"te", b"Trailers"))), RequestHead)
    assert isinstance(check(request(b"GET", b"/", (b"x", b""))), RequestHead)
    assert isinstance(check(request(b"GET", b"/", (b"x", b"a\tb"))), RequestHead)
    same = check(request(b"POST", b"/", (b"content-length", b"3"), (b"content-length", b"3")))
    assert isinstance(same, RequestHead) and same.content_length == 3
    ipv6 = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"[::1]:8443"),
        (b":path", b"/"),
    ]
    assert isinstance(check(ipv6), RequestHead)
    expect = check(request(b"PUT", b"/", (b"expect", b"100-Continue")))
    assert isinstance(expect, RequestHead) and expect.expects_continue


def test_connect_is_answered_501_as_on_http11() -> None:
    assert check([(b":method", b"CONNECT"), (b":authority", b"a:443")]) == Answer(
        501, "CONNECT is not served", "unsupported"
    )


def test_the_header_list_limits_answer_431() -> None:
    fields = request(b"GET", b"/", (b"x", b"v" * 1000))
    size = sum(len(n) + len(v) + 32 for n, v in fields)
    assert isinstance(check_request(fields, size, 100, None), RequestHead)
    assert check_request(fields, size - 1, 100, None) == Answer(
        431, "Request header fields too large", "too_large"
    )
    many = request(b"GET", b"/", *[(b"x-%d" % i, b"1") for i in range(5)])
    assert isinstance(check_request(many, 65536, 5, None), RequestHead)
    assert isinstance(check_request([*many, (b"cookie", b"a")], 65536, 5, None), Answer)


def test_a_declared_body_over_the_limit_answers_413() -> None:
    fields = request(b"POST", b"/", (b"content-length", b"11"))
    assert check(fields, max_body=11) != check(fields, max_body=10)
    assert check(fields, max_body=10) == Answer(413, "Request body too large", "too_large")


def test_trailers() -> None:
    assert check_trailers([(b"x-sum", b"1")], 65536, 100) is None
    assert isinstance(check_trailers([(b":path", b"/")], 65536, 100), Malformed)
    assert isinstance(check_trailers([(b"X-Sum", b"1")], 65536, 100), Malformed)
    assert isinstance(check_trailers([(b"connection", b"close")], 65536, 100), Malformed)
    assert isinstance(check_trailers([(b"a", b"1")] * 3, 65536, 2), Malformed)
    assert isinstance(check_trailers([(b"a", b"x" * 100)], 100, 100), Malformed)


def test_response_fields() -> None:
    fields, length = response_fields(
        200,
        [
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b" 5 "),
            (b"Connection", b"close"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Date", b"then"),
        ],
        [(b"date", b"now"), (b"server", b"dualgate")],
    )
    assert length == 5
    assert fields == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"date", b"then"),
        (b"server", b"dualgate"),
    ]
    assert response_fields(204, [], [])[1] is None
    for bad_status in (100, 199, 1000):
        with pytest.raises(ValueError, match="status"):
            response_fields(bad_status, [], [])
    with pytest.raises(ValueError, match="name"):
        response_fields(200, [(b":path", b"/")], [])
    with pytest.raises(ValueError, match="value"):
        response_fields(200, [(b"x", b"a\r\nb")], [])
    with pytest.raises(ValueError, match="Content-Length"):
        response_fields(200, [(b"content-length", b"1"), (b"content-length", b"2")], [])
    with pytest.raises(ValueError, match="Content-Length"):
        response_fields(200, [(b"content-length", b"x")], [])
