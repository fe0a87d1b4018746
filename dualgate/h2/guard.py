"""Frame-level defences: what a client's frames may cost is decided before h2 parses them.

h2 parses a frame only once all of it has arrived (so a frame header announcing 16 MiB makes it
buffer 16 MiB before it refuses the size), keeps a header block's CONTINUATION frames, 64 of up
to the frame size each, before it decodes any (CVE-2024-27316), answers every PING and SETTINGS
frame, and takes any number of resets (CVE-2023-44487), empty frames and unknown frame types
(CVE-2019-9512, -9515, -9518). The guard reads each frame's 9-byte header as bytes arrive,
skipping payloads by count, and says when a client goes past a bound, before any byte of that
read reaches h2:
- a frame longer than the advertised SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR at once;
- a header block (HEADERS and its CONTINUATIONs) past `header_block_limit` encoded bytes;
- RST_STREAM frames, and the resets its malformed streams draw (`draw_reset`), past the reset
  budget: a token bucket of `reset_burst` refilled at `resets_per_second`;
- frames that carry no request forward (SETTINGS, PING, PRIORITY, DATA without data nor
  END_STREAM, header fragments without bytes nor END_HEADERS, unknown types) past the control
  budget, a token bucket likewise. WINDOW_UPDATE is left out: a client reading a large
  response sends many, and each one costs h2 only a sum.
`replies` counts the acknowledgements the frames of the last read will draw, for the core's
bound on replies queued to a client that reads none (settings.MAX_UNREAD_REPLIES).

Pure: no h2 import, no clock (the caller passes the time).
"""

from __future__ import annotations

from typing import NamedTuple

from dualgate.h2.preface import PREFACE
from dualgate.h2.settings import H2Settings

__all__ = ["ENHANCE_YOUR_CALM", "FRAME_SIZE_ERROR", "Budget", "FrameGuard", "Violation"]

# RFC 9113 section 7 error codes (h2's ErrorCodes has them too; this module imports no h2).
FRAME_SIZE_ERROR = 0x6
ENHANCE_YOUR_CALM = 0xB

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PING, _CONTINUATION = 0x6, 0x9
_END_STREAM = _ACK = 0x1
_END_HEADERS = 0x4
_HEADER_SIZE = 9


class Violation(NamedTuple):
    """Why the connection closes: the GOAWAY error code, and a line for the debug log."""

    code: int
    reason: str


class Budget:
    """A token bucket: `burst` at once, refilled at `rate` a second; spent one per event."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def spend(self, now: float) -> bool:
        """Take one token; False once the bucket is empty (the caller closes then)."""
        tokens = self._tokens + (now - self._stamp) * self._rate
        self._tokens = (tokens if tokens < self._burst else self._burst) - 1.0
        self._stamp = now
        return self._tokens >= 0.0


class FrameGuard:
    __slots__ = (
        "_block_bytes",
        "_block_limit",
        "_control",
        "_frame_limit",
        "_header",
        "_preface_left",
        "_resets",
        "_skip",
        "in_block",
        "replies",
    )

    def __init__(self, settings: H2Settings, now: float) -> None:
        self._preface_left = len(PREFACE)  # h2 checks the preface itself; here it is skipped
        self._header = bytearray()  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._frame_limit = settings.max_frame_size
        self._block_limit = settings.header_block_limit
        self._block_bytes = 0
        self._resets = Budget(settings.resets_per_second, settings.reset_burst, now)
        self._control = Budget(settings.control_frames_per_second, settings.control_burst, now)
        self.in_block = False  # a header block has started and not ended (head deadline)
        self.replies = 0

    def scan(self, data: bytes, now: float) -> Violation | None:
        """Account for the frames in the next bytes read; a Violation means close now."""
        self.replies = 0
        position, size = 0, len(data)
        if self._preface_left:
            taken = min(self._preface_left, size)
            self._preface_left -= taken
            position = taken
        while position < size:
            if self._skip:
                taken = min(self._skip, size - position)
                self._skip -= taken
                position += taken
                continue
            need = _HEADER_SIZE - len(self._header)
            if self._header or size - position < _HEADER_SIZE:
                self._header += data[position : position + need]
                position += need
                if len(self._header) < _HEADER_SIZE:
                    return None
                header = bytes(self._header)
                self._header.clear()
            else:
                header = data[position : position + _HEADER_SIZE]
                position += _HEADER_SIZE
            violation = self._frame(header, now)
            if violation is not None:
                return violation
        return None

    def draw_reset(self, now: float) -> Violation | None:
        """A reset the client drew by a malformed stream costs as much as one it sent."""
        if self._resets.spend(now):
            return None
        return Violation(ENHANCE_YOUR_CALM, "too many stream resets")

    def _frame(self, header: bytes, now: float) -> Violation | None:
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        self._skip = length
        if length > self._frame_limit:
            return Violation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
        if kind == _DATA:
            if length or flags & _END_STREAM:
                return None
        elif kind in (_HEADERS, _CONTINUATION):
            if kind == _HEADERS:
                self._block_bytes = length
            else:
                self._block_bytes += length
            if self._block_bytes > self._block_limit:
                return Violation(ENHANCE_YOUR_CALM, "a header block over the limit")
            self.in_block = not flags & _END_HEADERS
            if length or not self.in_block:
                return None
        elif kind == _RST_STREAM:
            return self.draw_reset(now)
        elif kind in (_SETTINGS, _PING):
            if not flags & _ACK:
                self.replies += 1
        elif kind != _PRIORITY and kind <= _CONTINUATION:
            return None  # WINDOW_UPDATE, GOAWAY; PUSH_PROMISE is h2's connection error
        if self._control.spend(now):
            return None
        return Violation(ENHANCE_YOUR_CALM, "too many frames that carry no request")
