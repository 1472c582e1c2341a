"""Length-prefixed stream framing, sans-IO: ``len:u32 (big-endian) | frame``.

Stream carriers (TCP, and later TLS or WebSocket-over-TCP) cut their byte stream
into frames with this codec; datagram carriers do not need it.

Driven by ``FrameDecoder.feed(data)`` with whatever bytes the stream delivered;
it returns the frames completed so far, in order.

Invariants:
- A declared length of 0 or above ``max_frame`` raises ``DecodeError`` as soon as
  the four prefix bytes are in, before any of the body is buffered. The decoder
  never allocates by a length the peer declared: it only holds bytes that
  actually arrived (at most one partial frame plus the last chunk fed).
- After a ``DecodeError`` the decoder is dead: every later ``feed`` raises, since
  the stream has lost its frame boundaries for good.
- Frames are never empty: a zero prefix is a fault, so ``encode_length_prefixed``
  refuses an empty frame (``LocalProtocolError``).
"""

from __future__ import annotations

import struct

from ..errors import DecodeError, LocalProtocolError
from ..wire import MAX_FRAME_SIZE

PREFIX_SIZE = 4
_PREFIX = struct.Struct("!I")


def encode_prefix(length: int, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    """The 4-byte prefix for a frame of ``length`` bytes (lets writers skip a copy)."""
    if not 0 < length <= max_frame:
        raise LocalProtocolError(f"frame of {length} bytes outside 1..{max_frame}")
    return _PREFIX.pack(length)


def encode_length_prefixed(frame: bytes, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    """``u32 big-endian length | frame``; refuses empty and oversize frames."""
    return encode_prefix(len(frame), max_frame) + frame


class FrameDecoder:
    """Reassembles length-prefixed frames from arbitrary chunks of a byte stream.

    Driven by ``feed(data) -> list[bytes]``. ``buffered`` tells how many bytes of
    an unfinished frame are held (non-zero at end of stream means a truncated frame).
    """

    __slots__ = ("_buf", "_max", "_error")

    def __init__(self, max_frame: int = MAX_FRAME_SIZE) -> None:
        if max_frame < 1:
            raise LocalProtocolError(f"max_frame must be positive, not {max_frame}")
        self._buf = bytearray()
        self._max = max_frame
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def dead(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add stream bytes; return every frame they complete. Raises ``DecodeError``."""
        if self._error is not None:
            raise DecodeError(f"decoder is dead after an earlier error: {self._error}")
        if self._buf:
            self._buf += data
            src: bytes | bytearray | memoryview = self._buf
        else:
            src = data  # fast path: parse the caller's chunk without copying it first
        frames, pos = self._parse(src)
        if src is self._buf:
            del self._buf[:pos]
        else:
            self._buf += memoryview(data)[pos:]
        return frames

    def _parse(self, src: bytes | bytearray | memoryview) -> tuple[list[bytes], int]:
        frames: list[bytes] = []
        view = memoryview(src)
        pos, end, cap = 0, len(view), self._max
        while end - pos >= PREFIX_SIZE:
            (length,) = _PREFIX.unpack_from(view, pos)
            if length == 0 or length > cap:
                self._error = (f"frame length prefix {length} outside 1..{cap}")
                self._buf = bytearray()  # drop what we held: nothing more is parsed
                raise DecodeError(self._error)
            stop = pos + PREFIX_SIZE + length
            if stop > end:
                break
            frames.append(bytes(view[pos + PREFIX_SIZE : stop]))
            pos = stop
        view.release()
        return frames, pos
