"""The defences, each by running its attack in memory against the core.

Rapid reset (CVE-2023-44487), the CONTINUATION flood (CVE-2024-27316), HPACK bombs and table size
updates, SETTINGS / PING / empty-frame floods, replies a client does not read, oversized frames,
and the connection deadlines (keep-alive, head, an unfinished header block).
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from hpack.hpack import encode_integer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream
from tests.h2.support import GET, Link, answer, raw_frame, request


def calmed(link: Link) -> bool:
    goaway = link.goaway()
    return link.closed and goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


# -- rapid reset ----------------------------------------------------------------------------


def test_rapid_reset_in_one_read_starts_no_handler_and_ends_in_enhance_your_calm() -> None:
    link = Link(handler=answer())
    frames = []
    for n in range(500):
        stream_id = 1 + 2 * n
        frames += link.headers_frames(stream_id, GET, end_stream=True)
        frames.append(RstStreamFrame(stream_id, error_code=ErrorCodes.CANCEL))
    link.send_frames(frames)
    assert calmed(link)
    assert link.started == []  # a stream reset before its handler could start never costs one


def test_rapid_reset_across_reads_holds_every_orphan_to_the_stream_limit() -> None:
    never_finish: list[Stream] = []
    link = Link(H2Settings(max_concurrent_streams=10), handler=never_finish.append)
    for _ in range(150):
        stream_id = link.client.get_next_available_stream_id()
        link.client.send_headers(stream_id, GET, end_stream=True)
        link.exchange()  # the handler starts (if a slot is free)
        link.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        link.exchange()
    # The reset streams' handlers never finish: past the limit nothing more starts, however
    # many streams the client opens and resets.
    assert len(never_finish) == 10
    assert not link.closed  # 150 resets: within the burst
    for _ in range(60):
        stream_id = link.client.get_next_available_stream_id()
        link.client.send_headers(stream_id, GET, end_stream=True)
        link.client.reset_stream(stream_id, ErrorCodes.CANCEL)
    link.exchange()
    assert calmed(link)
    assert len(never_finish) == 10


def test_cancelling_a_page_at_a_time_is_not_an_attack() -> None:
    link = Link(handler=lambda stream: None)  # handlers that take their time
    for _page in range(20):
        ids = []
        for _ in range(100):  # a page's worth of streams, all cancelled when the user leaves
            stream_id = link.client.get_next_available_stream_id()
            link.client.send_headers(stream_id, GET, end_stream=True)
            ids.append(stream_id)
        link.exchange()
        for stream in link.started[-100:]:
            stream.end()  # the handlers see the resets and finish
        for stream_id in ids:
            link.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        link.exchange()
        link.clock.now += 5  # a page every five seconds: 20 resets a second on average
    assert not link.closed and link.goaway() is None


def test_malformed_streams_draw_on_the_reset_budget_too() -> None:
    link = Link(handler=answer())
    for n in range(300):
        if link.closed:
            break
        stream_id = link.client.get_next_available_stream_id()
        link.client.send_headers(stream_id, [*GET, (b"connection", b"x")], end_stream=True)
        if n % 50 == 49:
            link.exchange()  # the client learns of the resets, so it may open more streams
    link.exchange()
    assert calmed(link)


# -- header blocks --------------------------------------------------------------------------


def test_a_continuation_flood_closes_before_h2_holds_more_than_the_limit() -> None:
    settings = H2Settings(header_block_limit=32768)
    link = Link(settings)
    block = link.encode(GET)
    frames: list[Frame] = [HeadersFrame(1, data=block)]  # no END_HEADERS: it never ends
    frames += [ContinuationFrame(1, data=b"\x00" * 16384) for _ in range(200)]
    wire = b"".join(frame.serialize() for frame in frames)
    # Fed in small reads, as a socket would deliver it: the guard stops it at the limit.
    sent = 0
    while not link.closed and sent < len(wire):
        link.core.receive(wire[sent : sent + 4096])
        sent += 4096
    link.exchange()
    assert calmed(link)
    assert sent <= 32768 + 16384 + 4096 + 100  # the limit, one frame past it, one read
    assert link.started == []


def test_empty_continuations_are_a_flood_too() -> None:
    link = Link()
    frames: list[Frame] = [HeadersFrame(1, data=link.encode(GET))]
    frames += [ContinuationFrame(1, data=b"") for _ in range(300)]
    link.send_frames(frames)
    assert calmed(link)


def test_a_header_block_left_unfinished_runs_the_head_deadline() -> None:
    link = Link(H2Settings(timeout_request_head=10.0), handler=answer())
    link.request()  # the connection is past its first request
    link.send_frames([HeadersFrame(3, data=link.encode(GET))])  # no END_HEADERS, then nothing
    link.clock.now += 9
    assert link.core.check(link.clock.now) == []
    link.clock.now += 2
    assert link.core.check(link.clock.now) == ["head"]
    link.exchange()
    assert link.closed and link.goaway() is not None


def _indexed(link: Link, name: bytes, value: bytes) -> bytes:
    """A one-field HPACK representation referring to the client's dynamic table entry."""
    found = link.client.encoder.header_table.search(name, value)
    assert found is not None and found[2] == value
    field = encode_integer(found[0], 7)
    field[0] |= 0x80
    return bytes(field)


def _bomb(link: Link, references: int) -> tuple[int, bytes]:
    """A first request putting a 4 KB field in the dynamic table, then a header block of a few
    dozen bytes that decodes to `references` copies of it."""
    value = b"v" * 4000
    first = link.request([*GET, (b"x-bomb", value)])
    return first, link.encode(GET) + _indexed(link, b"x-bomb", value) * references


def test_an_hpack_bomb_past_twice_the_advertised_size_closes_the_connection() -> None:
    link = Link(handler=answer())  # advertised: 64 KiB; decoding stops at 128 KiB
    first, block = _bomb(link, references=40)  # 161 KB decoded
    assert len(block) < 100
    link.send_block(block)
    assert calmed(link)
    assert [s.stream_id for s in link.started] == [first]


def test_a_header_list_between_the_two_limits_gets_431_and_the_connection_lives() -> None:
    link = Link(handler=answer())
    _, block = _bomb(link, references=20)  # 81 KB decoded: over 64 KiB, under 128
    assert link.status(link.send_block(block)) == 431
    assert not link.closed
    after = link.request()
    assert link.status(after) == 200


def _size_update(size: int) -> bytes:
    update = encode_integer(size, 5)
    update[0] |= 0x20
    return bytes(update)


def test_table_size_updates_are_checked() -> None:
    link = Link(handler=answer())
    # At most two at the start of a block (RFC 7541 section 4.2); these change nothing.
    assert link.status(link.send_block(_size_update(4096) * 2 + link.encode(GET))) == 200
    link.send_block(_size_update(4096) * 3 + link.encode(GET))
    assert link.closed and link.goaway() is not None
    assert link.goaway().error_code != ErrorCodes.NO_ERROR  # type: ignore[union-attr]

    link = Link(handler=answer())
    over = link.send_block(_size_update(8192) + link.encode(GET))  # past our table size
    assert link.closed and link.status(over) is None


# -- control-frame floods ---------------------------------------------------------------------


def test_settings_flood() -> None:
    link = Link()
    link.send_frames([SettingsFrame(0, settings={4: 65535}) for _ in range(500)])
    assert calmed(link)


def test_ping_flood() -> None:
    link = Link()
    link.send_frames([PingFrame(0, opaque_data=b"%08d" % n) for n in range(500)])
    assert calmed(link)


def test_empty_data_flood() -> None:
    link = Link(handler=lambda stream: None)
    stream_id = link.client.get_next_available_stream_id()
    link.client.send_headers(stream_id, request(b"POST", b"/"))
    link.exchange()
    link.send_frames([DataFrame(stream_id, data=b"") for _ in range(500)])
    assert calmed(link)


def test_priority_and_unknown_frame_floods() -> None:
    link = Link()
    link.send_frames([PriorityFrame(1, depends_on=0, stream_weight=16) for _ in range(500)])
    assert calmed(link)
    link = Link()
    link.send_raw(raw_frame(0x42, 0, 0, b"x") * 500)
    assert calmed(link)


def test_control_frames_at_an_honest_pace_are_fine() -> None:
    link = Link(handler=answer())
    for _ in range(60):  # a PING and a SETTINGS every second for a minute, with requests
        link.client.ping(b"12345678")
        link.client.update_settings({4: 65535})
        link.request()
        link.clock.now += 1
    assert not link.closed


def test_replies_a_client_does_not_read_are_bounded() -> None:
    # A generous rate, so the bound on unread replies is what is tested.
    link = Link(H2Settings(control_frames_per_second=1e6, control_burst=10**6))
    link.core.writing_paused = True  # the client reads none of our bytes
    link.send_frames([PingFrame(0, opaque_data=b"12345678") for _ in range(100)])
    assert not link.closed
    link.send_frames([PingFrame(0, opaque_data=b"12345678")])
    assert link.closed and link.core.close_reason == "control replies the client does not read"


def test_unread_replies_are_forgiven_once_the_client_reads() -> None:
    link = Link(H2Settings(control_frames_per_second=1e6, control_burst=10**6))
    for _ in range(5):
        link.core.writing_paused = True
        link.send_frames([PingFrame(0, opaque_data=b"12345678") for _ in range(60)])
        link.core.writing_paused = False
        link.exchange()
    assert not link.closed


def test_a_frame_over_the_advertised_size_is_refused_from_its_header() -> None:
    link = Link()
    header = DataFrame(1, data=b"x" * 20000).serialize()[:9]  # 20000 > 16384
    link.core.receive(link.client.data_to_send() + header)  # no payload yet
    assert link.closed
    link.exchange()
    assert link.goaway() is not None
    assert link.goaway().error_code == ErrorCodes.FRAME_SIZE_ERROR  # type: ignore[union-attr]


# -- connection deadlines -----------------------------------------------------------------------


def test_an_idle_connection_closes_after_the_keep_alive_timeout() -> None:
    link = Link(H2Settings(timeout_keep_alive=5.0), handler=answer())
    link.request()
    link.clock.now += 4.9
    assert link.core.check(link.clock.now) == []
    link.clock.now += 0.2
    assert link.core.check(link.clock.now) == ["keep-alive"]
    link.exchange()
    assert link.closed
    assert link.goaway().error_code == ErrorCodes.NO_ERROR  # type: ignore[union-attr]


def test_a_connection_that_asks_nothing_closes_after_the_head_timeout() -> None:
    link = Link(H2Settings(timeout_request_head=10.0, timeout_keep_alive=5.0))
    link.clock.now += 9.9
    assert link.core.check(link.clock.now) == []  # not the keep-alive timeout: the head one
    link.clock.now += 0.2
    assert link.core.check(link.clock.now) == ["head"]
    assert link.closed


def test_a_busy_connection_has_no_connection_deadline() -> None:
    link = Link(H2Settings(timeout_keep_alive=5.0), handler=lambda stream: None)
    link.request()
    link.clock.now += 50
    assert link.core.check(link.clock.now) == []
    assert not link.closed
