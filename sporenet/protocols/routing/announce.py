"""What the router sends: updates for selected routes, its own route, full dumps to
new neighbours, and the paced periodic refresh (rules in ``routing/router.py``).

A mixin of ``Router``: it reads and writes the router's source table (every update
we send records the feasibility distance, RFC 8966 §3.7.3) and its refresh ring.
"""

from __future__ import annotations

import math
import random
from collections import deque

from ..base import Action
from ..identity import Identity
from .table import Destination, Route, SendToNeighbour
from .messages import (FLAG_CROSSED, MAX_INTERVAL, RouteUpdate, route_transcript,
                               seqno_newer)


class Announcer:
    node_id: bytes
    region: str
    update_interval: float
    refresh_batch: int
    _id: Identity
    _rng: random.Random
    _now: float
    _seqno: int
    _own_sig: tuple[int, bytes]
    _neighbours: dict[bytes, int]
    _dests: dict[bytes, Destination]
    _sources: dict[bytes, tuple[int, int, float]]
    _refresh: deque[bytes]
    _queued: set[bytes]
    _news: dict[bytes, None]
    _counters: dict[str, int]

    def _update_for(self, origin: bytes, dest: Destination, r: Route) -> RouteUpdate:
        """An update for a selected route; records it in the source table (FD)."""
        src = self._sources.get(origin)
        if src is None or seqno_newer(r.seqno, src[0]):
            self._sources[origin] = (r.seqno, r.metric, self._now)
        elif r.seqno == src[0]:
            self._sources[origin] = (r.seqno, min(r.metric, src[1]), self._now)
        dest.advertised = (r.seqno, r.metric)
        flags = FLAG_CROSSED if r.crossed or r.region != self.region else 0
        return RouteUpdate(dest.origin_pub, r.seqno, r.metric, r.region, flags, r.signature,
                           self._interval())

    def _own_update(self) -> RouteUpdate:
        if self._own_sig[0] != self._seqno:
            self._own_sig = (self._seqno, self._id.sign(
                route_transcript(self._id.public_key, self._seqno, self.region)))
        return RouteUpdate(self._id.public_key, self._seqno, 0, self.region, 0, self._own_sig[1],
                           self._interval())

    def _interval(self) -> int:
        """What we promise (deciseconds): twice the longest refresh cycle of the table as
        it is, so that a table growing between two refreshes does not expire our routes
        at the neighbours."""
        rounds = -(-len(self._refresh) // self.refresh_batch)
        return min(MAX_INTERVAL, math.ceil(20 * 1.1 * self.update_interval * rounds))

    def _bump_seqno(self, seqno: int) -> list[Action]:
        self._seqno = seqno
        self._counters["own_seqno_bumps"] += 1
        return self._to_all(self._own_update())

    def _send(self, nb: bytes, msg: RouteUpdate) -> SendToNeighbour:
        self._counters["updates_sent"] += 1
        return SendToNeighbour(nb, msg)

    def _to_all(self, msg: RouteUpdate) -> list[Action]:
        return [self._send(nb, msg) for nb in self._neighbours]

    def _dump(self, nb: bytes) -> list[Action]:
        out: list[Action] = [self._send(nb, self._own_update())]
        for origin, dest in self._dests.items():
            sel = dest.routes.get(dest.selected) if dest.selected else None
            if sel is not None:
                out.append(self._send(nb, self._update_for(origin, dest, sel)))
        return out

    def _refresh_round(self) -> list[Action]:
        """The routes gained since the last round (news, sent once more: on a carrier
        that drops frames a lost triggered update would otherwise wait a whole cycle,
        250 s at 1,000 nodes), then the next ``refresh_batch`` origins of the
        round-robin, to every neighbour. News come on top of the batch: taking its
        place stalled the ring behind a cold start's news, past the refresh interval
        the ring's updates promise, and routes expired."""
        out: list[Action] = []
        news, self._news = self._news, {}
        for origin in news:
            dest = self._dests.get(origin)
            sel = dest.routes.get(dest.selected) if dest and dest.selected else None
            if sel is not None:
                out += self._to_all(self._update_for(origin, dest, sel))
        for _ in range(min(self.refresh_batch, len(self._refresh))):
            origin = self._refresh.popleft()
            if origin == self.node_id:
                msg = self._own_update()
            else:
                dest = self._dests.get(origin)
                if dest is None:  # gone: leaves the round until it is selected again
                    self._queued.discard(origin)
                    continue
                sel = dest.routes.get(dest.selected) if dest.selected else None
                if sel is None:
                    self._queued.discard(origin)
                    continue
                msg = self._update_for(origin, dest, sel)
            self._refresh.append(origin)
            out += self._to_all(msg)
        return out
