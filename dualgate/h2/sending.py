"""The sender: response bytes queued on streams, framed as DATA within the windows.

Rules of this file:
- Round-robin: each pass frames at most one frame per stream (up to the smaller of the
  stream's window, the connection's and the client's SETTINGS_MAX_FRAME_SIZE), so one large
  response does not starve the others, and a stream whose window is shut waits without holding
  anyone (a slow-reading client pauses its own stream, not others).
- At most `_PUMP_BYTES` per `pump`: then the protocol writes them and the loop goes round
  before the next pump, so one connection does not hold the loop.
- A stream with bytes queued and no window to send them in gets a write deadline (core.py
  resets it when it passes); any progress clears it.
- Small pieces are joined into one frame; a large one is sliced as a memoryview, so a large
  body is never copied piece by piece.
- END_STREAM rides on the last DATA frame, or on the trailers, or goes alone; `pump` returns
  the streams it ended, for the core to finish.
"""

from __future__ import annotations

from collections.abc import Callable

from h2.connection import H2Connection

from dualgate.h2.settings import H2Settings
from dualgate.h2.stream import Stream

__all__ = ["Sender"]

# Response bytes framed per pump before the protocol writes them and lets the loop go round.
_PUMP_BYTES = 262144


class Sender:
    __slots__ = ("_clock", "_conn", "_queue_limit", "_streams", "_timeout")

    def __init__(
        self, conn: H2Connection, settings: H2Settings, clock: Callable[[], float]
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._queue_limit = settings.send_queue
        self._timeout = settings.timeout_write
        self._streams: dict[int, Stream] = {}  # streams with bytes, or their end, queued

    def add(self, stream: Stream) -> None:
        self._streams[stream.stream_id] = stream

    def discard(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def clear(self) -> None:
        self._streams.clear()

    def pump(self) -> tuple[list[Stream], bool]:
        """Frame what the windows allow: the streams whose END_STREAM went out, and whether
        the budget ran out with more to send."""
        ended: list[Stream] = []
        budget = _PUMP_BYTES
        streams = self._streams
        while streams:
            progress = 0
            for stream in list(streams.values()):
                progress += self._send_some(stream, ended)
            if not progress:
                break
            budget -= progress
            if budget <= 0:
                return ended, bool(streams)
        return ended, False

    def _send_some(self, stream: Stream, ended: list[Stream]) -> int:
        """One frame of the stream's queue, or its end; the bytes framed (1 for an end)."""
        conn = self._conn
        stream_id = stream.stream_id
        if stream.out:
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                if not stream.write_deadline:
                    stream.write_deadline = self._clock() + self._timeout
                return 0
            chunk = _take(stream, min(window, conn.max_outbound_frame_size))
            last = stream.end_queued and not stream.out and stream.out_trailers is None
            conn.send_data(stream_id, chunk, end_stream=last)
            stream.write_deadline = 0.0
            if stream.out_size < self._queue_limit:
                stream.wake_writers()
            if last:
                del self._streams[stream_id]
                ended.append(stream)
            elif not stream.out and not stream.end_queued:
                del self._streams[stream_id]
            return len(chunk)
        del self._streams[stream_id]
        if not stream.end_queued:
            return 0
        if stream.out_trailers is not None:
            conn.send_headers(stream_id, stream.out_trailers, end_stream=True)
        else:
            conn.end_stream(stream_id)
        ended.append(stream)
        return 1


def _take(stream: Stream, size: int) -> bytes | memoryview:
    """Up to `size` bytes off the front of the stream's queue."""
    out = stream.out
    first = out[0]
    if len(first) > size:
        view = memoryview(first)
        out[0] = view[size:]
        chunk: bytes | memoryview = view[:size]
    elif out and len(out) > 1 and len(first) + len(out[1]) <= size:
        pieces = [out.popleft()]
        total = len(first)
        while out and total + len(out[0]) <= size:
            piece = out.popleft()
            pieces.append(piece)
            total += len(piece)
        chunk = b"".join(pieces)
    else:
        chunk = out.popleft()
    stream.out_size -= len(chunk)
    return chunk
