"""TLS over memory BIOs, for a connection whose first bytes were plain: a PROXY header.

asyncio's `start_tls` (and uvloop's) cannot be handed bytes already read from the socket, and
reading the PROXY header has usually read the start of the ClientHello with it. So such a
connection runs its own TLS: an `ssl.SSLObject` over two `MemoryBIO`s, between the raw
transport and the HTTP protocol, which sees a `BIOTransport` as its transport.

Rules of this file:
- The raw transport's protocol is `BIOTransport.raw_side`; the application side (HTTPProtocol,
  or whatever an upgrade hands the connection to) gets `BIOTransport` as its transport and the
  usual callbacks: `connection_made` once the handshake is done (through `on_handshake`),
  `data_received` with plaintext, `eof_received`, `connection_lost`, `pause_writing`.
- What OpenSSL puts in the outgoing BIO (handshake, alerts, session tickets, records,
  close_notify) goes to the raw transport right after the call that made it.
- Reading paused by the application stops delivery at once: plaintext not yet delivered stays
  inside the SSLObject until `resume_reading`, and the raw transport pauses too.
- A client may not renegotiate (tls.py sets OP_NO_RENEGOTIATION), so a write never waits for
  a read.
- The handshake has no timer here: its owner (edge.py) is in the server's deadline sweep until
  `on_handshake`, and `on_close` tells it when the connection ended before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, cast

from dualgate.http.buffer import BufferedReads, read_buffer

__all__ = ["BIOTransport"]


class BIOTransport(asyncio.Transport):
    """The server side of one TLS connection over an already-connected raw transport."""

    def __init__(
        self,
        raw: asyncio.Transport,
        context: ssl.SSLContext,
        loop: asyncio.AbstractEventLoop,
        on_handshake: Callable[[BIOTransport], None],
        on_close: Callable[[BaseException | None], None],
    ) -> None:
        super().__init__()
        self._raw = raw
        self._loop = loop
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._on_handshake = on_handshake
        self._on_close: Callable[[BaseException | None], None] | None = on_close
        self._protocol: asyncio.BaseProtocol | None = None
        self._handshaken = False
        self._paused = False
        self._closing = False
        self._raw_eof = False
        self._eof_delivered = False
        self.raw_side = _RawSide(self)

    # -- from the raw transport ---------------------------------------------------------

    def received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._handshaken and not self._handshake():
            return
        self._deliver()

    def raw_eof(self) -> None:
        self._raw_eof = True
        if not self._handshaken:
            self._fail(ConnectionResetError("the client closed during the TLS handshake"))
            return
        self._deliver()

    def raw_lost(self, exc: BaseException | None) -> None:
        self._closing = True
        protocol = self._protocol
        if protocol is not None:
            protocol.connection_lost(cast(Exception | None, exc))
        else:
            self._closed(exc)

    def raw_pause_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.pause_writing()

    def raw_resume_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.resume_writing()

    # -- TLS ----------------------------------------------------------------------------

    def _handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as exc:
            self._flush()  # the alert that tells the client why
            self._fail(exc)
            return False
        self._handshaken = True
        self._flush()
        self._on_handshake(self)
        return True

    def _deliver(self) -> None:
        """Hand the application what can be decrypted, until it pauses or nothing is left."""
        while not self._paused and not self._closing:
            protocol = self._protocol  # read each time: an upgrade may replace it
            if protocol is None:
                break
            buffer = read_buffer()  # read into, not a fresh object per read (buffer.py)
            try:
                # Given a buffer, read returns the count (typeshed says bytes, for bytearray).
                size = cast(int, self._ssl.read(len(buffer), cast(bytearray, buffer)))
            except ssl.SSLWantReadError:
                if self._raw_eof:
                    self._deliver_eof(protocol)  # EOF without close_notify
                break
            except ssl.SSLZeroReturnError:
                self._deliver_eof(protocol)
                break
            except ssl.SSLError:
                self.abort()  # a record that does not decrypt: nothing after it can be trusted
                break
            if not size:  # close_notify
                self._deliver_eof(protocol)
                break
            cast(asyncio.Protocol, protocol).data_received(bytes(buffer[:size]))
        self._flush()  # TLS 1.3 session tickets and key updates go out after reads

    def _deliver_eof(self, protocol: asyncio.BaseProtocol) -> None:
        if self._eof_delivered:
            return
        self._eof_delivered = True
        if not cast(asyncio.Protocol, protocol).eof_received():
            self.close()

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._raw.write(self._outgoing.read())

    def _fail(self, exc: BaseException) -> None:
        self._closing = True
        self._raw.close()
        self._closed(exc)

    def _closed(self, exc: BaseException | None) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(exc)

    # -- the transport the application sees ---------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[self._ssl.write(view) :]
        except ssl.SSLError:
            self.abort()
            return
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._handshaken:
            # unwrap() puts our close_notify in the outgoing BIO; the client's is not waited for.
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._raw.resume_reading()
            # Plaintext may be waiting inside the SSLObject; deliver it on the next turn, as
            # a transport delivers data, never from inside the caller.
            self._loop.call_soon(self._deliver)

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return False  # TLS has close_notify instead, and that closes both ways

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._ssl.context
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "compression":
            return self._ssl.compression()
        return self._raw.get_extra_info(name, default)


class _RawSide(BufferedReads):
    """The raw transport's protocol: everything goes to the BIOTransport (buffered reads, so
    that asyncio's loop does not make a 256 KiB object per read)."""

    __slots__ = ("_tls",)

    def __init__(self, tls: BIOTransport) -> None:
        self._tls = tls

    def data_received(self, data: bytes) -> None:
        self._tls.received(data)

    def eof_received(self) -> bool:
        self._tls.raw_eof()
        return True  # the response may still have to be written; the application closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._tls.raw_lost(exc)

    def pause_writing(self) -> None:
        self._tls.raw_pause_writing()

    def resume_writing(self) -> None:
        self._tls.raw_resume_writing()
