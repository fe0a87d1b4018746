"""The numbers one HTTP/2 connection runs by, derived once per server from Config.

Why these derived values:
- The header list limit is two-tier. `max_header_list_size` (--h2-max-header-list-size, by
  default --max-head-size) is advertised in SETTINGS and answered with a 431 on the stream, as
  HTTP/1.1 answers a head over --max-head-size. Answering needs the block decoded, or the HPACK
  tables of both ends fall out of step; so decoding itself is bounded at twice the limit
  (`header_block_limit`), on the encoded block before decoding (guard.py) and on the decoded
  list during it (machine.py). Past that the connection closes: no honest client sends a
  header list twice the size the server advertised.
- The connection's receive window is `max(--h2-initial-window-size, --body-buffer-size)`: an
  HTTP/2 connection may hold as much unread request body as an HTTP/1.1 connection does, while
  one stream whose application does not read holds only its own window of it, so with the
  defaults three such streams still leave room for the others' uploads.
- The rates: 50 resets a second (--h2-max-resets-per-second) is ten times what a person
  cancelling (seeking in a video, typing ahead in a search box) draws, and far below the
  thousands a second per connection rapid reset sends; 100 control frames a second is far
  above the handful a browser sends per connection, and a flood needs many thousands.
- Resets may come in a burst of twice the concurrent-stream limit (a browser leaving a page
  cancels every stream it has open, and may do it again on the next page) before the rate
  counts; control frames in a burst of twice their rate (a connection's start: SETTINGS,
  WINDOW_UPDATE, a few PRIORITY frames from older Firefox, the first PINGs).
- `send_queue` is how many response bytes a stream keeps waiting for the client's window before
  its writer is told to wait: one default window's worth, ready the moment the client opens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dualgate.errors import ConfigError

if TYPE_CHECKING:
    from dualgate.config import Config

__all__ = ["H2Settings", "check_frame_size", "check_window"]

# RFC 9113 section 6.5.2 / 6.9.1: windows start at 65535 and may grow to 2^31-1.
DEFAULT_WINDOW = 65535
# Replies (PING and SETTINGS acknowledgements) h2 may queue while the client reads none of our
# bytes. A client that keeps asking for replies it does not read is flooding; the legitimate
# case, a PING or two during a large download the client is slow to take, stays far below.
MAX_UNREAD_REPLIES = 100
# After the first GOAWAY of a graceful stop, how long to wait for the PING's acknowledgement
# before sending the final one: a round trip, bounded (RFC 9113 section 6.8 asks for "at least
# one round-trip time").
GOAWAY_PING_WAIT = 1.0


# Config's checks of the two settings the RFC bounds (they are here, beside what they bound).
def check_window(name: str, value: int) -> None:
    # Below the RFC's 65535 a client may overrun the window before it has read our SETTINGS
    # (it may send 65535 bytes at once); 2^31-1 is the largest window there is.
    if not DEFAULT_WINDOW <= value <= 2**31 - 1:
        raise ConfigError(f"{name} must be between 65535 and 2147483647, got {value}")


def check_frame_size(name: str, value: int) -> None:
    # RFC 9113 section 6.5.2: SETTINGS_MAX_FRAME_SIZE lies between 2^14 and 2^24-1.
    if not 16384 <= value <= 16777215:
        raise ConfigError(f"{name} must be between 16384 and 16777215, got {value}")


@dataclass(frozen=True, slots=True)
class H2Settings:
    max_concurrent_streams: int = 100
    max_header_list_size: int = 65536
    header_block_limit: int = 131072
    max_header_fields: int = 100
    initial_window_size: int = DEFAULT_WINDOW
    connection_window: int = 262144
    max_frame_size: int = 16384
    max_body_size: int | None = None
    resets_per_second: float = 50.0
    reset_burst: int = 200
    control_frames_per_second: float = 100.0
    control_burst: int = 200
    send_queue: int = DEFAULT_WINDOW
    timeout_keep_alive: float = 5.0
    timeout_request_head: float = 10.0
    timeout_read: float = 60.0
    timeout_write: float = 60.0

    @classmethod
    def from_config(cls, config: Config) -> H2Settings:
        header_list = config.h2_max_header_list_size or config.max_head_size
        return cls(
            max_concurrent_streams=config.h2_max_concurrent_streams,
            max_header_list_size=header_list,
            header_block_limit=2 * header_list,
            max_header_fields=config.max_header_fields,
            initial_window_size=config.h2_initial_window_size,
            connection_window=min(
                max(config.h2_initial_window_size, config.body_buffer_size), 2**31 - 1
            ),
            max_frame_size=config.h2_max_frame_size,
            max_body_size=config.max_body_size,
            resets_per_second=float(config.h2_max_resets_per_second),
            reset_burst=2 * config.h2_max_concurrent_streams,
            control_frames_per_second=float(config.h2_max_control_frames_per_second),
            control_burst=2 * config.h2_max_control_frames_per_second,
            timeout_keep_alive=config.timeout_keep_alive,
            timeout_request_head=config.timeout_request_head,
            timeout_read=config.timeout_read,
            timeout_write=config.timeout_write,
        )
