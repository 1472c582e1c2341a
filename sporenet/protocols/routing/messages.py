"""Routing frames (types 0x10-0x12): route update, seqno request, route request.

Babel (RFC 8966) adapted to the overlay: every node owns exactly one /64, derived
from its Ed25519 key (``identity.subnet_of``), so an update names its prefix by the
origin's public key, and the origin signs what it alone may say about it.

Layouts (after the two-byte frame header of ``wire.py``; integers big-endian):

- ``RouteUpdate`` 0x10: ``origin_pub[32] | seqno:u16 | metric:u16 | interval:u16 |
  region:text8 | flags:u8 | signature[64]``. ``metric`` 0xFFFF is infinity: a retraction.
  ``interval`` (RFC 8966 §4.6.9) is the sender's promise, in deciseconds, that it will
  send this route again within that time; the receiver holds the route 3.5 intervals.
  0 means no promise (the receiver uses its own hold time). It grows with the
  sender's table because periodic refreshes are paced (``routing/router.py``).
  ``flags`` bit 0 (``FLAG_CROSSED``): some node on the path from the origin to the
  sender (the sender included) is in a region other than the origin's. Other flag
  bits are reserved: sent as 0, kept on decode. ``region`` is at most
  ``MAX_REGION_BYTES`` UTF-8 bytes and may be empty.
  ``signature`` is the origin's Ed25519 signature over ``route_transcript(...)``:
  ``b"sporenet-route-v1\\0" | origin_pub | seqno:u16 | len(region):u8 | region``.
  Metric and flags change at every hop and are not signed. A retraction is signed
  the same way (so only the origin can retract with a seqno it has not used, and
  a relay retracting replays an origin-signed seqno).
- ``SeqnoRequest`` 0x11: ``origin_node_id[32] | seqno:u16 | hop_count:u8``: ask for
  an update of the origin with a seqno at least ``seqno`` (RFC 8966 §3.8.1.2).
- ``RouteRequest`` 0x12: empty body: ask the neighbour for a full dump of its
  selected routes (RFC 8966 §3.8.1.1 wildcard request).

Invariants: decoders check lengths before reading and raise only ``DecodeError``;
constructors refuse out-of-range fields with ``LocalProtocolError``.
Decoding does not verify the signature: the router does (and counts failures).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from .. import wire
from ..errors import DecodeError, LocalProtocolError
from ..identity import NODE_ID_SIZE, PUBLIC_KEY_SIZE, SIGNATURE_SIZE

ROUTE_LABEL = b"sporenet-route-v1\0"
INFINITY = 0xFFFF
SEQNO_MOD = 1 << 16
MAX_REGION_BYTES = 32
FLAG_CROSSED = 0x01
_SEQNO_METRIC_INTERVAL = struct.Struct("!HHH")
MAX_INTERVAL = 0xFFFF  # deciseconds: about 109 minutes


def route_transcript(origin_pub: bytes, seqno: int, region: str) -> bytes:
    """What the origin signs: its key, the seqno and its region (length-prefixed)."""
    raw = region.encode("utf-8")
    return ROUTE_LABEL + origin_pub + seqno.to_bytes(2, "big") + bytes((len(raw),)) + raw


def seqno_newer(a: int, b: int) -> bool:
    """True if seqno ``a`` is strictly newer than ``b`` modulo 2^16 (RFC 8966 §3.2.1)."""
    return 0 < (a - b) % SEQNO_MOD < SEQNO_MOD // 2


def seqno_ge(a: int, b: int) -> bool:
    return a == b or seqno_newer(a, b)


def _need(raw: bytes, size: int, what: str) -> None:
    if len(raw) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes, got {len(raw)}")


def _check(v: int, hi: int, what: str) -> None:
    if not 0 <= v <= hi:
        raise LocalProtocolError(f"{what} {v} out of range 0..{hi}")


@wire.register
@dataclass(frozen=True, slots=True)
class RouteUpdate(wire.Message):
    TYPE: ClassVar[int] = 0x10
    MAX_SIZE: ClassVar[int] = (wire.HEADER_SIZE + PUBLIC_KEY_SIZE + 2 + 2 + 2 + 1
                               + MAX_REGION_BYTES + 1 + SIGNATURE_SIZE)

    origin_pub: bytes
    seqno: int
    metric: int
    region: str
    flags: int
    signature: bytes
    interval: int = 0  # deciseconds until the sender refreshes this route; 0 = unknown

    def __post_init__(self) -> None:
        _need(self.origin_pub, PUBLIC_KEY_SIZE, "origin public key")
        _need(self.signature, SIGNATURE_SIZE, "signature")
        _check(self.seqno, 0xFFFF, "seqno")
        _check(self.metric, 0xFFFF, "metric")
        _check(self.flags, 0xFF, "flags")
        _check(self.interval, MAX_INTERVAL, "interval")
        if len(self.region.encode("utf-8")) > MAX_REGION_BYTES:
            raise LocalProtocolError(f"region longer than {MAX_REGION_BYTES} bytes")

    @property
    def is_retraction(self) -> bool:
        return self.metric == INFINITY

    @property
    def crossed(self) -> bool:
        return bool(self.flags & FLAG_CROSSED)

    def transcript(self) -> bytes:
        return route_transcript(self.origin_pub, self.seqno, self.region)

    def encode_body(self) -> bytes:
        return (wire.Writer().raw(self.origin_pub).u16(self.seqno).u16(self.metric)
                .u16(self.interval).text8(self.region).u8(self.flags).raw(self.signature)
                .getvalue())

    @classmethod
    def decode_body(cls, r: wire.Reader) -> RouteUpdate:
        origin_pub = r.take(PUBLIC_KEY_SIZE)
        seqno, metric, interval = r.unpack(_SEQNO_METRIC_INTERVAL)
        region = r.text8()
        if len(region.encode("utf-8")) > MAX_REGION_BYTES:
            raise DecodeError(f"region longer than {MAX_REGION_BYTES} bytes")
        flags = r.u8()
        signature = r.take(SIGNATURE_SIZE)
        r.end()
        return cls(origin_pub, seqno, metric, region, flags, signature, interval)


@wire.register
@dataclass(frozen=True, slots=True)
class SeqnoRequest(wire.Message):
    TYPE: ClassVar[int] = 0x11
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + NODE_ID_SIZE + 2 + 1

    origin: bytes  # node id
    seqno: int
    hop_count: int

    def __post_init__(self) -> None:
        _need(self.origin, NODE_ID_SIZE, "origin node id")
        _check(self.seqno, 0xFFFF, "seqno")
        _check(self.hop_count, 0xFF, "hop count")

    def encode_body(self) -> bytes:
        return wire.Writer().raw(self.origin).u16(self.seqno).u8(self.hop_count).getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> SeqnoRequest:
        origin = r.take(NODE_ID_SIZE)
        seqno, hop_count = r.u16(), r.u8()
        r.end()
        return cls(origin, seqno, hop_count)


@wire.register
@dataclass(frozen=True, slots=True)
class RouteRequest(wire.Message):
    TYPE: ClassVar[int] = 0x12
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE

    def encode_body(self) -> bytes:
        return b""

    @classmethod
    def decode_body(cls, r: wire.Reader) -> RouteRequest:
        r.end()
        return cls()


ROUTING_TYPES = (RouteUpdate, SeqnoRequest, RouteRequest)
