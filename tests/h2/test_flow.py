"""Flow control both ways, per stream and per connection, and the deadlines that bound it."""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import DataReceived, WindowUpdated

from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream
from tests.h2.support import Link, answer, request

BIG = 1_000_000


def test_a_client_that_reads_one_stream_slowly_holds_up_that_stream_only() -> None:
    link = Link(handler=answer(200, b"r" * BIG))
    link.client_acks = False
    # Like a browser, the client keeps the connection's window wide open; it hands back the
    # window of stream `fast` as it reads, and never that of stream `slow`.
    link.client.increment_flow_control_window(2**30)
    slow = link.request(request(b"GET", b"/slow"))
    fast = link.client.get_next_available_stream_id()
    link.client.send_headers(fast, request(b"GET", b"/fast"), end_stream=True)
    for _ in range(200):
        link.exchange()
        got = sum(
            e.flow_controlled_length
            for e in link.events
            if isinstance(e, DataReceived) and e.stream_id == fast
        )
        link.events = [
            e for e in link.events if not isinstance(e, DataReceived) or e.stream_id != fast
        ]
        if got:
            link.client.acknowledge_received_data(got, fast)
        if link.ended(fast):
            break
    assert link.ended(fast)
    assert len(link.body(slow)) == 65535  # one initial window, and not a byte more
    assert not link.ended(slow)


def test_responses_are_interleaved_frame_by_frame() -> None:
    link = Link(handler=answer(200, b"r" * 200_000))
    link.client.increment_flow_control_window(2**30)
    first = link.client.get_next_available_stream_id()
    link.client.send_headers(first, request(b"GET", b"/1"), end_stream=True)
    second = link.client.get_next_available_stream_id()
    link.client.send_headers(second, request(b"GET", b"/2"), end_stream=True)
    link.exchange()
    order = [e.stream_id for e in link.events if isinstance(e, DataReceived)]
    assert link.body(first) == link.body(second) == b"r" * 200_000
    # Round-robin: neither response waits for the other to finish.
    assert order[:4] == [first, second, first, second]


def test_an_upload_pauses_while_the_handler_does_not_read_and_windows_come_back_as_it_does() -> (
    None
):
    held: list[Stream] = []
    link = Link(handler=held.append)
    upload = link.client.get_next_available_stream_id()
    link.client.send_headers(upload, request(b"POST", b"/"))
    assert link.upload(upload, b"u" * BIG, end=False) == 65535  # the stream's window, no more
    assert link.upload(upload, b"u", end=False) == 0
    updates = [e for e in link.events if isinstance(e, WindowUpdated) and e.stream_id == upload]
    assert updates == []  # nothing handed back while the handler reads nothing
    (stream,) = held
    taken = 0
    increments: list[int] = []
    while taken < 300_000:
        data, _ = stream.take_body()
        taken += len(data)
        link.exchange()
        increments += [
            e.delta
            for e in link.events
            if isinstance(e, WindowUpdated) and e.stream_id == upload and e.delta
        ]
        link.events = [e for e in link.events if not isinstance(e, WindowUpdated)]
        assert link.upload(upload, b"u" * 10_000, end=False) > 0 or not data
    # Handed back as the handler consumed, in pieces of a window's half or more, not at once.
    assert len(increments) > 3
    assert all(32_000 < delta <= 65535 for delta in increments)


def test_a_stream_whose_window_stays_shut_times_out_and_its_writer_is_released() -> None:
    link = Link(H2Settings(timeout_write=30.0))
    link.client_acks = False
    released: list[str] = []

    def write_politely(stream: Stream) -> None:
        # A writer that waits when told: the stream's queue stays bounded.
        while not stream.writing_paused:
            stream.send_body(b"w" * 16384)
        assert stream.out_size <= link.settings.send_queue + 16384
        stream.when_writable(lambda: released.append("woken"))

    def handle(stream: Stream) -> None:
        stream.send_head(200, [])
        write_politely(stream)

    link.handler = handle
    stream_id = link.request()
    (stream,) = link.started
    assert len(link.body(stream_id)) == 65535  # the client's initial window
    link.clock.now += 29
    assert link.core.check(link.clock.now) == []
    link.clock.now += 2
    assert link.core.check(link.clock.now) == ["write"]
    link.exchange()
    assert link.reset_code(stream_id) == ErrorCodes.CANCEL
    assert released == ["woken"] and stream.reset_code == ErrorCodes.CANCEL
    assert stream.out_size == 0  # what was queued is let go
    stream.end()
    assert link.core.table.streams == {}


def test_progress_restarts_the_write_deadline() -> None:
    link = Link(H2Settings(timeout_write=30.0), handler=answer(200, b"x" * 300_000))
    link.client_acks = False
    stream_id = link.request()
    for _ in range(3):
        link.clock.now += 20
        assert link.core.check(link.clock.now) == []
        link.client.acknowledge_received_data(16384, stream_id)
        link.exchange()
    assert link.reset_code(stream_id) is None


def test_while_the_transport_is_paused_no_response_bytes_are_framed() -> None:
    link = Link(handler=answer(200, b"p" * 100_000))
    link.core.writing_paused = True
    stream_id = link.request()
    assert link.status(stream_id) == 200  # the head is not flow controlled
    assert link.body(stream_id) == b""
    link.core.writing_paused = False
    link.exchange()
    assert link.body(stream_id) == b"p" * 100_000


def test_one_pump_frames_a_bounded_amount() -> None:
    link = Link(handler=answer(200, b"b" * BIG))
    link.client.increment_flow_control_window(2**30)
    link.client.update_settings({4: 2**30})  # SETTINGS_INITIAL_WINDOW_SIZE: every stream open
    link.exchange()
    stream_id = link.client.get_next_available_stream_id()
    link.client.send_headers(stream_id, request(), end_stream=True)
    link.core.receive(link.client.data_to_send())
    assert link.core.pump() is True  # more to send than one pump frames
    first = link.core.data_to_send()
    assert 262144 <= len(first) < 262144 + 2 * 16393
    link.events += link.client.receive_data(first)
    link.exchange()
    assert len(link.body(stream_id)) == BIG


def test_a_client_that_sends_no_body_bytes_times_out_on_its_stream_alone() -> None:
    held: list[Stream] = []
    link = Link(H2Settings(timeout_read=60.0), handler=held.append)
    stalled = link.client.get_next_available_stream_id()
    link.client.send_headers(stalled, request(b"POST", b"/"))
    link.client.send_data(stalled, b"a bit")
    link.exchange()
    link.clock.now += 59
    assert link.core.check(link.clock.now) == []
    link.client.send_data(stalled, b" more")  # any byte restarts the deadline
    link.exchange()
    other = link.request(request(b"GET", b"/other"))
    link.clock.now += 59
    assert link.core.check(link.clock.now) == []
    link.clock.now += 2
    assert link.core.check(link.clock.now) == ["read"]
    link.exchange()
    assert link.reset_code(stalled) == ErrorCodes.CANCEL
    assert held[0].reset_code == ErrorCodes.CANCEL
    assert link.reset_code(other) is None and held[1].reset_code is None


def test_a_handler_that_does_not_read_is_not_the_clients_stall() -> None:
    held: list[Stream] = []
    link = Link(H2Settings(timeout_read=60.0), handler=held.append)
    stream_id = link.client.get_next_available_stream_id()
    link.client.send_headers(stream_id, request(b"POST", b"/"))
    assert link.upload(stream_id, b"x" * 100_000, end=False) == 65535  # the window is full
    for _ in range(5):
        link.clock.now += 61
        assert link.core.check(link.clock.now) == []
    assert held[0].reset_code is None
    held[0].take_body()  # now the client may send: from here a stall is its own
    link.exchange()
    link.clock.now += 61
    assert link.core.check(link.clock.now) == ["read"]
