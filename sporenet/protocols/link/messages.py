"""Link-control frames (types 0x01-0x05): hello, hello proof, probe, probe ack, close.

Layouts (after the two-byte frame header of ``wire.py``; integers big-endian):

- ``Hello`` 0x01: ``public_key[32] | nonce[16] | TLV*``. TLV 1 = listen endpoint
  (UTF-8, e.g. ``tcp://127.0.0.1:7001``), TLV 2 = node name (UTF-8, at most 64
  bytes). Both optional; an empty field is not sent. Unknown TLVs are skipped.
- ``HelloProof`` 0x02: ``signature[64]`` over ``hello_transcript(...)``.
- ``Probe`` 0x03 / ``ProbeAck`` 0x04: ``seq:u32``.
- ``Close`` 0x05: ``code:u8 | reason:text8``.

Invariants: decoders check every length before reading and raise only
``DecodeError``; constructors refuse out-of-range fields with
``LocalProtocolError`` (our caller's bug), so decoders validate before they
construct.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from .. import wire
from ..errors import DecodeError, LocalProtocolError
from ..identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE

NONCE_SIZE = 16
MAX_NAME_BYTES = 64
TLV_ENDPOINT = 1
TLV_NAME = 2
TRANSCRIPT_LABEL = b"sporenet-link-v1\0"
MAX_REASON_BYTES = 0xFF
_U32_MAX = 0xFFFF_FFFF


class CloseCode(enum.IntEnum):
    """Why a link was closed. Unknown codes from newer peers decode as plain ints."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    AUTH_FAILED = 2
    DUPLICATE = 3
    SELF_CONNECT = 4
    DEAD = 5
    SHUTDOWN = 6
    HANDSHAKE_TIMEOUT = 7


def hello_transcript(signer_pub: bytes, signer_nonce: bytes,
                     receiver_pub: bytes, receiver_nonce: bytes) -> bytes:
    """What a ``HelloProof`` signs.

    The receiver's fresh nonce comes first: a proof only verifies against the
    challenge of the session it was made for, so a recorded proof cannot be
    replayed on another connection. Both keys are bound so a proof made for one
    receiver is useless to another.
    """
    return TRANSCRIPT_LABEL + receiver_nonce + signer_nonce + receiver_pub + signer_pub


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not UTF-8") from exc


def _need(raw: bytes, size: int, what: str) -> bytes:
    if len(raw) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def _check_u32(v: int, what: str) -> None:
    if not 0 <= v <= _U32_MAX:
        raise LocalProtocolError(f"{what} {v} out of u32 range")


@wire.register
@dataclass(frozen=True, slots=True)
class Hello(wire.Message):
    TYPE: ClassVar[int] = 0x01
    MAX_SIZE: ClassVar[int] = 1024

    public_key: bytes
    nonce: bytes
    endpoint: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        _need(self.public_key, PUBLIC_KEY_SIZE, "public key")
        _need(self.nonce, NONCE_SIZE, "nonce")
        if len(self.name.encode("utf-8")) > MAX_NAME_BYTES:
            raise LocalProtocolError(f"node name longer than {MAX_NAME_BYTES} bytes")

    def encode_body(self) -> bytes:
        w = wire.Writer().raw(self.public_key).raw(self.nonce)
        if self.endpoint:
            w.tlv(TLV_ENDPOINT, self.endpoint.encode("utf-8"))
        if self.name:
            w.tlv(TLV_NAME, self.name.encode("utf-8"))
        return w.getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> Hello:
        public_key = r.take(PUBLIC_KEY_SIZE)
        nonce = r.take(NONCE_SIZE)
        fields: dict[int, str] = {}
        for t, value in r.tlvs():
            if t not in (TLV_ENDPOINT, TLV_NAME):
                continue  # a newer peer's option: skip, do not fail (DESIGN.md §3)
            if t in fields:
                raise DecodeError(f"hello TLV {t} repeated")
            fields[t] = _utf8(value, f"hello TLV {t}")
        name = fields.get(TLV_NAME, "")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise DecodeError(f"node name longer than {MAX_NAME_BYTES} bytes")
        return cls(public_key, nonce, fields.get(TLV_ENDPOINT, ""), name)


@wire.register
@dataclass(frozen=True, slots=True)
class HelloProof(wire.Message):
    TYPE: ClassVar[int] = 0x02
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + SIGNATURE_SIZE

    signature: bytes

    def __post_init__(self) -> None:
        _need(self.signature, SIGNATURE_SIZE, "signature")

    def encode_body(self) -> bytes:
        return self.signature

    @classmethod
    def decode_body(cls, r: wire.Reader) -> HelloProof:
        sig = r.take(SIGNATURE_SIZE)
        r.end()
        return cls(sig)


@wire.register
@dataclass(frozen=True, slots=True)
class Probe(wire.Message):
    TYPE: ClassVar[int] = 0x03
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + 4

    seq: int

    def __post_init__(self) -> None:
        _check_u32(self.seq, "probe seq")

    def encode_body(self) -> bytes:
        return wire.Writer().u32(self.seq).getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> Probe:
        seq = r.u32()
        r.end()
        return cls(seq)


@wire.register
@dataclass(frozen=True, slots=True)
class ProbeAck(wire.Message):
    TYPE: ClassVar[int] = 0x04
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + 4

    seq: int

    def __post_init__(self) -> None:
        _check_u32(self.seq, "probe ack seq")

    def encode_body(self) -> bytes:
        return wire.Writer().u32(self.seq).getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> ProbeAck:
        seq = r.u32()
        r.end()
        return cls(seq)


@wire.register
@dataclass(frozen=True, slots=True)
class Close(wire.Message):
    """The last frame on a connection. ``code`` is a ``CloseCode`` when known."""

    TYPE: ClassVar[int] = 0x05
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + 1 + 1 + MAX_REASON_BYTES

    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFF:
            raise LocalProtocolError(f"close code {self.code} out of u8 range")
        if len(self.reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise LocalProtocolError(f"close reason longer than {MAX_REASON_BYTES} bytes")

    def encode_body(self) -> bytes:
        return wire.Writer().u8(self.code).text8(self.reason).getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> Close:
        raw_code = r.u8()
        reason = r.text8()
        r.end()
        code: int = CloseCode(raw_code) if raw_code in CloseCode._value2member_map_ else raw_code
        return cls(code, reason)


LINK_CONTROL_TYPES = (Hello, HelloProof, Close)
"""Frames the link table consumes itself; every other frame is delivered upward."""
