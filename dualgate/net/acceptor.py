"""`Acceptor`: accepts connections on a listening socket, and can stop and restart doing so.

asyncio.Server cannot pause accepting without closing its socket, and a worker process must
keep its socket (shared with its siblings) while all its WSGI threads are busy: it only stops
taking connections from it, so a sibling with a free thread takes them instead. So this accepts
by itself: a reader on the listening socket, `accept()` until the queue is empty, and
`loop.connect_accepted_socket` to give each connection its transport and protocol. (asyncio's
own server also makes a task per accepted connection; uvloop's accepts in C, which this gives
up only in worker processes.)
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from dualgate.logs import error_logger

__all__ = ["Acceptor"]

# What asyncio does when the process is out of descriptors: stop accepting for a while rather
# than spin on a socket that stays readable.
_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_TCP = (socket.AF_INET, socket.AF_INET6)


class Acceptor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        batch: int,
        **tls: Any,
    ) -> None:
        self._loop = loop
        # ssl and ssl_handshake_timeout for connect_accepted_socket, under TLS.
        self._tls = tls
        self._sock = sock
        self._factory = protocol_factory
        # At most this many accepts per wake-up, so one busy socket cannot starve the loop.
        self._batch = batch
        self._reading = False
        self._paused = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[object]] = set()
        sock.setblocking(False)

    def start(self) -> None:
        self._set_reading(True)

    def pause(self) -> None:
        """Stop accepting; connections wait in the socket's queue (or go to a sibling)."""
        self._paused = True
        self._set_reading(False)

    def resume(self) -> None:
        self._paused = False
        if self._retry is None:
            self._set_reading(True)

    async def close(self) -> None:
        """Stop accepting for good and close this process's handle on the socket.

        Connections accepted just before are given their protocol first, so the server's
        graceful stop sees them.
        """
        if self._closed:
            return
        self._closed = True
        self._set_reading(False)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._sock.close()
        if self._pending:
            await asyncio.wait(list(self._pending))

    def _set_reading(self, reading: bool) -> None:
        if reading and not self._reading and not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._reading = True
        elif not reading and self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _accept(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                error_logger.error("Cannot accept (%s); retrying in %gs", exc, _RETRY_DELAY)
                self._set_reading(False)
                self._retry = self._loop.call_later(_RETRY_DELAY, self._after_retry_delay)
                return
            conn.setblocking(False)
            if conn.family in _TCP:
                # asyncio would only when the listener was made with proto IPPROTO_TCP, which
                # gunicorn's are not; without it a response written in two parts waits for the
                # client's delayed ACK.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task: asyncio.Task[object] = self._loop.create_task(
                self._loop.connect_accepted_socket(self._factory, conn, **self._tls)
            )
            self._pending.add(task)
            task.add_done_callback(self._connected)

    def _after_retry_delay(self) -> None:
        self._retry = None
        if not self._paused:
            self._set_reading(True)

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            error_logger.debug("Accepted connection lost before it started: %r", exc)
