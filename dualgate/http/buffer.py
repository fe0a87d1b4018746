"""The read buffer: one per loop thread, reused by every connection's protocol on that loop.

asyncio gives a plain Protocol a fresh 256 KiB object per read, shrunk to what arrived, and that
churn fragments glibc's heap: the soak saw RSS grow 18 MiB a minute under the asyncio loop
(tests/test_http_reads.py), and WebSocket uploads ran at half the speed, every fresh buffer
page-faulting anew. A BufferedProtocol reads into this one instead (`get_buffer`), so whatever
it is given (`buffer_updated`) must be copied out before it returns: the next read, on any
connection of the loop, overwrites it.
"""

from __future__ import annotations

import threading

__all__ = ["read_buffer"]

_READ_SIZE = 256 * 1024
_reads = threading.local()


def read_buffer() -> memoryview:
    """This thread's read buffer (made on first use: each loop runs on one thread)."""
    view: memoryview | None = getattr(_reads, "view", None)
    if view is None:
        view = _reads.view = memoryview(bytearray(_READ_SIZE))
    return view
