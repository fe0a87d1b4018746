"""permessage-deflate (RFC 7692) for the server side, bounded: wsproto's, with two repairs.

wsproto inflates each read whole, so a few kilobytes of deflate could become gigabytes in one
step (a compression bomb); and it forgets that a message is compressed when a control frame
arrives between two of its fragments, handing the application the rest still compressed. The
subclass below fixes both, through the Extension hooks wsproto calls for every frame; it reads
three private attributes of PerMessageDeflate, which is why the ws extra pins wsproto below 2.
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

__all__ = ["BoundedDeflate"]


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that never inflates a message past `max_size` bytes.

    Each step inflates at most what the message may still grow by, plus one byte: that byte
    fails the connection with 1009 (message too big).
    """

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self._max_size = max_size
        self._inflated = 0
        self._control = False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        self._control = opcode.iscontrol()
        if self._control:
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(False, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._control or not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        allowance = self._max_size - self._inflated
        try:
            inflated = self._decompressor.decompress(data, allowance + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(inflated)
        if self._inflated > self._max_size:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._control:
            return None
        result = super().frame_inbound_complete(proto, fin)
        if isinstance(result, bytes) and self._inflated + len(result) > self._max_size:
            return CloseReason.MESSAGE_TOO_BIG
        if fin:
            self._inflated = 0
        return result
