"""The link side of a node: the link table plus the dialer of configured peers.

Driven by ``handle(event, now)`` with the ``protocols.link.table`` connection events and
``DialFailed``, and by ``on_timer(now)``. The link table authenticates connections;
the dialer redials configured peers. They meet here: a configured endpoint counts
as connected while some authenticated peer is reachable through it (an outbound
link dialled to it, or a peer that advertises it as its listen endpoint), so a
duplicate connection closed by the tie-break never causes a redial.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Hashable

from ..base import Action, Event, Publish
from .dialer import Dial, Dialer, DialLost, DialSucceeded
from ..identity import Identity
from .table import Admit, ConnectionLost, ConnectionOpened, DeliverFrame, LinkTable
from .messages import Probe, ProbeAck
from ..notices import LinkCounters


@dataclass(frozen=True, slots=True)
class DialFailed(Event):
    endpoint: str
    reason: str


class LinkManager:
    """Sans-IO. ``table`` is the ``LinkTable``; actions are the table's plus ``Dial``."""

    def __init__(self, identity: Identity, *, peers: list[str], rng: random.Random, now: float,
                 listen_endpoint: str = "", name: str = "", handshake_timeout: float = 5.0,
                 admit: Admit | None = None) -> None:
        self.table = LinkTable(identity, listen_endpoint=listen_endpoint, name=name,
                               handshake_timeout=handshake_timeout, admit=admit)
        self.dialer = Dialer(list(peers), rng=rng, now=now)
        self._dialing: dict[Hashable, str] = {}  # outbound conn -> configured endpoint
        self._pending: set[str] = set()         # dials not yet resolved
        self._up: set[str] = set()
        self._via: dict[str, bytes] = {}        # endpoint in _up -> node id reached through it
        self._counters: dict[str, int] = dict(self.table.counters)

    def handle(self, event: Event, now: float) -> list[Action]:
        match event:
            case DialFailed(endpoint=ep):
                self._pending.discard(ep)
                return self.dialer.handle(DialLost(ep), now) if ep not in self._up else []
            case ConnectionOpened(conn=c, outbound=True, remote=ep) if ep in self._pending:
                self._dialing[c] = ep
        actions = self._echo_probes(self.table.handle(event, now))
        if isinstance(event, ConnectionLost) and event.conn in self._dialing:
            self._pending.discard(self._dialing.pop(event.conn))
        return actions + self._reconcile(now)

    def _echo_probes(self, actions: list[Action]) -> list[Action]:
        """Answer probes here, not in the prober: on a real node the prober sits one
        bus hop away, and an echo that crossed the bus twice would count that time
        as link latency. The prober still answers probes in the simulator."""
        out: list[Action] = []
        for a in actions:
            if isinstance(a, DeliverFrame) and isinstance(a.msg, Probe):
                out += self.table.send_to(a.node_id, ProbeAck(a.msg.seq))
            else:
                out.append(a)
        return out

    def next_deadline(self) -> float | None:
        dues = [d for d in (self.table.next_deadline(), self.dialer.next_deadline()) if d is not None]
        return min(dues) if dues else None

    def on_timer(self, now: float) -> list[Action]:
        actions = self.table.on_timer(now) + self.dialer.on_timer(now)
        for a in actions:
            if isinstance(a, Dial):
                self._pending.add(a.endpoint)
        return actions + self._reconcile(now)

    def after(self, actions: list[Action], now: float) -> list[Action]:
        """Actions from a direct table call (``send_to``, ``disconnect``) plus bookkeeping."""
        return actions + self._reconcile(now)

    def _reconcile(self, now: float) -> list[Action]:
        reachable: dict[str, bytes] = {}
        for p in self.table.peers():
            reachable[p.listen_endpoint] = p.node_id
            if p.outbound:
                reachable[p.endpoint] = p.node_id
        # A peer that closed our link as a duplicate is still reached through the link it
        # kept, which is handshaking here: no redial while the table waits for it.
        for nid in self.table.bridging():
            reachable.update((ep, nid) for ep, via in self._via.items() if via == nid)
        for ep in self.dialer.endpoints:
            if ep in reachable:
                self._via[ep] = reachable[ep]
            if ep in reachable and ep not in self._up:
                self._up.add(ep)
                self._pending.discard(ep)
                self.dialer.handle(DialSucceeded(ep), now)
            elif ep not in reachable and ep not in self._pending and (
                    ep in self._up or not self.dialer.is_scheduled(ep)):
                # Lost, or a dial that ended without a link: schedule the next try.
                self._up.discard(ep)
                self.dialer.handle(DialLost(ep), now)
        counters = self.table.counters
        if counters != self._counters:
            self._counters = dict(counters)
            return [Publish(LinkCounters(dict(counters)))]
        return []
