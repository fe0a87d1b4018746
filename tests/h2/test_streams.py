"""Streams as a handler sees them, over the sans-IO core driven by h2's client in memory."""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import InformationalResponseReceived, TrailersReceived

from dualgate.h2.phases import Phase, StreamPhase
from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream
from tests.h2.support import GET, Link, answer, echo, request


def test_a_request_and_its_response() -> None:
    link = Link(handler=answer(200, b"hello"), default_headers=[(b"server", b"dualgate")])
    stream_id = link.request(request(b"GET", b"/path?q=1", (b"accept", b"text/plain")))
    assert link.status(stream_id) == 200
    assert link.body(stream_id) == b"hello"
    assert link.ended(stream_id)
    response = link.response(stream_id)
    assert response is not None
    assert (b"server", b"dualgate") in response.headers
    (stream,) = link.started
    assert stream.head.method == b"GET" and stream.head.target == b"/path?q=1"
    assert stream.head.headers == [(b"host", b"example.com"), (b"accept", b"text/plain")]
    assert stream.phase is StreamPhase.DONE
    # Nothing is left of a finished stream, and the connection is idle again.
    assert link.core.table.streams == {}
    assert link.core.phase is Phase.IDLE
    assert link.core.requests == 1


def test_many_requests_on_one_connection_each_get_their_own_answer() -> None:
    def handle(stream: Stream) -> None:
        stream.send_head(200, [])
        stream.send_body(stream.head.target)
        stream.end()

    link = Link(handler=handle)
    ids = [link.client.get_next_available_stream_id() for _ in range(1)]
    for n in range(20):
        stream_id = link.client.get_next_available_stream_id()
        link.client.send_headers(stream_id, request(b"GET", b"/%d" % n), end_stream=True)
        ids.append(stream_id)
    link.exchange()
    for n, stream_id in enumerate(ids[1:]):
        assert link.body(stream_id) == b"/%d" % n


def test_a_body_echoed_as_it_arrives() -> None:
    link = Link(handler=echo)
    body = bytes(range(256)) * 2000  # 512 000 bytes: many windows' worth each way
    stream_id = link.request(request(b"POST", b"/echo"), body)
    assert link.body(stream_id) == body
    assert link.ended(stream_id)


def test_a_large_response_written_at_once_arrives_whole() -> None:
    body = b"0123456789abcdef" * 100_000  # 1.6 MB in one send_body
    link = Link(handler=answer(200, body))
    stream_id = link.request()
    assert link.body(stream_id) == body


def test_a_declared_content_length_is_held_to() -> None:
    def short(stream: Stream) -> None:
        stream.send_head(200, [(b"content-length", b"10")])
        stream.send_body(b"12345")
        stream.end()

    link = Link(handler=short)
    stream_id = link.request()
    # Five bytes short: the client must see a broken response, not a short one.
    assert link.reset_code(stream_id) == ErrorCodes.INTERNAL_ERROR
    assert not link.ended(stream_id)

    errors: list[str] = []

    def long(stream: Stream) -> None:
        stream.send_head(200, [(b"content-length", b"3")])
        try:
            stream.send_body(b"1234")
        except ValueError as exc:
            errors.append(str(exc))
            stream.reset()

    link = Link(handler=long)
    stream_id = link.request()
    assert errors == ["response body exceeds its Content-Length by 1 bytes"]
    assert link.reset_code(stream_id) == ErrorCodes.CANCEL


def test_head_and_204_responses_carry_no_body() -> None:
    link = Link(handler=answer(200, b"not sent"))
    stream_id = link.request(request(b"HEAD", b"/"))
    assert link.status(stream_id) == 200 and link.body(stream_id) == b""
    assert link.ended(stream_id)
    link = Link(handler=answer(204, b"not sent"))
    stream_id = link.request()
    assert link.status(stream_id) == 204 and link.body(stream_id) == b""


def test_an_invalid_response_head_raises_and_sends_nothing() -> None:
    outcome: list[str] = []

    def handle(stream: Stream) -> None:
        try:
            stream.send_head(200, [(b"x", b"a\nb")])
        except ValueError:
            outcome.append("refused")
            stream.send_head(500, [])
            stream.end()

    link = Link(handler=handle)
    stream_id = link.request()
    assert outcome == ["refused"]
    assert link.status(stream_id) == 500


def test_response_trailers() -> None:
    def handle(stream: Stream) -> None:
        stream.send_head(200, [(b"trailer", b"x-sum")])
        stream.send_body(b"data")
        stream.end([(b"X-Sum", b"42")])

    link = Link(handler=handle)
    stream_id = link.request()
    trailers = [e for e in link.events if isinstance(e, TrailersReceived)]
    assert [t.headers for t in trailers] == [[(b"x-sum", b"42")]]
    assert link.body(stream_id) == b"data" and link.ended(stream_id)


def test_request_trailers_reach_the_handler() -> None:
    link = Link(handler=echo)
    stream_id = link.client.get_next_available_stream_id()
    link.client.send_headers(stream_id, request(b"POST", b"/", (b"te", b"trailers")))
    link.client.send_data(stream_id, b"abc")
    link.client.send_headers(stream_id, [(b"x-checksum", b"1")], end_stream=True)
    link.exchange()
    assert link.body(stream_id) == b"abc" and link.ended(stream_id)
    assert link.stream(stream_id).trailers == [(b"x-checksum", b"1")]


def test_100_continue_is_sent_when_the_handler_first_asks_for_the_body() -> None:
    held: list[Stream] = []
    link = Link(handler=held.append)
    stream_id = link.client.get_next_available_stream_id()
    link.client.send_headers(stream_id, request(b"PUT", b"/", (b"expect", b"100-continue")))
    link.exchange()
    informational = [e for e in link.events if isinstance(e, InformationalResponseReceived)]
    assert informational == []  # not before the handler asks
    assert held[0].take_body() == (b"", True)
    link.exchange()
    informational = [e for e in link.events if isinstance(e, InformationalResponseReceived)]
    assert [dict(e.headers)[b":status"] for e in informational] == [b"100"]
    held[0].take_body()  # asked again: no second 100
    link.exchange()
    assert len([e for e in link.events if isinstance(e, InformationalResponseReceived)]) == 1


def test_a_response_that_ends_before_its_request_stops_the_upload() -> None:
    link = Link(handler=answer(413, b"no thanks"))
    stream_id = link.client.get_next_available_stream_id()
    link.client.send_headers(stream_id, request(b"POST", b"/"))
    link.client.send_data(stream_id, b"x" * 1000)
    link.exchange()
    assert link.status(stream_id) == 413 and link.ended(stream_id)
    # RFC 9113 section 8.1: RST_STREAM NO_ERROR after the whole response.
    assert link.reset_code(stream_id) == ErrorCodes.NO_ERROR
    assert link.core.table.streams == {}


def assert_the_connection_window_comes_back(link: Link) -> None:
    """Upload far more than the connection's window on streams whose bodies nobody reads: only
    if the server hands back what it drops can the client go on sending."""
    for _ in range(4 * link.settings.connection_window // 60_000):
        stream_id = link.client.get_next_available_stream_id()
        link.client.send_headers(stream_id, request(b"POST", b"/"))
        assert link.client.local_flow_control_window(stream_id) >= 60_000
        for _ in range(4):
            link.client.send_data(stream_id, b"x" * 15_000)  # all in one read of the server's
        link.exchange()
        if link.reset_code(stream_id) is None:  # the server did not stop the upload itself
            link.client.reset_stream(stream_id, ErrorCodes.CANCEL)
            link.exchange()


def test_bytes_dropped_after_the_response_ended_give_their_window_back() -> None:
    link = Link(handler=answer(413, b"no thanks"))
    assert_the_connection_window_comes_back(link)


def test_a_handler_that_raises_nothing_but_resets() -> None:
    link = Link(handler=lambda stream: stream.reset())
    stream_id = link.request()
    assert link.reset_code(stream_id) == ErrorCodes.CANCEL
    assert link.core.table.streams == {} and link.core.table._running == 0


def test_handlers_run_at_most_the_stream_limit_and_the_rest_wait_in_order() -> None:
    held: list[Stream] = []
    link = Link(H2Settings(max_concurrent_streams=3), handler=held.append)
    ids = []
    for _ in range(3):
        stream_id = link.client.get_next_available_stream_id()
        link.client.send_headers(stream_id, GET, end_stream=True)
        ids.append(stream_id)
    link.exchange()
    assert [s.stream_id for s in held] == ids
    # The client resets one; its handler has not finished, so it still holds its slot.
    link.client.reset_stream(ids[0], ErrorCodes.CANCEL)
    link.exchange()
    assert held[0].reset_code == ErrorCodes.CANCEL and held[0].phase is StreamPhase.ORPHANED
    more = link.client.get_next_available_stream_id()
    link.client.send_headers(more, GET, end_stream=True)
    link.exchange()
    assert len(held) == 3  # waiting: three handlers run
    held[0].end()  # the orphan's handler finishes: only now does the next one start
    link.exchange()
    assert [s.stream_id for s in held] == [*ids, more]
    assert held[0].stream_id not in link.core.table.streams


def test_a_stream_reset_while_it_waits_never_starts() -> None:
    held: list[Stream] = []
    link = Link(H2Settings(max_concurrent_streams=1), handler=held.append)
    first = link.request()
    link.client.reset_stream(first, ErrorCodes.CANCEL)  # its handler still runs
    waiting = link.client.get_next_available_stream_id()
    link.client.send_headers(waiting, GET, end_stream=True)
    link.exchange()
    assert link.core.table.streams[waiting].phase is StreamPhase.PENDING
    link.client.reset_stream(waiting, ErrorCodes.CANCEL)
    link.exchange()
    held[0].end()
    link.exchange()
    assert [s.stream_id for s in held] == [first]
    assert link.core.table.streams == {}


def test_the_handler_sees_a_client_reset() -> None:
    held: list[Stream] = []
    resets: list[int] = []

    def handle(stream: Stream) -> None:
        held.append(stream)
        stream.on_reset = lambda: resets.append(stream.stream_id)
        stream.send_head(200, [])

    link = Link(handler=handle)
    stream_id = link.client.get_next_available_stream_id()
    link.client.send_headers(stream_id, request(b"POST", b"/"))
    link.client.send_data(stream_id, b"partial")
    link.exchange()
    link.client.reset_stream(stream_id, ErrorCodes.CANCEL)
    link.exchange()
    assert resets == [stream_id]
    assert held[0].take_body() == (b"", False)  # nothing more will come
    held[0].send_body(b"ignored")  # writes after a reset go nowhere, and do not raise
    held[0].end()
    link.exchange()
    assert link.body(stream_id) == b""
    assert link.core.table.streams == {}


def test_bytes_unread_by_a_handler_of_a_reset_stream_give_their_window_back() -> None:
    link = Link(handler=lambda stream: stream.send_head(200, []))  # reads nothing, ever
    assert_the_connection_window_comes_back(link)


def test_invalid_trailers_raise_and_the_handler_may_still_end() -> None:
    outcome: list[str] = []

    def handle(stream: Stream) -> None:
        stream.send_head(200, [])
        try:
            stream.end([(b"x-bad", b"a\r\nb")])
        except ValueError:
            outcome.append("refused")
        stream.end([(b"X-Fine", b" 1 "), (b"connection", b"close")])

    link = Link(handler=handle)
    stream_id = link.request()
    assert outcome == ["refused"]
    trailers = [e for e in link.events if isinstance(e, TrailersReceived)]
    assert [t.headers for t in trailers] == [[(b"x-fine", b"1")]]
    assert link.ended(stream_id)


def test_a_handler_whose_stream_was_reset_before_its_head_may_write_and_end() -> None:
    held: list[Stream] = []
    link = Link(handler=held.append)
    stream_id = link.request(request(b"POST", b"/"), None)
    link.client.reset_stream(stream_id, ErrorCodes.CANCEL)
    link.exchange()
    (stream,) = held
    stream.send_head(200, [])  # nothing goes out, and nothing raises
    stream.send_body(b"late")
    stream.end()
    link.exchange()
    assert link.status(stream_id) is None and link.core.table.streams == {}
