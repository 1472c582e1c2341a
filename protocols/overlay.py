"""A node's overlay layer: the forwarder and the message endpoint, wired together.

Driven by ``handle(RoutedReceived, now)`` for packets off a link, by ``send`` /
``ping`` for the local user, and by ``on_timer(now)`` (retransmissions, deadlines).
Packets the forwarder delivers locally go to the endpoint; packets the endpoint
wants sent go through the forwarder. What comes out is for the executor:
``SendToNeighbour`` for links, and the endpoint's user-facing actions
(``MessageReceived``, ``MessageDelivered``, ``MessageFailed``, ``PingResult``,
``PingFailed``, ``DestinationUnreachable``). The same object serves the real node
and the simulator.
"""

from __future__ import annotations

from typing import Mapping

from .base import Action, Event
from .forwarding import DeliverLocal, Forwarder, prefix_fib
from .identity import Identity
from .messaging import MessageEndpoint, SendPacket


class Overlay:
    def __init__(self, forwarder: Forwarder, endpoint: MessageEndpoint) -> None:
        self.forwarder = forwarder
        self.endpoint = endpoint
        self._fib_version: int | None = None

    @classmethod
    def for_identity(cls, identity: Identity, *, rng) -> Overlay:
        return cls(Forwarder(identity), MessageEndpoint(identity, rng=rng))

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

    def next_deadline(self) -> float | None:
        dues = [d for d in (self.forwarder.next_deadline(), self.endpoint.next_deadline())
                if d is not None]
        return min(dues) if dues else None

    def on_timer(self, now: float) -> list[Action]:
        return self._run(self.forwarder.on_timer(now) + self.endpoint.on_timer(now), now)

    def _run(self, actions: list[Action], now: float) -> list[Action]:
        """Loop local deliveries and sends between the two until only external actions remain."""
        out: list[Action] = []
        todo = list(actions)
        while todo:
            a = todo.pop(0)
            if isinstance(a, DeliverLocal):
                todo += self.endpoint.handle(a.packet, now)
            elif isinstance(a, SendPacket):
                todo += self.forwarder.originate(a.dst_address, a.proto, a.payload, now)
            else:
                out.append(a)
        return out
