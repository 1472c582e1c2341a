"""End-to-end session handshake frames (types 0x20-0x22): the WireGuard messages.

Layouts (after the two-byte frame header ``version:u8 | type:u8`` of ``wire.py``;
integers big-endian; sizes from the WireGuard whitepaper §5.4, minus its 3 reserved
bytes since our header already carries the type):

- ``HandshakeInit`` 0x20 (146 B frame): ``sender_index:u32 | ephemeral[32] |
  encrypted_static[48] | encrypted_timestamp[28] | mac1[16] | mac2[16]``.
- ``HandshakeResp`` 0x21 (90 B frame): ``sender_index:u32 | receiver_index:u32 |
  ephemeral[32] | encrypted_nothing[16] | mac1[16] | mac2[16]``.
- ``CookieReply`` 0x22 (62 B frame): ``receiver_index:u32 | nonce[24] |
  encrypted_cookie[32]``.

Types 0x23-0x2f belong to the transport data and post-quantum rekey messages.

MAC spans (WireGuard §5.4.4): mac1 covers every byte of the *encoded frame* before
the mac1 field, frame header included, and mac2 every byte before mac2. Including
the header binds the version and type the way WG's macs cover its type byte, so a
mac computed for one message type never validates another.

Invariants: decoders check lengths before reading and raise only ``DecodeError``;
constructors refuse wrong-sized fields with ``LocalProtocolError``. Decoding checks
no mac and decrypts nothing: ``sessions/noise.py`` and ``sessions/cookie.py`` do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from .. import wire
from ..errors import LocalProtocolError

KEY_SIZE = 32
TAG_SIZE = 16
MAC_SIZE = 16
TIMESTAMP_SIZE = 12
COOKIE_NONCE_SIZE = 24
ENCRYPTED_STATIC_SIZE = KEY_SIZE + TAG_SIZE
ENCRYPTED_TIMESTAMP_SIZE = TIMESTAMP_SIZE + TAG_SIZE
ENCRYPTED_COOKIE_SIZE = MAC_SIZE + TAG_SIZE
ZERO_MAC = bytes(MAC_SIZE)
_U32 = 0xFFFF_FFFF
_INDEX = struct.Struct("!I")
_TWO_INDICES = struct.Struct("!II")


def _need(raw: bytes, size: int, what: str) -> None:
    if not isinstance(raw, bytes) or len(raw) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes")


def _check_index(v: int, what: str) -> None:
    if not 0 <= v <= _U32:
        raise LocalProtocolError(f"{what} {v} out of range 0..{_U32}")


class _Macced:
    """Mixin for the two handshake messages: both end in ``mac1 | mac2``."""

    __slots__ = ()

    def mac1_span(self) -> bytes:
        """Frame bytes that mac1 covers (everything before the mac1 field)."""
        return wire.encode_frame(self)[: -2 * MAC_SIZE]  # type: ignore[arg-type]

    def mac2_span(self) -> bytes:
        """Frame bytes that mac2 covers (everything before the mac2 field)."""
        return wire.encode_frame(self)[:-MAC_SIZE]  # type: ignore[arg-type]


@wire.register
@dataclass(frozen=True, slots=True)
class HandshakeInit(_Macced, wire.Message):
    """Noise IK message 1: ``e, es, s, ss`` with an encrypted TAI64N timestamp."""

    TYPE: ClassVar[int] = 0x20
    SIZE: ClassVar[int] = (wire.HEADER_SIZE + 4 + KEY_SIZE + ENCRYPTED_STATIC_SIZE
                           + ENCRYPTED_TIMESTAMP_SIZE + 2 * MAC_SIZE)
    MAX_SIZE: ClassVar[int] = SIZE

    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = ZERO_MAC
    mac2: bytes = ZERO_MAC

    def __post_init__(self) -> None:
        _check_index(self.sender_index, "sender index")
        _need(self.ephemeral, KEY_SIZE, "ephemeral")
        _need(self.encrypted_static, ENCRYPTED_STATIC_SIZE, "encrypted static")
        _need(self.encrypted_timestamp, ENCRYPTED_TIMESTAMP_SIZE, "encrypted timestamp")
        _need(self.mac1, MAC_SIZE, "mac1")
        _need(self.mac2, MAC_SIZE, "mac2")

    def encode_body(self) -> bytes:
        return (_INDEX.pack(self.sender_index) + self.ephemeral + self.encrypted_static
                + self.encrypted_timestamp + self.mac1 + self.mac2)

    @classmethod
    def decode_body(cls, r: wire.Reader) -> HandshakeInit:
        (sender_index,) = r.unpack(_INDEX)
        msg = cls(sender_index, r.take(KEY_SIZE), r.take(ENCRYPTED_STATIC_SIZE),
                  r.take(ENCRYPTED_TIMESTAMP_SIZE), r.take(MAC_SIZE), r.take(MAC_SIZE))
        r.end()
        return msg


@wire.register
@dataclass(frozen=True, slots=True)
class HandshakeResp(_Macced, wire.Message):
    """Noise IK message 2: ``e, ee, se, psk`` with an empty encrypted payload."""

    TYPE: ClassVar[int] = 0x21
    SIZE: ClassVar[int] = wire.HEADER_SIZE + 4 + 4 + KEY_SIZE + TAG_SIZE + 2 * MAC_SIZE
    MAX_SIZE: ClassVar[int] = SIZE

    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = ZERO_MAC
    mac2: bytes = ZERO_MAC

    def __post_init__(self) -> None:
        _check_index(self.sender_index, "sender index")
        _check_index(self.receiver_index, "receiver index")
        _need(self.ephemeral, KEY_SIZE, "ephemeral")
        _need(self.encrypted_nothing, TAG_SIZE, "encrypted nothing")
        _need(self.mac1, MAC_SIZE, "mac1")
        _need(self.mac2, MAC_SIZE, "mac2")

    def encode_body(self) -> bytes:
        return (_TWO_INDICES.pack(self.sender_index, self.receiver_index) + self.ephemeral
                + self.encrypted_nothing + self.mac1 + self.mac2)

    @classmethod
    def decode_body(cls, r: wire.Reader) -> HandshakeResp:
        sender_index, receiver_index = r.unpack(_TWO_INDICES)
        msg = cls(sender_index, receiver_index, r.take(KEY_SIZE), r.take(TAG_SIZE),
                  r.take(MAC_SIZE), r.take(MAC_SIZE))
        r.end()
        return msg


@wire.register
@dataclass(frozen=True, slots=True)
class CookieReply(wire.Message):
    """Sent instead of a response under load: the cookie the next mac2 must use."""

    TYPE: ClassVar[int] = 0x22
    SIZE: ClassVar[int] = wire.HEADER_SIZE + 4 + COOKIE_NONCE_SIZE + ENCRYPTED_COOKIE_SIZE
    MAX_SIZE: ClassVar[int] = SIZE

    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def __post_init__(self) -> None:
        _check_index(self.receiver_index, "receiver index")
        _need(self.nonce, COOKIE_NONCE_SIZE, "cookie nonce")
        _need(self.encrypted_cookie, ENCRYPTED_COOKIE_SIZE, "encrypted cookie")

    def encode_body(self) -> bytes:
        return _INDEX.pack(self.receiver_index) + self.nonce + self.encrypted_cookie

    @classmethod
    def decode_body(cls, r: wire.Reader) -> CookieReply:
        (receiver_index,) = r.unpack(_INDEX)
        msg = cls(receiver_index, r.take(COOKIE_NONCE_SIZE), r.take(ENCRYPTED_COOKIE_SIZE))
        r.end()
        return msg


SESSION_TYPES = (HandshakeInit, HandshakeResp, CookieReply)
