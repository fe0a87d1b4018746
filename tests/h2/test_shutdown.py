"""A graceful stop on HTTP/2 (RFC 9113 section 6.8): GOAWAY with the largest stream id and a
PING, then, once the PING comes back (or a second has passed), GOAWAY with the last stream
served; those streams finish, later ones are refused, then the connection closes."""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import PingAckReceived

from dualgate.h2.phases import Phase
from dualgate.h2.stream import Stream
from tests.h2.support import GET, Link, answer, request

LARGEST = 2**31 - 1


def finish(stream: Stream, body: bytes = b"done") -> None:
    stream.send_head(200, [])
    stream.send_body(body)
    stream.end()


def test_an_idle_connection_closes_after_both_goaways() -> None:
    link = Link(handler=answer())
    link.hide_goaways = True
    first = link.request()
    link.core.shutdown()
    link.exchange()
    assert link.goaways == [(LARGEST, 0), (first, 0)]
    assert link.closed


def test_in_flight_streams_finish_and_the_connection_closes_after_the_last() -> None:
    held: list[Stream] = []
    link = Link(handler=held.append)
    link.hide_goaways = True
    one = link.request(request(b"GET", b"/one"))
    two = link.request(request(b"POST", b"/two"), None)
    link.core.shutdown()
    link.exchange()
    assert link.goaways == [(LARGEST, 0), (two, 0)]
    assert link.core.phase is Phase.DRAINING
    finish(held[0])
    link.exchange()
    assert link.body(one) == b"done" and not link.closed
    finish(held[1], b"two")
    link.exchange()
    assert link.body(two) == b"two"
    assert link.closed


def test_a_request_that_crossed_the_first_goaway_is_served() -> None:
    held: list[Stream] = []
    link = Link(handler=held.append)
    link.hide_goaways = True
    link.core.shutdown()
    # The client sent this before it read the GOAWAY: it arrives ahead of the PING's answer.
    crossing = link.client.get_next_available_stream_id()
    link.client.send_headers(crossing, GET, end_stream=True)
    link.exchange()
    assert link.goaways == [(LARGEST, 0), (crossing, 0)]
    assert [s.stream_id for s in held] == [crossing]
    finish(held[0])
    link.exchange()
    assert link.body(crossing) == b"done" and link.closed


def test_a_stream_above_the_last_one_is_refused() -> None:
    held: list[Stream] = []
    link = Link(handler=held.append)
    link.hide_goaways = True
    served = link.request()
    link.core.shutdown()
    link.exchange()
    assert link.goaways[-1] == (served, 0)
    late = link.request()
    assert link.reset_code(late) == ErrorCodes.REFUSED_STREAM  # safe to retry elsewhere
    assert [s.stream_id for s in held] == [served]
    finish(held[0])
    link.exchange()
    assert link.closed


def test_without_the_pings_answer_the_final_goaway_goes_after_a_second() -> None:
    link = Link(handler=lambda stream: None)
    link.hide_goaways = True
    link.request()
    link.core.shutdown()
    link.exchange(client_reads=False)  # the client reads nothing: no PING comes back
    assert link.goaways == [(LARGEST, 0)]
    link.clock.now += 0.9
    link.core.check(link.clock.now)
    link.exchange(client_reads=False)
    assert len(link.goaways) == 1
    link.clock.now += 0.2
    link.core.check(link.clock.now)
    link.exchange(client_reads=False)
    assert link.goaways == [(LARGEST, 0), (1, 0)]
    assert link.core.phase is Phase.DRAINING


def test_the_ping_is_ours_and_other_acks_do_not_hurry_the_stop() -> None:
    link = Link(handler=lambda stream: None)
    link.hide_goaways = True
    link.request()
    link.client.ping(b"client01")
    link.exchange()
    assert any(isinstance(e, PingAckReceived) for e in link.events)
    link.core.shutdown()
    link.exchange(client_reads=False)
    link.client.ping(b"client02")  # the client's own PING is answered, and changes nothing
    link.exchange(client_reads=False)
    assert link.goaways == [(LARGEST, 0)]


def test_a_second_shutdown_changes_nothing() -> None:
    link = Link(handler=lambda stream: None)
    link.hide_goaways = True
    link.request()
    link.core.shutdown()
    link.core.shutdown()
    link.exchange()
    link.core.shutdown()
    link.exchange()
    assert link.goaways == [(LARGEST, 0), (1, 0)]


def test_a_client_goaway_closes_the_connection_and_its_streams_are_lost() -> None:
    held: list[Stream] = []
    link = Link(handler=held.append)
    link.request()
    link.client.close_connection()
    link.exchange()
    assert link.closed
    assert held[0].reset_code == ErrorCodes.CANCEL
