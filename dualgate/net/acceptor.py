"""`Acceptor`: accepts connections on a listening socket, and can stop and restart doing so.

asyncio.Server cannot pause accepting without closing its socket, and a worker process must
keep its socket (shared with its siblings) while all its WSGI threads are busy: it only stops
taking connections from it, so a sibling with a free thread takes them instead. So this accepts
by itself: a reader on the listening socket, `accept()` until the queue is empty, and
`loop.connect_accepted_socket` to give each connection its transport and protocol. (uvloop's
own server accepts in C, which this gives up only in worker processes.)

On asyncio's selector loop without TLS the transport is made directly instead: asyncio's own
server, and `connect_accepted_socket`, make a task and a future per connection and wake the
task twice, five loop callbacks where the transport alone needs two (connection_made, then
reading). That is half the loop's work for a `Connection: close` request. The accepted socket
is wrapped from its descriptor with the listener's family and type, which `socket.accept`
would convert to enums twice per connection (Python code).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable
from typing import Any, cast

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
        self._family, self._type, self._proto = int(sock.family), int(sock.type), sock.proto
        # The transport made here, without a task (the module docstring says why): on asyncio's
        # selector loop, without TLS.
        self._direct = isinstance(loop, BaseSelectorEventLoop) and not tls.get("ssl")
        # Set here unless asyncio's transport sets it itself (a listener made as IPPROTO_TCP).
        self._nodelay = sock.family in _TCP and not (
            self._direct and sock.proto == socket.IPPROTO_TCP
        )

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
        if self._direct:
            # connection_made of the last ones accepted was scheduled before this: run it.
            await asyncio.sleep(0)

    def _set_reading(self, reading: bool) -> None:
        if reading and not self._reading and not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._reading = True
        elif not reading and self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _accept(self) -> None:
        accept = self._sock._accept  # type: ignore[attr-defined]  # socket.accept's own step
        for _ in range(self._batch):
            try:
                fd, address = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                error_logger.error("Cannot accept (%s); retrying in %gs", exc, _RETRY_DELAY)
                self._set_reading(False)
                self._retry = self._loop.call_later(_RETRY_DELAY, self._after_retry_delay)
                return
            conn = socket.socket(self._family, self._type, self._proto, fileno=fd)
            conn.setblocking(False)
            if self._nodelay:
                # asyncio would only when the listener was made with proto IPPROTO_TCP, which
                # gunicorn's are not; without it a response written in two parts waits for the
                # client's delayed ACK.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._direct:
                self._transport(conn, address)
                continue
            task: asyncio.Task[object] = self._loop.create_task(
                self._loop.connect_accepted_socket(self._factory, conn, **self._tls)
            )
            self._pending.add(task)
            task.add_done_callback(self._connected)

    def _transport(self, conn: socket.socket, address: Any) -> None:
        """The connection's transport and protocol, as connect_accepted_socket would make them
        (the peer's address given, saving a getpeername call), less its task and future."""
        try:
            protocol = self._factory()
            loop = cast(BaseSelectorEventLoop, self._loop)
            # Private, but what asyncio.Server and connect_accepted_socket call on this loop.
            loop._make_socket_transport(conn, protocol, extra={"peername": address})  # type: ignore[attr-defined]
        except Exception as exc:
            conn.close()
            error_logger.error("Cannot start an accepted connection: %r", exc)

    def _after_retry_delay(self) -> None:
        self._retry = None
        if not self._paused:
            self._set_reading(True)

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            error_logger.debug("Accepted connection lost before it started: %r", exc)
