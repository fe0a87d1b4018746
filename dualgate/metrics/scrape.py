"""The supervisor's metrics listener: HTTP/1.1 on the supervisor's own `selectors` loop.

The supervisor has no event loop (supervisor.py, rules), so this serves the few requests a
metrics scraper or a health probe sends without one: the request reader is the server's own
sans-IO `RequestReader`, the answers are endpoint.py's, and each connection gets one answer
and is closed. Everything is bounded: a head of at most 8 KiB within the request-head timeout,
at most 64 connections at once (more are closed at once), and answers written without
blocking.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from email.utils import formatdate

from dualgate.http.checks import Refusal
from dualgate.http.framing import EMPTY, build_head, refusal_response
from dualgate.http.grammar import REASONS
from dualgate.http.reader import CLOSED, NEED_DATA, Request, RequestReader
from dualgate.metrics.answers import Answer

__all__ = ["ScrapeServer"]

_MAX_HEAD = 8192
_MAX_FIELDS = 100
_MAX_CONNECTIONS = 64

Respond = Callable[[bytes, bytes], Answer]  # (method, target) -> the answer


class _Connection:
    __slots__ = ("deadline", "out", "reader", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.reader = RequestReader(_MAX_HEAD, _MAX_FIELDS, 0)
        self.out = b""
        self.deadline = deadline


class ScrapeServer:
    def __init__(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector,
        respond: Respond,
        timeout: float,
    ) -> None:
        self._sock = sock
        self._selector = selector
        self._respond = respond
        self._timeout = timeout
        self._connections: dict[int, _Connection] = {}
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, self._accept)

    def filenos(self) -> list[int]:
        """Every descriptor of this listener, its connections' too: a forked worker closes
        them, or a scraper's connection would stay open in the worker after the supervisor
        closed it."""
        return [self._sock.fileno(), *self._connections]

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self._connections.values()), default=None)

    def check_deadlines(self, now: float) -> None:
        for connection in list(self._connections.values()):
            if now >= connection.deadline:
                self._close(connection)

    def close(self) -> None:
        for connection in list(self._connections.values()):
            self._close(connection)
        self._selector.unregister(self._sock)
        self._sock.close()

    # -- connections ----------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _address = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        if len(self._connections) >= _MAX_CONNECTIONS:
            sock.close()
            return
        sock.setblocking(False)
        connection = _Connection(sock, time.monotonic() + self._timeout)
        self._connections[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_READ, lambda: self._read(connection))

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        reader = connection.reader
        if data:
            reader.feed(data)
        else:
            reader.feed_eof()
        event = reader.next_event()
        if event is NEED_DATA:
            return
        if event is CLOSED:
            self._close(connection)
            return
        if isinstance(event, Request):
            out = self._answer(event)
        elif isinstance(event, Refusal):
            out = refusal_response(
                event.status,
                event.message,
                head_request=False,
                retry_after=False,
                extra=[],
                extra_head=b"",
            )
        else:
            self._close(connection)
            return
        connection.out = out
        self._selector.modify(
            connection.sock, selectors.EVENT_WRITE, lambda: self._write(connection)
        )
        self._write(connection)

    def _answer(self, request: Request) -> bytes:
        status, headers, body = self._respond(request.method, request.target)
        extra = [
            (b"date", formatdate(time.time(), usegmt=True).encode("ascii")),
            (b"server", b"dualgate"),
        ]
        head = build_head(
            status,
            REASONS.get(status, b""),
            headers,
            head_request=request.method == b"HEAD",
            http11=request.http_version == b"1.1",
            keep_alive=False,
            whole_body=len(body),
            extra=extra,
            extra_head=b"".join(name + b": " + value + b"\r\n" for name, value in extra),
        )
        return head.data if head.framing == EMPTY else head.data + body

    def _write(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.out = connection.out[sent:]
        if not connection.out:
            # The answer is out: end the write side first, so that closing with a request's
            # unread bytes behind it cannot reset the connection before the client reads.
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        fileno = connection.sock.fileno()
        if self._connections.pop(fileno, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()
