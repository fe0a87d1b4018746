"""Malformed requests on the wire (RFC 9113 sections 8.1.1, 8.2, 8.3): RST_STREAM PROTOCOL_ERROR
for that stream, and the streams beside it go on as if nothing happened.

Each case runs with a bystander: a stream opened before the bad one, held by its handler while
the bad one is refused, then answered; and a fresh request after. Both must succeed.
"""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame

from dualgate.h2.phases import Phase
from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream
from dualgate.http.grammar import Headers
from tests.h2.support import GET, Link, request


class Bystanders:
    """A handler that holds "/hold" requests open and answers any other at once."""

    def __init__(self) -> None:
        self.held: list[Stream] = []
        self.seen: list[Stream] = []

    def __call__(self, stream: Stream) -> None:
        self.seen.append(stream)
        if stream.head.target == b"/hold":
            self.held.append(stream)
            return
        stream.send_head(200, [])
        stream.send_body(b"ok:" + stream.head.target)
        stream.end()


def link_with_bystander(settings: H2Settings | None = None) -> tuple[Link, Bystanders, int]:
    handler = Bystanders()
    link = Link(settings, handler=handler)
    bystander = link.request(request(b"GET", b"/hold"))
    assert len(handler.held) == 1
    return link, handler, bystander


def assert_others_unaffected(link: Link, handler: Bystanders, bystander: int) -> None:
    held = handler.held[0]
    held.send_head(200, [])
    held.send_body(b"held")
    held.end()
    link.exchange()
    assert link.body(bystander) == b"held" and link.ended(bystander)
    after = link.request(request(b"GET", b"/after"))
    assert link.body(after) == b"ok:/after"
    assert link.goaway() is None and link.core.phase is not Phase.CLOSED


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (GET[:3], "no :path"),
        ([(b":method", b"GET"), *GET], "duplicate :method"),
        ([*GET, (b":path", b"/again")], "duplicate :path"),
        ([GET[0], (b"accept", b"*/*"), *GET[1:]], "pseudo-header after a regular one"),
        ([*GET[:2], (b":protocol", b"websocket"), *GET[2:]], "unknown pseudo-header"),
        ([*GET, (b"connection", b"keep-alive")], "connection-specific field"),
        ([*GET, (b"transfer-encoding", b"chunked")], "transfer-encoding"),
        ([*GET, (b"te", b"gzip")], "te other than trailers"),
        ([*GET, (b"Accept", b"*/*")], "uppercase field name"),
        ([*GET, (b"x", b" leading space")], "white space around a value"),
        ([*GET, (b"host", b"elsewhere.example")], "host and :authority differ"),
        (request(b"POST", b"/", (b"content-length", b"ten")), "content-length not digits"),
        (
            request(b"POST", b"/", (b"content-length", b"1"), (b"content-length", b"2")),
            "two content-lengths",
        ),
    ],
)
def test_a_malformed_head_resets_its_stream_alone(headers: Headers, why: str) -> None:
    link, handler, bystander = link_with_bystander()
    bad = link.request(headers)
    assert link.reset_code(bad) == ErrorCodes.PROTOCOL_ERROR, why
    assert link.status(bad) is None
    assert [s.stream_id for s in handler.seen] == [bystander]  # no handler saw it
    assert_others_unaffected(link, handler, bystander)


def test_more_data_than_the_content_length_resets_its_stream_alone() -> None:
    link, handler, bystander = link_with_bystander()
    bad = link.client.get_next_available_stream_id()
    link.client.send_headers(bad, request(b"POST", b"/hold", (b"content-length", b"3")))
    link.exchange()  # its handler starts
    link.client.send_data(bad, b"1234", end_stream=True)
    link.exchange()
    assert link.reset_code(bad) == ErrorCodes.PROTOCOL_ERROR
    assert handler.held[1].reset_code == ErrorCodes.PROTOCOL_ERROR  # its handler is told
    handler.held[1].end()
    assert_others_unaffected(link, handler, bystander)


def test_data_short_of_the_content_length_resets_its_stream_alone() -> None:
    link, handler, bystander = link_with_bystander()
    bad = link.client.get_next_available_stream_id()
    link.client.send_headers(bad, request(b"POST", b"/hold", (b"content-length", b"5")))
    link.client.send_data(bad, b"12", end_stream=True)
    link.exchange()
    assert link.reset_code(bad) == ErrorCodes.PROTOCOL_ERROR
    assert len(handler.held) == 1  # all of it came in one read: no handler ever started
    assert_others_unaffected(link, handler, bystander)


def test_a_content_length_met_exactly_is_served() -> None:
    link, handler, bystander = link_with_bystander()
    good = link.client.get_next_available_stream_id()
    link.client.send_headers(good, request(b"POST", b"/x", (b"content-length", b"4")))
    link.client.send_data(good, b"12", end_stream=False)
    link.client.send_data(good, b"34", end_stream=True)
    link.exchange()
    assert link.reset_code(good) is None and link.body(good) == b"ok:/x"
    assert_others_unaffected(link, handler, bystander)


def test_malformed_trailers_reset_their_stream_alone() -> None:
    link, handler, bystander = link_with_bystander()
    bad = link.client.get_next_available_stream_id()
    link.client.send_headers(bad, request(b"POST", b"/hold"))
    link.client.send_data(bad, b"body")
    link.exchange()
    link.client.send_headers(bad, [(b":path", b"/sneaky")], end_stream=True)
    link.exchange()
    assert link.reset_code(bad) == ErrorCodes.PROTOCOL_ERROR
    handler.held[1].end()
    assert_others_unaffected(link, handler, bystander)


def test_a_header_list_over_the_advertised_size_gets_431() -> None:
    link, handler, bystander = link_with_bystander(H2Settings(max_header_list_size=2000))
    big = link.request(request(b"GET", b"/", (b"x-big", b"v" * 2000)))
    assert link.status(big) == 431 and link.ended(big)
    assert [s.stream_id for s in handler.seen] == [bystander]
    assert_others_unaffected(link, handler, bystander)


def test_too_many_fields_get_431() -> None:
    link, handler, bystander = link_with_bystander(H2Settings(max_header_fields=10))
    many = link.request(request(b"GET", b"/", *[(b"x-%d" % i, b"1") for i in range(11)]))
    assert link.status(many) == 431
    assert_others_unaffected(link, handler, bystander)


def test_a_declared_body_over_the_limit_gets_413_and_the_upload_stops() -> None:
    link, handler, bystander = link_with_bystander(H2Settings(max_body_size=10))
    big = link.client.get_next_available_stream_id()
    link.client.send_headers(big, request(b"POST", b"/", (b"content-length", b"11")))
    link.exchange()
    assert link.status(big) == 413 and link.ended(big)
    assert link.reset_code(big) == ErrorCodes.NO_ERROR  # RFC 9113 section 8.1
    assert_others_unaffected(link, handler, bystander)


def test_a_body_that_grows_past_the_limit_before_its_handler_runs_gets_413() -> None:
    handler = Bystanders()
    link = Link(H2Settings(max_body_size=10, max_concurrent_streams=1), handler=handler)
    first = link.request(request(b"GET", b"/hold"))
    link.client.reset_stream(first, ErrorCodes.CANCEL)  # its handler keeps the only slot
    big = link.client.get_next_available_stream_id()
    link.client.send_headers(big, request(b"POST", b"/"))
    link.client.send_data(big, b"x" * 11)
    link.exchange()
    assert link.status(big) == 413
    handler.held[0].end()
    link.exchange()
    assert [s.stream_id for s in handler.seen] == [first]  # the 413'd stream never started


def test_a_body_that_grows_past_the_limit_under_its_handler_resets_the_stream() -> None:
    link, handler, bystander = link_with_bystander(H2Settings(max_body_size=10))
    big = link.client.get_next_available_stream_id()
    link.client.send_headers(big, request(b"POST", b"/hold"))
    link.exchange()
    link.client.send_data(big, b"x" * 11)
    link.exchange()
    assert link.reset_code(big) == ErrorCodes.PROTOCOL_ERROR
    assert handler.held[1].reset_code == ErrorCodes.PROTOCOL_ERROR
    handler.held[1].end()
    assert_others_unaffected(link, handler, bystander)


def test_connect_gets_501() -> None:
    link, handler, bystander = link_with_bystander()
    connect = link.request([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    assert link.status(connect) == 501
    assert_others_unaffected(link, handler, bystander)


def test_h2_is_bent_where_this_server_relies_on_it() -> None:
    """dualgate/h2/machine.py's bends, pinned: without them each of these would be a
    connection error (h2 raises ProtocolError from inside receive_data)."""
    link, handler, bystander = link_with_bystander()
    # h2's own Content-Length tracking is off: DATA past it is our stream error, not its.
    bad = link.client.get_next_available_stream_id()
    link.client.send_headers(bad, request(b"POST", b"/", (b"content-length", b"1")))
    link.send_frames([DataFrame(bad, data=b"too much", flags=["END_STREAM"])])
    assert link.reset_code(bad) == ErrorCodes.PROTOCOL_ERROR
    # And h2's checks of received fields are off: this is ours too.
    upper = link.request([*GET, (b"X-Upper", b"1")])
    assert link.reset_code(upper) == ErrorCodes.PROTOCOL_ERROR
    assert_others_unaffected(link, handler, bystander)
