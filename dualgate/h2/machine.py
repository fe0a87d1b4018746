"""What h2 is told, and the three places it is bent, each for an RFC 9113 rule h2 breaks.

`new_connection` builds the server side of one connection: h2's own checks of received fields
off (checks.py makes them, as stream errors), our SETTINGS in place before the first frame,
and the HPACK decoder replaced. Everything else is h2 as documented.

The bends, each pinned by a test in tests/test_h2_malformed.py or tests/test_h2_floods.py, so a
new h2 that moves them fails there first (pyproject pins h2 below 5):
- `_LenientStream`: h2 raises a connection error for a Content-Length that is not digits, or
  that the DATA does not add up to (`_initialize_content_length`, `_track_content_length`);
  RFC 9113 section 8.1.1 makes both a stream error. Those two methods do nothing here, and
  the core checks the length per stream. `_Connection._begin_new_stream` hands out this
  subclass; the class is swapped on the stream h2 built (it adds no state) rather than
  copying h2's stream-opening rules.
- `_Decoder` keeps its header-list bound at `header_block_limit`: h2 sets the decoder's bound
  to the advertised SETTINGS_MAX_HEADER_LIST_SIZE once the client acknowledges it, and a list
  over it would then be a connection error instead of a 431 (settings.py has the two tiers).
- `_Decoder` refuses more than two dynamic table size updates at the start of a block: RFC
  7541 section 4.2 allows at most two between header blocks; hpack checks only their size
  and that they come first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream
from hpack import Decoder, HeaderTuple, HPACKDecodingError

from dualgate.h2.settings import DEFAULT_WINDOW, H2Settings

__all__ = ["new_connection"]

# How many dynamic table size updates may open a header block (RFC 7541 section 4.2).
_MAX_TABLE_UPDATES = 2


class _LenientStream(H2Stream):
    def _initialize_content_length(self, headers: Any) -> None:
        """The core reads Content-Length itself (checks.py), as a stream error when wrong."""

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        """The core adds up the DATA per stream and resets only that stream on a mismatch."""


class _Connection(H2Connection):
    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _LenientStream
        return stream


class _Decoder(Decoder):
    def __init__(self, hard_limit: int) -> None:
        self._hard_limit = hard_limit
        super().__init__(max_header_list_size=hard_limit)

    @property
    def max_header_list_size(self) -> int:
        return self._hard_limit

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        """h2 sets the advertised size here once it is acknowledged; the bound stays."""

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        updates = 0
        position, size = 0, len(data)
        # A size update is 001xxxxx; when those five bits are all ones, 7-bit continuation
        # bytes follow, the last one with its high bit clear (RFC 7541 section 5.1).
        while position < size and data[position] & 0xE0 == 0x20:
            updates += 1
            if updates > _MAX_TABLE_UPDATES:
                raise HPACKDecodingError("more than two table size updates")
            first = data[position]
            position += 1
            if first & 0x1F == 0x1F:
                while position < size:
                    position += 1
                    if not data[position - 1] & 0x80:
                        break
        return super().decode(data, raw)


def new_connection(settings: H2Settings) -> H2Connection:
    """The server side of one connection, its SETTINGS queued (after the preface is read, h2
    sends nothing the client has not asked for)."""
    config = H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        # checks.response_fields makes every response head valid before h2 sees it.
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    connection = _Connection(config=config)
    # In place before initiate_connection, which sends them, so h2 holds the client to them
    # from its first frame. The window and frame size only allow it more than RFC 9113's
    # defaults. The stream and header list limits are below the RFC's "unlimited" (as h2's own
    # defaults are) before the client can have read them; a client does not open a hundred
    # streams, or send a head of --max-head-size, before the server's first frame arrives.
    connection.local_settings = Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
        },
    )
    connection.max_inbound_frame_size = settings.max_frame_size
    connection.decoder = _Decoder(settings.header_block_limit)
    connection.initiate_connection()
    if settings.connection_window > DEFAULT_WINDOW:
        # SETTINGS_INITIAL_WINDOW_SIZE is per stream; the connection's window grows only by a
        # WINDOW_UPDATE on stream 0.
        connection.increment_flow_control_window(settings.connection_window - DEFAULT_WINDOW)
    return connection
