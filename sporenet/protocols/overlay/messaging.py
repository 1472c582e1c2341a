"""Overlay messages and ping, in the manner of Mycelium's message subsystem.

A ``MessageEndpoint`` per node sends and receives whole messages (bytes on a
topic) to and from overlay addresses. It emits ``SendPacket(dst, proto, payload)``
actions; the executor hands them to ``Forwarder.originate`` and feeds local
deliveries back as ``PacketReceived`` (``PacketReceived.from_routed``).

Sending: the message is cut into chunks of ``chunk_size`` bytes; at most
``max_in_flight`` unacknowledged chunks are out at a time. Every chunk carries the
time left to the deadline (``ttl_ms``). Unacked chunks are resent after
``retransmit`` seconds, the interval doubling (``backoff``) up to
``max_retransmit`` and falling back to ``retransmit`` whenever an ack brings
progress. All chunks acked: ``MessageDelivered``. Deadline reached first, or the
receiver refused the message: ``MessageFailed``.

Receiving: every chunk is answered by a ``MessageAck`` carrying the bitmap of all
chunks held, so a lost ack is repaired by the next one and a duplicate chunk is
re-acked but stored once. A finished message is remembered (per source and
message id) until its sender's deadline has passed, so a late retransmission
never delivers it twice.

Bounds (all configurable):
- a message is at most ``max_message`` (1 MiB); ``send`` refuses bigger with
  ``LocalProtocolError``, a receiver answers a bigger one with a refusing ack;
- per source, incomplete messages may reserve at most ``max_reassembly_per_peer``
  (256 KiB) of declared size, except that a single message up to ``max_message``
  is always admitted when nothing else from that source is being reassembled;
  across all sources at most ``max_reassembly_total`` (8 MiB). A chunk over budget
  is dropped unacked (counted); its sender retries;
- reassembly state expires with the sender's ttl (at most ``max_age`` seconds).

Topics: ``allow(topic, senders)`` restricts a topic to a set of source addresses
(or networks); ``allow(topic, None)`` opens it to everyone. Chunks on a restricted
topic from anyone else are dropped and counted (``refused_sender``), never acked.
Topics with no rule follow ``default_accept``.

Replies: ``MessageReceived`` carries the source address and message id;
``reply(received, data, now)`` sends back with ``reply_to`` set, and the original
sender sees ``MessageReceived(..., reply_to=<its msg id>)``.

Ping: ``ping(dst, now)`` sends an overlay echo request; the answer gives
``PingResult`` (RTT in seconds, hops the pong took) or ``PingFailed`` on timeout
or an unreachable notice.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Iterable

from ..base import Action, Event
from ..errors import DecodeError, LocalProtocolError
from ..identity import Identity
from ..routed import (MAX_ROUTED_PAYLOAD, MAX_TOPIC_BYTES, ACK_REFUSED, MessageAck,
                               MessageChunk, PAYLOADS, Ping, Pong, Proto, Routed,
                               Unreachable, decode_payload)

Address = ipaddress.IPv6Address
AddressLike = ipaddress.IPv6Address | str | bytes
KIB = 1024
MIB = 1024 * KIB
_CHUNK_OVERHEAD = 8 + 1 + MAX_TOPIC_BYTES + 2 + 2 + 4 + 4 + 8


def _addr(a: AddressLike) -> Address:
    try:
        return ipaddress.IPv6Address(a)
    except ValueError as exc:
        raise LocalProtocolError(f"not an IPv6 address: {a!r}") from exc


# -- events and actions --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketReceived(Event):
    """A routed packet for this node arrived (the forwarder's ``DeliverLocal``)."""

    src_address: Address
    proto: int
    payload: bytes
    hops_taken: int = 0

    @classmethod
    def from_routed(cls, packet: Routed) -> PacketReceived:
        return cls(Address(packet.src), packet.proto, packet.payload, packet.hops_taken)


@dataclass(frozen=True, slots=True)
class SendPacket(Action):
    """Route ``payload`` to ``dst_address`` (``Forwarder.originate``)."""

    dst_address: Address
    proto: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class MessageReceived(Action):
    src_address: Address
    topic: str
    data: bytes
    msg_id: int
    reply_to: int = 0


@dataclass(frozen=True, slots=True)
class MessageDelivered(Action):
    msg_id: int


@dataclass(frozen=True, slots=True)
class MessageFailed(Action):
    msg_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PingResult(Action):
    ping_id: int
    dst_address: Address
    rtt: float
    hops: int


@dataclass(frozen=True, slots=True)
class PingFailed(Action):
    ping_id: int
    dst_address: Address
    reason: str


@dataclass(frozen=True, slots=True)
class DestinationUnreachable(Action):
    """A router reported ``dst_address`` unreachable (advisory; sends keep retrying)."""

    dst_address: Address
    reason: int
    reported_by: Address


# -- state -------------------------------------------------------------------


class _Out:
    __slots__ = ("dst", "topic", "data", "count", "reply_to", "deadline", "acked", "sent",
                 "next_new", "rto", "next_tx")

    def __init__(self, dst: Address, topic: str, data: bytes, count: int, reply_to: int,
                 deadline: float, rto: float) -> None:
        self.dst, self.topic, self.data, self.count = dst, topic, data, count
        self.reply_to, self.deadline, self.rto = reply_to, deadline, rto
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.next_new = 0
        self.next_tx = deadline


class _In:
    __slots__ = ("topic", "count", "total", "reply_to", "chunks", "held", "expires")

    def __init__(self, c: MessageChunk, expires: float) -> None:
        self.topic, self.count, self.reply_to = c.topic, c.count, c.reply_to
        self.total = c.total_size
        self.chunks: dict[int, bytes] = {}
        self.held = 0
        self.expires = expires


class MessageEndpoint:
    """Sans-IO message and ping endpoint of one node; see the module docstring."""

    def __init__(self, identity: Identity | AddressLike, *, rng: random.Random,
                 chunk_size: int = 1200, retransmit: float = 0.5, backoff: float = 2.0,
                 max_retransmit: float = 4.0, max_in_flight: int = 32,
                 max_message: int = MIB, max_reassembly_per_peer: int = 256 * KIB,
                 max_reassembly_total: int = 8 * MIB, max_outgoing: int = 256,
                 max_age: float = 300.0, completed_memory: int = 4096,
                 default_accept: bool = True) -> None:
        if not 1 <= chunk_size <= MAX_ROUTED_PAYLOAD - _CHUNK_OVERHEAD:
            raise LocalProtocolError(f"chunk size {chunk_size} out of range")
        if retransmit <= 0 or backoff < 1 or max_retransmit < retransmit or max_in_flight < 1:
            raise LocalProtocolError("bad retransmission settings")
        if not 0 <= max_message <= 0xFFFF_FFFF or -(-max_message // chunk_size) > 0xFFFF:
            raise LocalProtocolError(f"max message {max_message} needs more than 65535 chunks")
        self.address = _addr(identity.address if isinstance(identity, Identity) else identity)
        self._rng = rng
        self.chunk_size = chunk_size
        self.retransmit, self.backoff, self.max_retransmit = retransmit, backoff, max_retransmit
        self.max_in_flight = max_in_flight
        self.max_message = max_message
        self.max_reassembly_per_peer = max_reassembly_per_peer
        self.max_reassembly_total = max_reassembly_total
        self.max_outgoing = max_outgoing
        self.max_age = max_age
        self.completed_memory = completed_memory
        self.default_accept = default_accept
        self.counters: Counter[str] = Counter()
        self._out: dict[int, _Out] = {}
        self._in: dict[tuple[Address, int], _In] = {}
        self._peer_bytes: Counter[Address] = Counter()
        self._total_bytes = 0
        self._done: OrderedDict[tuple[Address, int], tuple[float, int]] = OrderedDict()
        self._topics: dict[str, frozenset | None] = {}
        self._pings: dict[int, tuple[Address, float, float]] = {}

    # -- configuration -------------------------------------------------------

    def allow(self, topic: str, senders: Iterable[AddressLike | ipaddress.IPv6Network] | None
              ) -> None:
        """Accept ``topic`` only from ``senders`` (addresses or networks); None = anyone."""
        if senders is None:
            self._topics[topic] = None
            return
        rules = []
        for s in senders:
            rules.append(s if isinstance(s, ipaddress.IPv6Network) else _addr(s))
        self._topics[topic] = frozenset(rules)

    def forget_topic(self, topic: str) -> None:
        """Drop the rule for ``topic``: it follows ``default_accept`` again."""
        self._topics.pop(topic, None)

    def _accepts(self, topic: str, src: Address) -> bool:
        if topic not in self._topics:
            return self.default_accept
        rules = self._topics[topic]
        if rules is None or src in rules:
            return True
        return any(isinstance(r, ipaddress.IPv6Network) and src in r for r in rules)

    # -- sending -------------------------------------------------------------

    def send(self, dst_address: AddressLike, topic: str, data: bytes, now: float,
             deadline: float = 30.0, reply_to: int = 0) -> tuple[int, list[Action]]:
        """Start sending ``data``; returns the message id and the first packets."""
        dst = _addr(dst_address)
        if len(data) > self.max_message:
            raise LocalProtocolError(f"message of {len(data)} bytes exceeds {self.max_message}")
        if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise LocalProtocolError(f"topic longer than {MAX_TOPIC_BYTES} bytes")
        if not 0 < deadline <= 0xFFFF_FFFF / 1000:
            raise LocalProtocolError(f"deadline {deadline} s out of range")
        if not 0 <= reply_to <= 0xFFFF_FFFF_FFFF_FFFF:
            raise LocalProtocolError("reply_to out of u64 range")
        if len(self._out) >= self.max_outgoing:
            raise LocalProtocolError(f"{self.max_outgoing} messages already in flight")
        msg_id = 0
        while msg_id == 0 or msg_id in self._out:
            msg_id = self._rng.getrandbits(64)
        count = max(1, -(-len(data) // self.chunk_size))
        out = _Out(dst, topic, bytes(data), count, reply_to, now + deadline, self.retransmit)
        self._out[msg_id] = out
        self.counters["messages_sent"] += 1
        actions = self._fill(msg_id, out, now)
        out.next_tx = now + out.rto
        return msg_id, actions

    def reply(self, received: MessageReceived, data: bytes, now: float,
              deadline: float = 30.0) -> tuple[int, list[Action]]:
        """Answer ``received`` on its topic, with ``reply_to`` set to its id."""
        return self.send(received.src_address, received.topic, data, now, deadline,
                         reply_to=received.msg_id)

    def _chunk(self, msg_id: int, out: _Out, i: int, now: float) -> SendPacket:
        ttl_ms = min(0xFFFF_FFFF, max(0, int((out.deadline - now) * 1000)))
        lo = i * self.chunk_size
        c = MessageChunk(msg_id, out.topic, i, out.count, len(out.data), ttl_ms, out.reply_to,
                         out.data[lo:lo + self.chunk_size])
        self.counters["chunks_sent"] += 1
        return SendPacket(out.dst, Proto.MESSAGE_CHUNK, c.encode())

    def _fill(self, msg_id: int, out: _Out, now: float) -> list[Action]:
        actions: list[Action] = []
        in_flight = len(out.sent) - len(out.acked & out.sent)
        while out.next_new < out.count and in_flight < self.max_in_flight:
            i = out.next_new
            out.next_new += 1
            if i in out.acked:
                continue
            out.sent.add(i)
            in_flight += 1
            actions.append(self._chunk(msg_id, out, i, now))
        return actions

    def _on_ack(self, src: Address, ack: MessageAck, now: float) -> list[Action]:
        out = self._out.get(ack.msg_id)
        if out is None or out.dst != src:
            self.counters["stray_acks"] += 1
            return []
        if ack.refused:
            del self._out[ack.msg_id]
            self.counters["messages_failed"] += 1
            return [MessageFailed(ack.msg_id, "refused")]
        if ack.count != out.count:
            self.counters["bad_acks"] += 1
            return []
        got = ack.received()
        progress = not got <= out.acked
        out.acked |= got
        if len(out.acked) == out.count:
            del self._out[ack.msg_id]
            self.counters["messages_delivered"] += 1
            return [MessageDelivered(ack.msg_id)]
        if not progress:
            return []
        out.rto = self.retransmit
        out.next_tx = now + out.rto
        return self._fill(ack.msg_id, out, now)

    # -- receiving -----------------------------------------------------------

    def _ack(self, src: Address, msg_id: int, count: int, got: Iterable[int],
             flags: int = 0) -> SendPacket:
        self.counters["acks_sent"] += 1
        return SendPacket(src, Proto.MESSAGE_ACK,
                          MessageAck.of(msg_id, count, set(got), flags).encode())

    def _release(self, key: tuple[Address, int], r: _In) -> None:
        self._peer_bytes[key[0]] -= r.total
        if self._peer_bytes[key[0]] <= 0:
            del self._peer_bytes[key[0]]
        self._total_bytes -= r.total

    def _on_chunk(self, src: Address, c: MessageChunk, now: float) -> list[Action]:
        if not self._accepts(c.topic, src):
            self.counters["refused_sender"] += 1
            return []
        key = (src, c.msg_id)
        done = self._done.get(key)
        if done is not None:
            self.counters["duplicate_chunks"] += 1
            return [self._ack(src, c.msg_id, done[1], range(done[1]))]
        r = self._in.get(key)
        if r is None:
            if c.total_size > self.max_message:
                self.counters["refused_too_big"] += 1
                return [self._ack(src, c.msg_id, c.count, (), ACK_REFUSED)]
            if (c.count > max(1, c.total_size)) or c.count * MAX_ROUTED_PAYLOAD < c.total_size:
                self.counters["bad_chunks"] += 1
                return []
            peer = self._peer_bytes[src]
            if ((peer and peer + c.total_size > self.max_reassembly_per_peer)
                    or self._total_bytes + c.total_size > self.max_reassembly_total):
                self.counters["reassembly_full"] += 1
                return []
            r = _In(c, now)
            self._in[key] = r
            self._peer_bytes[src] += c.total_size
            self._total_bytes += c.total_size
        elif ((c.topic, c.count, c.total_size, c.reply_to)
              != (r.topic, r.count, r.total, r.reply_to)):
            self.counters["bad_chunks"] += 1
            return []
        r.expires = now + min(self.max_age, c.ttl_ms / 1000 + self.max_retransmit)
        if c.index in r.chunks:
            self.counters["duplicate_chunks"] += 1
        elif r.held + len(c.data) > r.total:
            self.counters["bad_chunks"] += 1
            return []
        else:
            r.chunks[c.index] = c.data
            r.held += len(c.data)
            self.counters["chunks_received"] += 1
        if len(r.chunks) < r.count:
            return [self._ack(src, c.msg_id, r.count, r.chunks)]
        del self._in[key]
        self._release(key, r)
        data = b"".join(r.chunks[i] for i in range(r.count))
        if len(data) != r.total:
            self.counters["bad_messages"] += 1
            return []
        self._remember(key, r.expires, r.count)
        self.counters["messages_received"] += 1
        return [self._ack(src, c.msg_id, r.count, range(r.count)),
                MessageReceived(src, r.topic, data, c.msg_id, r.reply_to)]

    def _remember(self, key: tuple[Address, int], until: float, count: int) -> None:
        self._done[key] = (until, count)
        self._done.move_to_end(key)
        while len(self._done) > self.completed_memory:
            self._done.popitem(last=False)

    # -- ping ----------------------------------------------------------------

    def ping(self, dst_address: AddressLike, now: float, timeout: float = 5.0
             ) -> tuple[int, list[Action]]:
        dst = _addr(dst_address)
        if len(self._pings) >= 0xFFFF:
            raise LocalProtocolError("too many pings outstanding")
        ping_id = self._rng.getrandbits(32)
        while ping_id in self._pings:
            ping_id = self._rng.getrandbits(32)
        self._pings[ping_id] = (dst, now, now + timeout)
        sent_at = int(now * 1_000_000) & 0xFFFF_FFFF_FFFF_FFFF
        return ping_id, [SendPacket(dst, Proto.PING, Ping(ping_id, sent_at).encode())]

    # -- sans-IO shape -------------------------------------------------------

    def handle(self, event: PacketReceived, now: float) -> list[Action]:
        if isinstance(event, Routed):
            event = PacketReceived.from_routed(event)
        if not isinstance(event, PacketReceived):
            raise LocalProtocolError(f"MessageEndpoint cannot handle {type(event).__name__}")
        if event.proto not in PAYLOADS:
            self.counters["unknown_proto"] += 1
            return []
        try:
            payload = decode_payload(event.proto, event.payload)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        src = event.src_address
        if isinstance(payload, MessageChunk):
            return self._on_chunk(src, payload, now)
        if isinstance(payload, MessageAck):
            return self._on_ack(src, payload, now)
        if isinstance(payload, Ping):
            self.counters["pings_answered"] += 1
            return [SendPacket(src, Proto.PONG, Pong(payload.ping_id, payload.sent_at).encode())]
        if isinstance(payload, Pong):
            p = self._pings.get(payload.ping_id)
            if p is None or p[0] != src:
                self.counters["stray_pongs"] += 1
                return []
            del self._pings[payload.ping_id]
            return [PingResult(payload.ping_id, src, now - p[1], event.hops_taken)]
        if isinstance(payload, Unreachable):
            return self._on_unreachable(src, payload)
        self.counters["not_for_messages"] += 1  # traces: ``overlay.trace.Tracer``
        return []

    def _on_unreachable(self, reporter: Address, u: Unreachable) -> list[Action]:
        dst = Address(u.dst)
        self.counters["unreachable_received"] += 1
        actions: list[Action] = [DestinationUnreachable(dst, u.reason, reporter)]
        for ping_id, (pdst, _, _) in list(self._pings.items()):
            if pdst == dst:
                del self._pings[ping_id]
                actions.append(PingFailed(ping_id, dst, "unreachable"))
        return actions

    def next_deadline(self) -> float | None:
        times = [min(o.next_tx, o.deadline) for o in self._out.values()]
        times += [r.expires for r in self._in.values()]
        times += [p[2] for p in self._pings.values()]
        return min(times) if times else None

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for msg_id, out in list(self._out.items()):
            if now >= out.deadline:
                del self._out[msg_id]
                self.counters["messages_failed"] += 1
                actions.append(MessageFailed(msg_id, "deadline"))
            elif now >= out.next_tx:
                resend = sorted(out.sent - out.acked)[: self.max_in_flight]
                self.counters["retransmits"] += len(resend)
                actions += [self._chunk(msg_id, out, i, now) for i in resend]
                actions += self._fill(msg_id, out, now)
                out.rto = min(out.rto * self.backoff, self.max_retransmit)
                out.next_tx = now + out.rto
        for key, r in list(self._in.items()):
            if now >= r.expires:
                del self._in[key]
                self._release(key, r)
                self.counters["reassembly_expired"] += 1
        for ping_id, (dst, _, until) in list(self._pings.items()):
            if now >= until:
                del self._pings[ping_id]
                actions.append(PingFailed(ping_id, dst, "timeout"))
        while self._done:
            key, (until, _) = next(iter(self._done.items()))
            if until > now:
                break
            del self._done[key]
        return actions

    @property
    def in_flight(self) -> int:
        return len(self._out)
