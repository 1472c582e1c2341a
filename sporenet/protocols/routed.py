"""Routed overlay packets (frame type 0x30) and the payloads they carry.

A ``Routed`` frame is what travels hop by hop between overlay nodes: the
forwarder (``overlay/forwarding.py``) reads only its header; the payload is for the
destination node. Layouts (after the two-byte frame header of ``wire.py``;
integers big-endian):

- ``Routed`` 0x30: ``src[16] | dst[16] | hop_limit:u8 | hops_taken:u8 |
  proto:u8 | payload`` (payload = the rest of the frame). ``src``/``dst`` are
  overlay IPv6 addresses, packed.

Payloads, selected by ``proto`` (``Proto``); each has ``encode() -> bytes`` and
``decode(bytes)``, which raises only ``DecodeError``:

- ``MessageChunk`` (proto 1): ``msg_id:u64 | topic:text8 | index:u16 | count:u16 |
  total_size:u32 | ttl_ms:u32 | reply_to:u64 | data`` (data = the rest).
  ``total_size`` is the length of the whole message, so a receiver can refuse
  or budget it at the first chunk. ``reply_to`` 0 means "not a reply".
- ``MessageAck`` (proto 2): ``msg_id:u64 | flags:u8 | count:u16 | bitmap``
  where bitmap holds ``ceil(count / 8)`` bytes, bit ``i`` (LSB-first inside byte
  ``i // 8``) set when chunk ``i`` arrived. Flag ``ACK_REFUSED`` (0x01): the
  receiver will never take this message (too big); the sender stops.
- ``Ping`` (proto 3) / ``Pong`` (proto 4): ``ping_id:u32 | sent_at:u64`` (sent_at
  is opaque to the responder and echoed unchanged).
- ``Unreachable`` (proto 5): ``dst[16] | reason:u8`` (the destination that could
  not be reached, ``UnreachableReason``).

- ``TraceRequest`` (proto 8) / ``TraceReply`` (proto 9): ``trace_id:u32 | flags:u8 |
  count:u8 | record * count``; a record (``TraceRecord``, 64 bytes) is
  ``address[16] | next_hop[32] | rtt_us:u32 | loss_ppm:u32 | cost_milli:u32 |
  metric:u32``: the overlay address of a node that forwarded the request, the node
  id it forwarded to, that link's smoothed RTT (microseconds), loss (parts per
  million) and cost (thousandths), and the node's route metric to the destination.
  ``UNKNOWN`` (0xFFFFFFFF) in a measurement means "not known at that node". At most
  ``MAX_TRACE_RECORDS`` records; flag ``TRACE_TRUNCATED`` (0x01): some node could
  not append its record because the list was full.

Protos 6 (session handshake, frames 0x20-0x22) and 7 (E2E data, 0x23 and the PQ frames inside
it) carry `sporenet/protocols/sessions/manager.py` frames: transit nodes forward them and cannot open them.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from . import wire
from .errors import DecodeError, LocalProtocolError
from .identity import address_of_node_id

ADDRESS_SIZE = 16
PREFIX_SIZE = 8  # a node owns the /64: the first 8 bytes of its address


def prefix_of_node(node_id: bytes) -> bytes:
    """The /64 key of the node with ``node_id`` (its address is derived from the id)."""
    return address_of_node_id(node_id).packed[:PREFIX_SIZE]
ROUTED_HEADER_SIZE = ADDRESS_SIZE * 2 + 3
MAX_ROUTED_PAYLOAD = wire.MAX_FRAME_SIZE - wire.HEADER_SIZE - ROUTED_HEADER_SIZE
MAX_TOPIC_BYTES = 0xFF
ACK_REFUSED = 0x01
_U8, _U16, _U32, _U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF
NODE_ID_SIZE = 32
MAX_TRACE_RECORDS = 64
TRACE_TRUNCATED = 0x01
UNKNOWN = _U32


class Proto(enum.IntEnum):
    """What a ``Routed`` payload is. Unknown values from newer peers stay ints."""

    MESSAGE_CHUNK = 1
    MESSAGE_ACK = 2
    PING = 3
    PONG = 4
    UNREACHABLE = 5
    SESSION_HANDSHAKE = 6
    E2E_DATA = 7
    TRACE_REQUEST = 8
    TRACE_REPLY = 9
    IP_PACKET = 10  # an IP packet from a TUN, sealed under a data keypair (datapath/keys.py)


class UnreachableReason(enum.IntEnum):
    NO_ROUTE = 1
    HOP_LIMIT_EXCEEDED = 2


def pack_address(address: ipaddress.IPv6Address | str | bytes) -> bytes:
    """16 packed bytes of an overlay address given as bytes, text or ``IPv6Address``."""
    if isinstance(address, bytes):
        if len(address) != ADDRESS_SIZE:
            raise LocalProtocolError(f"address must be {ADDRESS_SIZE} bytes, got {len(address)}")
        return address
    try:
        return ipaddress.IPv6Address(address).packed
    except ValueError as exc:
        raise LocalProtocolError(f"not an IPv6 address: {address!r}") from exc


def _need(raw: bytes, size: int, what: str) -> None:
    if not isinstance(raw, bytes) or len(raw) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes")


def _check(v: int, top: int, what: str) -> None:
    if not 0 <= v <= top:
        raise LocalProtocolError(f"{what} {v} out of range 0..{top}")


def _proto(raw: int) -> int:
    return Proto(raw) if raw in Proto._value2member_map_ else raw


@wire.register
@dataclass(frozen=True, slots=True)
class Routed(wire.Message):
    """An overlay packet forwarded hop by hop toward ``dst``."""

    TYPE: ClassVar[int] = 0x30

    src: bytes
    dst: bytes
    hop_limit: int
    hops_taken: int
    proto: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        _need(self.src, ADDRESS_SIZE, "src address")
        _need(self.dst, ADDRESS_SIZE, "dst address")
        _check(self.hop_limit, _U8, "hop limit")
        _check(self.hops_taken, _U8, "hops taken")
        _check(self.proto, _U8, "proto")
        if len(self.payload) > MAX_ROUTED_PAYLOAD:
            raise LocalProtocolError(f"routed payload of {len(self.payload)} bytes exceeds "
                                     f"{MAX_ROUTED_PAYLOAD}")

    def encode_body(self) -> bytes:
        return (self.src + self.dst
                + bytes((self.hop_limit, self.hops_taken, self.proto)) + self.payload)

    @classmethod
    def decode_body(cls, r: wire.Reader) -> Routed:
        src = r.take(ADDRESS_SIZE)
        dst = r.take(ADDRESS_SIZE)
        hop_limit, hops_taken, proto = r.u8(), r.u8(), r.u8()
        return cls(src, dst, hop_limit, hops_taken, _proto(proto), r.rest())


class Payload:
    """Base of routed payload codecs (not frames: they ride inside ``Routed``)."""

    __slots__ = ()
    PROTO: ClassVar[int]

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _decode(cls, r: wire.Reader) -> Payload:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Payload:
        """Parse a payload; raises ``DecodeError`` only."""
        r = wire.Reader(data)
        try:
            msg = cls._decode(r)
        except DecodeError:
            raise
        except (LocalProtocolError, ValueError, TypeError, IndexError) as exc:
            raise DecodeError(f"bad {cls.__name__}: {exc}") from exc
        r.end()
        return msg


@dataclass(frozen=True, slots=True)
class MessageChunk(Payload):
    PROTO: ClassVar[int] = Proto.MESSAGE_CHUNK

    msg_id: int
    topic: str
    index: int
    count: int
    total_size: int
    ttl_ms: int
    reply_to: int = 0
    data: bytes = b""

    def __post_init__(self) -> None:
        _check(self.msg_id, _U64, "message id")
        _check(self.index, _U16, "chunk index")
        _check(self.count, _U16, "chunk count")
        if self.count == 0 or self.index >= self.count:
            raise LocalProtocolError(f"chunk index {self.index} not below count {self.count}")
        _check(self.total_size, _U32, "total size")
        if len(self.data) > self.total_size:
            raise LocalProtocolError("chunk data longer than the whole message")
        _check(self.ttl_ms, _U32, "ttl")
        _check(self.reply_to, _U64, "reply_to")
        if len(self.topic.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise LocalProtocolError(f"topic longer than {MAX_TOPIC_BYTES} bytes")

    def encode(self) -> bytes:
        return (wire.Writer().u64(self.msg_id).text8(self.topic).u16(self.index)
                .u16(self.count).u32(self.total_size).u32(self.ttl_ms).u64(self.reply_to)
                .raw(self.data).getvalue())

    @classmethod
    def _decode(cls, r: wire.Reader) -> MessageChunk:
        msg_id = r.u64()
        topic = r.text8()
        index, count, total, ttl, reply_to = r.u16(), r.u16(), r.u32(), r.u32(), r.u64()
        return cls(msg_id, topic, index, count, total, ttl, reply_to, r.rest())


@dataclass(frozen=True, slots=True)
class MessageAck(Payload):
    """Which chunks of ``msg_id`` the receiver holds (a cumulative bitmap)."""

    PROTO: ClassVar[int] = Proto.MESSAGE_ACK

    msg_id: int
    count: int
    bitmap: bytes
    flags: int = 0

    def __post_init__(self) -> None:
        _check(self.msg_id, _U64, "message id")
        _check(self.count, _U16, "chunk count")
        _check(self.flags, _U8, "flags")
        if len(self.bitmap) != (self.count + 7) // 8:
            raise LocalProtocolError(f"bitmap of {len(self.bitmap)} bytes for {self.count} chunks")
        if self.count % 8 and self.bitmap[-1] >> (self.count % 8):
            raise LocalProtocolError("bitmap has bits set past the chunk count")

    @classmethod
    def of(cls, msg_id: int, count: int, received: set[int] | frozenset[int],
           flags: int = 0) -> MessageAck:
        bm = bytearray((count + 7) // 8)
        for i in received:
            bm[i >> 3] |= 1 << (i & 7)
        return cls(msg_id, count, bytes(bm), flags)

    def received(self) -> set[int]:
        return {i for i in range(self.count) if self.bitmap[i >> 3] >> (i & 7) & 1}

    @property
    def refused(self) -> bool:
        return bool(self.flags & ACK_REFUSED)

    def encode(self) -> bytes:
        return (wire.Writer().u64(self.msg_id).u8(self.flags).u16(self.count)
                .raw(self.bitmap).getvalue())

    @classmethod
    def _decode(cls, r: wire.Reader) -> MessageAck:
        msg_id, flags, count = r.u64(), r.u8(), r.u16()
        return cls(msg_id, count, r.take((count + 7) // 8), flags)


@dataclass(frozen=True, slots=True)
class Ping(Payload):
    PROTO: ClassVar[int] = Proto.PING

    ping_id: int
    sent_at: int

    def __post_init__(self) -> None:
        _check(self.ping_id, _U32, "ping id")
        _check(self.sent_at, _U64, "sent_at")

    def encode(self) -> bytes:
        return wire.Writer().u32(self.ping_id).u64(self.sent_at).getvalue()

    @classmethod
    def _decode(cls, r: wire.Reader) -> Payload:
        return cls(r.u32(), r.u64())


@dataclass(frozen=True, slots=True)
class Pong(Payload):
    PROTO: ClassVar[int] = Proto.PONG

    ping_id: int
    sent_at: int

    def __post_init__(self) -> None:
        _check(self.ping_id, _U32, "ping id")
        _check(self.sent_at, _U64, "sent_at")

    def encode(self) -> bytes:
        return wire.Writer().u32(self.ping_id).u64(self.sent_at).getvalue()

    @classmethod
    def _decode(cls, r: wire.Reader) -> Payload:
        return cls(r.u32(), r.u64())


@dataclass(frozen=True, slots=True)
class Unreachable(Payload):
    """Sent back to a packet's source when its ``dst`` could not be reached."""

    PROTO: ClassVar[int] = Proto.UNREACHABLE

    dst: bytes
    reason: int

    def __post_init__(self) -> None:
        _need(self.dst, ADDRESS_SIZE, "unreachable dst")
        _check(self.reason, _U8, "reason")

    def encode(self) -> bytes:
        return self.dst + bytes((self.reason,))

    @classmethod
    def _decode(cls, r: wire.Reader) -> Unreachable:
        dst = r.take(ADDRESS_SIZE)
        raw = r.u8()
        reason = (UnreachableReason(raw) if raw in UnreachableReason._value2member_map_
                  else raw)
        return cls(dst, reason)


def _scaled(value: float | None, scale: float) -> int:
    """``value * scale`` as a u32 (clamped below ``UNKNOWN``); None -> ``UNKNOWN``."""
    if value is None or value != value:
        return UNKNOWN
    return min(UNKNOWN - 1, max(0, round(value * scale)))


def _unscaled(raw: int, scale: float) -> float | None:
    return None if raw == UNKNOWN else raw / scale


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One forwarding step of a trace, as the forwarding node saw it (fixed point on
    the wire; ``of`` builds one from floats, the properties read them back)."""

    address: bytes        # the overlay address of the node that forwarded
    next_hop: bytes       # the node id it forwarded to
    rtt_us: int = UNKNOWN
    loss_ppm: int = UNKNOWN
    cost_milli: int = UNKNOWN
    metric: int = UNKNOWN  # that node's route metric to the destination

    SIZE: ClassVar[int] = ADDRESS_SIZE + NODE_ID_SIZE + 16

    def __post_init__(self) -> None:
        _need(self.address, ADDRESS_SIZE, "trace record address")
        _need(self.next_hop, NODE_ID_SIZE, "trace record next hop")
        for v, what in ((self.rtt_us, "rtt"), (self.loss_ppm, "loss"),
                        (self.cost_milli, "cost"), (self.metric, "metric")):
            _check(v, _U32, what)
        if self.loss_ppm != UNKNOWN and self.loss_ppm > 1_000_000:
            raise LocalProtocolError(f"loss {self.loss_ppm} ppm above 100 %")

    @classmethod
    def of(cls, address: bytes, next_hop: bytes, rtt_ms: float | None = None,
           loss: float | None = None, cost: float | None = None,
           metric: int | None = None) -> TraceRecord:
        loss = None if loss is None else min(1.0, max(0.0, loss))
        return cls(address, next_hop, _scaled(rtt_ms, 1000), _scaled(loss, 1_000_000),
                   _scaled(cost, 1000), _scaled(metric, 1))

    @property
    def rtt_ms(self) -> float | None:
        return _unscaled(self.rtt_us, 1000)

    @property
    def loss(self) -> float | None:
        return _unscaled(self.loss_ppm, 1_000_000)

    @property
    def cost(self) -> float | None:
        return _unscaled(self.cost_milli, 1000)

    @property
    def route_metric(self) -> int | None:
        return None if self.metric == UNKNOWN else self.metric

    def encode(self) -> bytes:
        return (wire.Writer().raw(self.address).raw(self.next_hop).u32(self.rtt_us)
                .u32(self.loss_ppm).u32(self.cost_milli).u32(self.metric).getvalue())

    @classmethod
    def read(cls, r: wire.Reader) -> TraceRecord:
        address, next_hop = r.take(ADDRESS_SIZE), r.take(NODE_ID_SIZE)
        return cls(address, next_hop, r.u32(), r.u32(), r.u32(), r.u32())


@dataclass(frozen=True, slots=True)
class _Trace(Payload):
    trace_id: int
    records: tuple[TraceRecord, ...] = ()
    flags: int = 0

    def __post_init__(self) -> None:
        _check(self.trace_id, _U32, "trace id")
        _check(self.flags, _U8, "flags")
        if len(self.records) > MAX_TRACE_RECORDS:
            raise LocalProtocolError(f"{len(self.records)} trace records exceed "
                                     f"{MAX_TRACE_RECORDS}")
        if not all(isinstance(x, TraceRecord) for x in self.records):
            raise LocalProtocolError("trace records must be TraceRecord")

    @property
    def truncated(self) -> bool:
        return bool(self.flags & TRACE_TRUNCATED)

    def encode(self) -> bytes:
        return (wire.Writer().u32(self.trace_id).u8(self.flags).u8(len(self.records))
                .raw(b"".join(x.encode() for x in self.records)).getvalue())

    @classmethod
    def _decode(cls, r: wire.Reader) -> Payload:
        trace_id, flags, count = r.u32(), r.u8(), r.u8()
        if count > MAX_TRACE_RECORDS:
            raise DecodeError(f"{count} trace records exceed {MAX_TRACE_RECORDS}")
        return cls(trace_id, tuple(TraceRecord.read(r) for _ in range(count)), flags)


@dataclass(frozen=True, slots=True)
class TraceRequest(_Trace):
    """Asks ``dst`` for the path: every forwarding node appends its ``TraceRecord``."""

    PROTO: ClassVar[int] = Proto.TRACE_REQUEST


@dataclass(frozen=True, slots=True)
class TraceReply(_Trace):
    """The destination's answer: the request's records, unchanged, sent back."""

    PROTO: ClassVar[int] = Proto.TRACE_REPLY


PAYLOADS: dict[int, type[Payload]] = {
    c.PROTO: c for c in (MessageChunk, MessageAck, Ping, Pong, Unreachable, TraceRequest,
                         TraceReply)
}


def decode_payload(proto: int, data: bytes | memoryview) -> Payload:
    """The payload codec for ``proto``; ``DecodeError`` for unknown protos or bad bytes."""
    cls = PAYLOADS.get(proto)
    if cls is None:
        raise DecodeError(f"no payload codec for proto {proto}")
    return cls.decode(data)
