"""A node's overlay layer: the forwarder and the message endpoint, wired together.

Driven by ``handle(RoutedReceived, now)`` for packets off a link, by ``send`` /
``ping`` for the local user, and by ``on_timer(now)`` (retransmissions, deadlines).
Packets the forwarder delivers locally go to the endpoint; packets the endpoint
wants sent go through the forwarder. What comes out is for the executor:
``SendToNeighbour`` for links, and the endpoint's user-facing actions
(``MessageReceived``, ``MessageDelivered``, ``MessageFailed``, ``PingResult``,
``PingFailed``, ``DestinationUnreachable``) and the tracer's (``TraceResult``,
``TraceFailed``; ``protocols/trace.py``). Trace packets delivered here go to the
tracer, unreachable notices to both the endpoint and the tracer. The same object
serves the real node and the simulator.
"""

from __future__ import annotations

from typing import Mapping

from .base import Action, Event
from .forwarding import DeliverLocal, Forwarder, prefix_fib
from .identity import Identity
from .messaging import MessageEndpoint, PacketReceived, SendPacket
from .overlay_messages import Proto
from .trace import Tracer


class Overlay:
    def __init__(self, forwarder: Forwarder, endpoint: MessageEndpoint,
                 tracer: Tracer | None = None) -> None:
        self.forwarder = forwarder
        self.endpoint = endpoint
        self.tracer = tracer if tracer is not None else Tracer(rng=endpoint._rng)
        self._fib_version: int | None = None

    @classmethod
    def for_identity(cls, identity: Identity, *, rng, **forwarder_options) -> Overlay:
        return cls(Forwarder(identity, **forwarder_options), MessageEndpoint(identity, rng=rng))

    def set_fib(self, fib: Mapping[bytes, bytes], version: int | None = None) -> None:
        """Install the router's snapshot {destination node id: next hop}, once per version."""
        if version is None or version != self._fib_version:
            self.forwarder.set_fib(prefix_fib(fib))
            self._fib_version = version

    def handle(self, event: Event, now: float) -> list[Action]:
        return self._run(self.forwarder.handle(event, now), now)

    def send(self, dst, topic: str, data: bytes, now: float, **kw) -> tuple[int, list[Action]]:
        msg_id, actions = self.endpoint.send(dst, topic, data, now, **kw)
        return msg_id, self._run(actions, now)

    def ping(self, dst, now: float, timeout: float = 5.0) -> tuple[int, list[Action]]:
        ping_id, actions = self.endpoint.ping(dst, now, timeout)
        return ping_id, self._run(actions, now)

    def trace(self, dst, now: float, timeout: float = 2.0) -> tuple[int, list[Action]]:
        """Trace the path to ``dst``: ``TraceResult`` or ``TraceFailed`` follow."""
        trace_id, actions = self.tracer.trace(dst, now, timeout)
        return trace_id, self._run(actions, now)

    def next_deadline(self) -> float | None:
        dues = [d for d in (self.forwarder.next_deadline(), self.endpoint.next_deadline(),
                            self.tracer.next_deadline()) if d is not None]
        return min(dues) if dues else None

    def on_timer(self, now: float) -> list[Action]:
        return self._run(self.forwarder.on_timer(now) + self.endpoint.on_timer(now)
                         + self.tracer.on_timer(now), now)

    def _run(self, actions: list[Action], now: float) -> list[Action]:
        """Loop local deliveries and sends between the two until only external actions remain."""
        out: list[Action] = []
        todo = list(actions)
        while todo:
            a = todo.pop(0)
            if isinstance(a, DeliverLocal):
                proto = a.packet.proto
                if proto in (Proto.TRACE_REQUEST, Proto.TRACE_REPLY):
                    todo += self.tracer.handle(PacketReceived.from_routed(a.packet), now)
                    continue
                if proto == Proto.UNREACHABLE:
                    todo += self.tracer.handle(PacketReceived.from_routed(a.packet), now)
                todo += self.endpoint.handle(a.packet, now)
            elif isinstance(a, SendPacket):
                todo += self.forwarder.originate(a.dst_address, a.proto, a.payload, now)
            else:
                out.append(a)
        return out
