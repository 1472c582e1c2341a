"""Frame header, codec registry and the byte reader/writer every codec uses.

A frame is ``version:u8 | type:u8 | body``. Each message type is a frozen
dataclass registered here with a one-byte ``TYPE`` and two methods,
``encode_body() -> bytes`` and ``decode_body(Reader) -> Self``.

Invariants (DESIGN.md §3 "Wire format"):
- Decoders check lengths before they read, and ``decode_frame`` lets only
  ``DecodeError`` (or its subclass ``UnknownFrameType``) escape, whatever the bytes.
- No allocation is sized by a length a peer declared without that many bytes
  being present.
- Every frame is at most ``MAX_FRAME_SIZE`` bytes: room for a 64 KiB data
  superpacket (DESIGN.md §4) plus headers. Each type may set a smaller cap.
- Optional fields travel as TLVs (``type:u8 | len:u16 | value``); unknown TLV
  types are skipped, so old nodes read new frames.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Iterator, TypeVar

from .errors import DecodeError, LocalProtocolError, UnknownFrameType

VERSION = 1
HEADER_SIZE = 2
MAX_SUPERPACKET = 65_536
MAX_FRAME_SIZE = MAX_SUPERPACKET + 1_024

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_F64 = struct.Struct("!d")


class Reader:
    """Bounds-checked reads over a byte buffer; every failure is a ``DecodeError``."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self._buf = memoryview(buf)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def take(self, n: int) -> bytes:
        pos = self._pos
        if n < 0 or pos + n > len(self._buf):
            raise DecodeError(f"truncated: need {n} bytes, have {self.remaining}")
        self._pos = pos + n
        return bytes(self._buf[pos : pos + n])

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        """Several fixed-width fields at once (hot decoders use one ``Struct``)."""
        pos = self._pos
        if pos + st.size > len(self._buf):
            raise DecodeError(f"truncated: need {st.size} bytes, have {self.remaining}")
        self._pos = pos + st.size
        return st.unpack_from(self._buf, pos)

    def _unpack(self, st: struct.Struct) -> Any:
        return self.unpack(st)[0]

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def f64(self) -> float:
        return self._unpack(_F64)

    def bytes8(self) -> bytes:
        """Bytes with a u8 length prefix."""
        return self.take(self.u8())

    def bytes16(self) -> bytes:
        """Bytes with a u16 length prefix."""
        return self.take(self.u16())

    def text8(self) -> str:
        raw = self.bytes8()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("text field is not UTF-8") from exc

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def tlvs(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(type, value)`` for every TLV left in the buffer."""
        while self.remaining:
            t = self.u8()
            yield t, self.bytes16()

    def end(self) -> None:
        """Refuse trailing bytes after the last field."""
        if self.remaining:
            raise DecodeError(f"{self.remaining} trailing bytes")


class Writer:
    """Appends fixed-width big-endian fields to a bytearray."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> Writer:
        self.buf += _U8.pack(v)
        return self

    def u16(self, v: int) -> Writer:
        self.buf += _U16.pack(v)
        return self

    def u32(self, v: int) -> Writer:
        self.buf += _U32.pack(v)
        return self

    def u64(self, v: int) -> Writer:
        self.buf += _U64.pack(v)
        return self

    def f64(self, v: float) -> Writer:
        self.buf += _F64.pack(v)
        return self

    def raw(self, b: bytes) -> Writer:
        self.buf += b
        return self

    def bytes8(self, b: bytes) -> Writer:
        if len(b) > 0xFF:
            raise LocalProtocolError(f"field of {len(b)} bytes exceeds u8 length")
        return self.u8(len(b)).raw(b)

    def bytes16(self, b: bytes) -> Writer:
        if len(b) > 0xFFFF:
            raise LocalProtocolError(f"field of {len(b)} bytes exceeds u16 length")
        return self.u16(len(b)).raw(b)

    def text8(self, s: str) -> Writer:
        return self.bytes8(s.encode("utf-8"))

    def tlv(self, t: int, value: bytes) -> Writer:
        return self.u8(t).bytes16(value)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class Message:
    """Base of wire messages. Subclasses are frozen dataclasses with:

    - ``TYPE``: the frame type byte, unique across the registry;
    - ``MAX_SIZE``: the largest encoded frame of this type (defaults to the frame cap);
    - ``encode_body()`` and ``decode_body(reader)``.
    """

    TYPE: ClassVar[int]
    MAX_SIZE: ClassVar[int] = MAX_FRAME_SIZE

    def encode_body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, r: Reader) -> Message:
        raise NotImplementedError


M = TypeVar("M", bound=type[Message])
_REGISTRY: dict[int, type[Message]] = {}


def register(cls: M) -> M:
    """Class decorator: add a message type to the frame registry."""
    t = cls.TYPE
    if not 0 <= t <= 0xFF:
        raise LocalProtocolError(f"frame type {t} out of range")
    if t in _REGISTRY and _REGISTRY[t] is not cls:
        raise LocalProtocolError(f"frame type 0x{t:02x} already used by {_REGISTRY[t].__name__}")
    _REGISTRY[t] = cls
    return cls


def registered_types() -> dict[int, type[Message]]:
    return dict(_REGISTRY)


def encode_frame(msg: Message) -> bytes:
    """Header plus body; refuses to build a frame over the type's size cap."""
    frame = bytes((VERSION, msg.TYPE)) + msg.encode_body()
    if len(frame) > type(msg).MAX_SIZE:
        raise LocalProtocolError(
            f"{type(msg).__name__} frame of {len(frame)} bytes exceeds cap {type(msg).MAX_SIZE}"
        )
    return frame


def decode_frame(data: bytes | memoryview) -> Message:
    """Parse one frame. Raises ``DecodeError`` (or ``UnknownFrameType``) only."""
    n = len(data)
    if n < HEADER_SIZE:
        raise DecodeError(f"frame of {n} bytes is shorter than the header")
    if n > MAX_FRAME_SIZE:
        raise DecodeError(f"frame of {n} bytes exceeds cap {MAX_FRAME_SIZE}")
    version, ftype = data[0], data[1]
    if version != VERSION:
        raise DecodeError(f"unsupported wire version {version}")
    cls = _REGISTRY.get(ftype)
    if cls is None:
        raise UnknownFrameType(ftype)
    if n > cls.MAX_SIZE:
        raise DecodeError(f"{cls.__name__} frame of {n} bytes exceeds cap {cls.MAX_SIZE}")
    r = Reader(memoryview(data)[HEADER_SIZE:])
    try:
        msg = cls.decode_body(r)
    except DecodeError:
        raise
    except (struct.error, ValueError, TypeError, IndexError, LocalProtocolError) as exc:
        # A decoder that missed a check, or a field value the dataclass refused (out of
        # range: LocalProtocolError from its __post_init__): the bytes are the peer's, so
        # it is still the peer's fault, and the reader of the frame must not crash.
        raise DecodeError(f"bad {cls.__name__}: {exc}") from exc
    return msg
