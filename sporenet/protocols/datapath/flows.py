"""Reply flows: what lets a packet back to a peer the contract forbids us to reach.

The contract's rules are directional: "app may reach db" lets app open connections to
db, not db to app. For IP that means a stateful filter, as Nebula's firewall and any
host firewall are: db's packets to app pass only as replies of a flow app started.
So when a packet from a peer we may not reach is delivered to our TUN, its flow is
noted here, reversed; a packet leaving our TUN for such a peer passes only if it
matches a noted flow that has not gone idle.

A flow is (peer /64, protocol, our port, their port) for TCP and UDP, and
(peer /64, ICMPv6, echo id) for pings. Only the pairs the rules constrain pay for a
lookup; the table is bounded (a peer that sprays ports fills it, then new flows are
refused and counted, and old ones age out). Sans-IO: ``now`` is an argument; the data
path serialises calls (two threads use one table).
"""

from __future__ import annotations

from .icmp6 import IPV6_HEADER_SIZE

FLOW_IDLE = 120.0   # s: a reply flow is forgotten this long after its last inbound packet
MAX_FLOWS = 16_384
_TCP, _UDP, _ICMP6 = 6, 17, 58
_ECHO_REQUEST, _ECHO_REPLY = 128, 129


def _key(packet: bytes | memoryview, peer_prefix: bytes, inbound: bool,
         opening: bool) -> tuple | None:
    """The flow key as seen from our side, or None for what never counts as a reply
    (IPv6 extension headers, ICMPv6 other than echo, fragments)."""
    if len(packet) < IPV6_HEADER_SIZE + 4:
        return None
    proto, l4 = packet[6], IPV6_HEADER_SIZE
    if proto in (_TCP, _UDP):
        src_port = (packet[l4] << 8) | packet[l4 + 1]
        dst_port = (packet[l4 + 2] << 8) | packet[l4 + 3]
        ours, theirs = (dst_port, src_port) if inbound else (src_port, dst_port)
        return (peer_prefix, proto, ours, theirs)
    if proto == _ICMP6 and len(packet) >= IPV6_HEADER_SIZE + 6:
        kind = packet[l4]
        if kind != (_ECHO_REQUEST if opening else _ECHO_REPLY):
            return None
        return (peer_prefix, proto, (packet[l4 + 4] << 8) | packet[l4 + 5], 0)
    return None


class ReplyFlows:
    """Flows one side opened, for the other side's replies: ``saw_inbound`` /
    ``is_reply`` for flows a peer opened to us (our replies out), ``saw_outbound`` /
    ``is_reply_in`` for flows we opened to a peer that may not reach us (its replies in)."""

    def __init__(self, limit: int = MAX_FLOWS, idle: float = FLOW_IDLE) -> None:
        self._flows: dict[tuple, float] = {}  # key -> last packet time of the opener
        self._limit, self._idle = limit, idle
        self.refused_full = 0

    def saw_inbound(self, packet: bytes | memoryview, peer_prefix: bytes, now: float) -> None:
        """A packet from a peer we may not reach was delivered: its replies may go back."""
        self._note("in", _key(packet, peer_prefix, True, True), now)

    def saw_outbound(self, packet: bytes | memoryview, peer_prefix: bytes, now: float) -> None:
        """We sent a packet to a peer that may not reach us: its replies may come in."""
        self._note("out", _key(packet, peer_prefix, False, True), now)

    def is_reply(self, packet: bytes | memoryview, peer_prefix: bytes, now: float) -> bool:
        """A packet leaving for ``peer_prefix`` answers a flow it opened to us."""
        return self._seen("in", _key(packet, peer_prefix, False, False), now)

    def is_reply_in(self, packet: bytes | memoryview, peer_prefix: bytes, now: float) -> bool:
        """A packet from ``peer_prefix`` answers a flow we opened to it."""
        return self._seen("out", _key(packet, peer_prefix, True, False), now)

    def _note(self, opener: str, key: tuple | None, now: float) -> None:
        if key is None:
            return
        key = (opener, *key)
        if key not in self._flows and len(self._flows) >= self._limit:
            self._expire(now)
            if len(self._flows) >= self._limit:
                self.refused_full += 1
                return
        self._flows[key] = now

    def _seen(self, opener: str, key: tuple | None, now: float) -> bool:
        if key is None:
            return False
        seen = self._flows.get((opener, *key))
        return seen is not None and now - seen < self._idle

    def forget(self, keep: frozenset[bytes] | set[bytes]) -> None:
        """Drop the flows of peers not in ``keep`` (a revoked member's replies stop too)."""
        self._flows = {k: t for k, t in self._flows.items() if k[1] in keep}

    def _expire(self, now: float) -> None:
        idle = self._idle
        self._flows = {k: t for k, t in self._flows.items() if now - t < idle}

    def __len__(self) -> int:
        return len(self._flows)
