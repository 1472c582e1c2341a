"""Hop-by-hop forwarding of ``Routed`` overlay packets (issue [2/7]).

One ``Forwarder`` per node. It reads two snapshots the caller hands it by
reference (never copied, so the router agent publishes a new FIB by swapping
the mapping, DESIGN.md §2 and §4):

- the FIB: destination /64 (the first 8 bytes of an overlay address) -> next-hop
  node id, from the router (``set_fib``);
- the neighbours: node id -> that peer's /64 (``set_neighbours``), so a directly
  linked peer is reachable before any route to it exists.

This is the one forwarding code path: the message layer uses it now and the TUN
data path will call ``route`` for every packet later, so ``route`` only does
dictionary lookups and builds at most two packets.

Rules:
- ``dst`` equal to our address: ``DeliverLocal``. ``dst`` inside our /64 but not
  our address: dropped and counted (``dst_not_ours``); nobody else may own it.
- Otherwise look up ``dst[:8]`` in the FIB, then among the neighbours. Every send
  to a neighbour decrements ``hop_limit`` and increments ``hops_taken``.
- A packet that arrives with ``hop_limit`` 0 and is not for us has looped or
  travelled too far: dropped, counted (``hop_limit_exceeded``), and the source
  gets an ``Unreachable(HOP_LIMIT_EXCEEDED)``.
- No route: dropped, counted (``no_route``), the source gets
  ``Unreachable(NO_ROUTE)``. If we are the source, the notice is delivered locally.
- Never an unreachable about an unreachable (no storms); unreachables are also
  rate-limited by a token bucket (``unreachable_rate`` per second, burst
  ``unreachable_burst``), overflow counted as ``unreachable_suppressed``.
- The notice is an ordinary ``Routed(proto=UNREACHABLE)`` in a ``SendToNeighbour``
  (or ``DeliverLocal``), so the executor needs no extra case.
- Path trace: a ``TraceRequest`` (proto 8) sent on to a neighbour, by its origin or
  by a transit node, gets this node's ``TraceRecord`` appended: our address, the
  next hop, that link's ``link_stats(next_hop) -> (rtt_ms, loss, cost) | None`` and
  ``route_metric(dst_address) -> int | None`` (both callables the caller hands in;
  unknown values travel as ``UNKNOWN``). A full list (``MAX_TRACE_RECORDS``) or a
  record that would overflow the frame is not appended: the request goes on with
  ``TRACE_TRUNCATED`` set (counted ``trace_truncated``); a request whose payload
  does not decode goes on unchanged (``trace_malformed``). The hop limit applies
  as to any packet.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

from .. import wire
from ..base import Action, Event
from ..errors import DecodeError, LocalProtocolError
from ..identity import Identity
from ..routed import (MAX_ROUTED_PAYLOAD, MAX_TRACE_RECORDS, PREFIX_SIZE, prefix_of_node,
                               TRACE_TRUNCATED, Proto, Routed, TraceRecord, TraceRequest,
                               Unreachable, UnreachableReason, pack_address)

DEFAULT_HOP_LIMIT = 64
LinkStats = Callable[[bytes], "tuple[float | None, float | None, float | None] | None"]
RouteMetric = Callable[[bytes], "int | None"]


@dataclass(frozen=True, slots=True)
class SendToNeighbour(Action):
    """Put ``packet`` on the link to the directly connected ``node_id``."""

    node_id: bytes
    packet: Routed


@dataclass(frozen=True, slots=True)
class DeliverLocal(Action):
    """``packet`` is addressed to this node: hand it to the local consumer."""

    packet: Routed


@dataclass(frozen=True, slots=True)
class RoutedReceived(Event):
    """A ``Routed`` frame arrived on the link to ``from_node``."""

    from_node: bytes
    packet: Routed


class Forwarder:
    """Sans-IO forwarding engine; see the module docstring for the rules."""

    def __init__(self, identity: Identity | bytes | ipaddress.IPv6Address | str, *,
                 hop_limit: int = DEFAULT_HOP_LIMIT, unreachable_rate: float = 100.0,
                 unreachable_burst: float = 100.0, link_stats: LinkStats | None = None,
                 route_metric: RouteMetric | None = None,
                 max_trace_records: int = MAX_TRACE_RECORDS) -> None:
        if not 1 <= hop_limit <= 0xFF:
            raise LocalProtocolError(f"hop limit {hop_limit} out of range 1..255")
        address = identity.address if isinstance(identity, Identity) else identity
        self.address: bytes = pack_address(address)
        self.prefix: bytes = self.address[:PREFIX_SIZE]
        self.hop_limit = hop_limit
        self.counters: Counter[str] = Counter()
        self._fib: Mapping[bytes, bytes] = {}
        self._neighbour_by_prefix: dict[bytes, bytes] = {}
        self._rate = unreachable_rate
        self._burst = unreachable_burst
        self._tokens = unreachable_burst
        self._tokens_at: float | None = None
        self.link_stats = link_stats
        self.route_metric = route_metric
        self.max_trace_records = min(max_trace_records, MAX_TRACE_RECORDS)

    # -- snapshots -------------------------------------------------------

    def set_fib(self, fib: Mapping[bytes, bytes]) -> None:
        """Use ``fib`` (/64 prefix bytes -> next-hop node id) from now on; kept by reference."""
        self._fib = fib

    def set_neighbours(self, neighbours: Mapping[bytes, bytes]) -> None:
        """Directly connected peers: node id -> their /64 prefix (8 bytes)."""
        by_prefix: dict[bytes, bytes] = {}
        for node_id, prefix in neighbours.items():
            if len(prefix) != PREFIX_SIZE:
                raise LocalProtocolError(f"neighbour prefix must be {PREFIX_SIZE} bytes")
            by_prefix[bytes(prefix)] = node_id
        self._neighbour_by_prefix = by_prefix

    def next_hop(self, dst: bytes) -> bytes | None:
        prefix = dst[:PREFIX_SIZE]
        hop = self._fib.get(prefix)
        if hop is None:
            hop = self._neighbour_by_prefix.get(prefix)
        return hop

    # -- sans-IO shape ---------------------------------------------------

    def handle(self, event: RoutedReceived, now: float) -> list[Action]:
        if isinstance(event, RoutedReceived):
            return self.route(event.packet, event.from_node, now)
        raise LocalProtocolError(f"Forwarder cannot handle {type(event).__name__}")

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> list[Action]:
        return []

    # -- forwarding ------------------------------------------------------

    def originate(self, dst_address: bytes | ipaddress.IPv6Address | str, proto: int,
                  payload: bytes, now: float = 0.0) -> list[Action]:
        """Send a new packet from this node to ``dst_address``."""
        packet = Routed(self.address, pack_address(dst_address), self.hop_limit, 0,
                        int(proto), payload)
        self.counters["originated"] += 1
        return self.route(packet, None, now)

    def route_frame(self, frame: bytes | memoryview, from_node: bytes,
                    now: float) -> list[Action]:
        """Decode a frame from ``from_node`` and route it; bad frames are dropped and counted."""
        try:
            packet = wire.decode_frame(frame)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        if not isinstance(packet, Routed):
            self.counters["malformed"] += 1
            return []
        return self.route(packet, from_node, now)

    def route(self, packet: Routed, from_node: bytes | None, now: float) -> list[Action]:
        """Decide what to do with ``packet`` (``from_node`` None: we originated it)."""
        dst = packet.dst
        if dst == self.address:
            self.counters["delivered"] += 1
            return [DeliverLocal(packet)]
        if dst[:PREFIX_SIZE] == self.prefix:
            self.counters["dst_not_ours"] += 1
            return []
        if packet.hop_limit == 0:
            self.counters["hop_limit_exceeded"] += 1
            return self._unreachable(packet, UnreachableReason.HOP_LIMIT_EXCEEDED, now)
        hop = self.next_hop(dst)
        if hop is None:
            self.counters["no_route"] += 1
            return self._unreachable(packet, UnreachableReason.NO_ROUTE, now)
        if from_node is not None:
            self.counters["forwarded"] += 1
        payload = packet.payload
        if packet.proto == Proto.TRACE_REQUEST:
            payload = self._trace_step(payload, dst, hop)
        out = Routed(packet.src, dst, packet.hop_limit - 1, min(packet.hops_taken + 1, 0xFF),
                     packet.proto, payload)
        return [SendToNeighbour(hop, out)]

    def _trace_step(self, payload: bytes, dst: bytes, hop: bytes) -> bytes:
        """The request's payload with our record appended (see the module docstring)."""
        try:
            req = TraceRequest.decode(payload)
        except DecodeError:
            self.counters["trace_malformed"] += 1
            return payload
        if (len(req.records) >= self.max_trace_records
                or len(payload) + TraceRecord.SIZE > MAX_ROUTED_PAYLOAD):
            self.counters["trace_truncated"] += 1
            if req.truncated:
                return payload
            return TraceRequest(req.trace_id, req.records, req.flags | TRACE_TRUNCATED).encode()
        stats = self.link_stats(hop) if self.link_stats is not None else None
        rtt, loss, cost = stats if stats is not None else (None, None, None)
        metric = self.route_metric(dst) if self.route_metric is not None else None
        try:
            record = TraceRecord.of(self.address, hop, rtt, loss, cost, metric)
        except LocalProtocolError:  # a neighbour id that is not 32 bytes: record no link
            record = TraceRecord.of(self.address, bytes(32), None, None, None, metric)
        self.counters["trace_recorded"] += 1
        return TraceRequest(req.trace_id, req.records + (record,), req.flags).encode()

    def _unreachable(self, packet: Routed, reason: int, now: float) -> list[Action]:
        if packet.proto == Proto.UNREACHABLE:
            self.counters["unreachable_dropped"] += 1
            return []
        if not self._take_token(now):
            self.counters["unreachable_suppressed"] += 1
            return []
        notice = Routed(self.address, packet.src, self.hop_limit, 0, Proto.UNREACHABLE,
                        Unreachable(packet.dst, reason).encode())
        self.counters["unreachable_sent"] += 1
        # The notice is proto UNREACHABLE, so routing it cannot recurse further.
        return self.route(notice, None, now)

    def _take_token(self, now: float) -> bool:
        if self._tokens_at is not None and now > self._tokens_at:
            self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
        if self._tokens_at is None or now > self._tokens_at:
            self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def prefix_of(address: bytes | ipaddress.IPv6Address | str) -> bytes:
    """The /64 key a FIB uses for ``address``: its first 8 bytes."""
    return pack_address(address)[:PREFIX_SIZE]


def prefix_fib(fib: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """Turn the router's snapshot {destination node id: next hop} into ``set_fib``'s
    {destination /64: next hop}. Built once per FIB version, not per packet."""
    return {prefix_of_node(dest): hop for dest, hop in fib.items()}

