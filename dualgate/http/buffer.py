"""The read buffer: one per loop thread, reused by every connection's protocol on that loop.

asyncio gives a plain Protocol a fresh 256 KiB object per read, shrunk to what arrived, and so
do the TLS layers of asyncio and uvloop (`SSLObject.read(256 KiB)`), whatever the loop. That
churn fragments glibc's heap: the soak saw RSS grow 18 MiB a minute under the asyncio loop, and
4.2 MiB a minute on its TLS server under uvloop, with the bytes in use flat and the heap's free
space growing (tests/http/test_reads.py). WebSocket uploads ran at half the speed too, every
fresh buffer page-faulting anew. A BufferedProtocol reads into this one instead (`get_buffer`),
so whatever it is given (`buffer_updated`) must be copied out before it returns: the next read,
on any connection of the loop, overwrites it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

__all__ = ["BufferedReads", "read_buffer"]

_READ_SIZE = 256 * 1024
_reads = threading.local()


def read_buffer() -> memoryview:
    """This thread's read buffer (made on first use: each loop runs on one thread)."""
    view: memoryview | None = getattr(_reads, "view", None)
    if view is None:
        view = _reads.view = memoryview(bytearray(_READ_SIZE))
    return view


class BufferedReads(asyncio.BufferedProtocol):
    """Buffered reads for a protocol that has `data_received`: each read lands in the loop
    thread's buffer and is handed on as its own bytes. A class using it must not also be an
    asyncio.Protocol: uvloop calls `get_buffer` only for a protocol that is not one."""

    __slots__ = ()

    data_received: Callable[[bytes], None]  # the protocol class's own

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        # Copied out: the protocol keeps what it is fed, and the buffer is read into again.
        self.data_received(bytes(read_buffer()[:nbytes]))
