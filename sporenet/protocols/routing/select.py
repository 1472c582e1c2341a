"""Route selection: the feasibility condition, the locality tier, hysteresis, and the
seqno requests sent on starvation or when feasibility blocks a better route (the
rules are listed in ``routing/router.py``).

A mixin of ``Router``: it reads the router's table and source table, keeps its FIB
map and refresh ring current, and sends through ``Announcer``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..base import Action
from .table import Destination, Route, SendToNeighbour, feasible, metric_plus
from .messages import (INFINITY, SEQNO_MOD, RouteUpdate, SeqnoRequest, seqno_ge,
                               seqno_newer)

REQUEST_HOPS = 127  # babeld's value: a latency-shortest path can be long in hops


class Selector:
    region: str
    update_interval: float
    hysteresis_frac: float
    hysteresis_min: int
    _neighbours: dict[bytes, int]
    _measured: set[bytes]
    _dests: dict[bytes, Destination]
    _sources: dict[bytes, tuple[int, int, float]]
    _starving: dict[bytes, None]
    _queued: set[bytes]
    _refresh: deque[bytes]
    _news: dict[bytes, None]
    _fib_map: dict[bytes, bytes]
    _fib_dirty: dict[bytes, bytes | None]
    _askers: dict[bytes, dict[bytes, tuple[int, float]]]
    _counters: dict[str, int]
    # From Announcer (after this class in Router's bases, so no stubs here).
    _update_for: Callable[[bytes, Destination, Route], RouteUpdate]
    _to_all: Callable[[RouteUpdate], list[Action]]
    _send: Callable[[bytes, RouteUpdate], SendToNeighbour]

    def source(self, origin: bytes) -> tuple[int, int] | None:
        s = self._sources.get(origin)
        return None if s is None else (s[0], s[1])

    def _feasible(self, origin: bytes, r: Route) -> bool:
        return feasible(self.source(origin), r.seqno, r.advertised)

    def _tier(self, r: Route) -> int:
        return 0 if self.region and r.region == self.region and not r.crossed else 1

    def _margin(self, metric: int) -> float:
        return max(metric * self.hysteresis_frac, self.hysteresis_min)

    def _best_metric(self, origin: bytes) -> int:
        return min((r.metric for r in self._dests[origin].routes.values() if r.usable),
                   default=INFINITY)

    def _reselect(self, origin: bytes, now: float, reason: str,
                  by: bytes | None) -> list[Action]:
        """Select the best route for ``origin``; on a change record ``reason`` (a
        template, ``{}`` for ``by``'s short id) and update FIB and neighbours."""
        dest = self._dests[origin]
        s = self._sources.get(origin)
        src = None if s is None else (s[0], s[1])
        measured, sel = self._measured, dest.selected
        # The selected route stays a candidate when its neighbour's metric rises past
        # our feasibility distance (babeld does the same; RFC 8966 §3.5.4 lets the
        # update be ignored): keeping a successor cannot close a loop, only switching
        # to one can, and switching still needs feasibility.
        cands = [r for r in dest.routes.values()
                 if not r.expired and r.metric < INFINITY and r.neighbour in measured
                 and (r.neighbour == sel or feasible(src, r.seqno, r.advertised))]
        cur = dest.routes.get(sel) if sel else None
        if cur is not None and cur not in cands:
            cur = None
        new = min(cands, key=lambda r: (self._tier(r), r.metric, r.neighbour), default=None)
        if cur is not None and new is not None and new is not cur:
            margin = self._margin(cur.metric)
            if self._tier(new) == self._tier(cur) and new.metric >= cur.metric - margin:
                new = cur  # hysteresis: not better by enough
        old_hop = dest.selected
        dest.selected = None if new is None else new.neighbour
        if dest.selected != old_hop:
            dest.last_change, dest.last_reason, dest.last_by = now, reason, by
            self._fib_dirty.setdefault(origin, old_hop)
            if new is None:
                del self._fib_map[origin]
            else:
                self._fib_map[origin] = new.neighbour
                if origin not in self._queued:
                    self._queued.add(origin)
                    self._refresh.append(origin)
        actions: list[Action] = []
        if new is not None:
            self._starving.pop(origin, None)
            adv = dest.advertised
            if adv is None or abs(new.metric - adv[1]) > self._margin(adv[1]):
                if adv is None:
                    self._news[origin] = None  # gained: repeated in the next round
                actions += self._to_all(self._update_for(origin, dest, new))
                self._askers.pop(origin, None)
            elif adv[0] != new.seqno:
                actions += self._answer_askers(origin, dest, new)
            # Our route got worse (a suspect or dearer link) while a route that the
            # feasibility condition blocks is clearly better: ask for a newer seqno now,
            # rather than waiting for that neighbour's next update to ask (RFC 8966
            # §3.8.2.2): this is what makes rerouting after a silent cut take one
            # round trip to the origin once the link is suspect.
            limit = (self._tier(new), new.metric - self._margin(new.metric))
            blocked = [r for r in dest.routes.values()
                       if r is not new and r.usable and r.neighbour in self._measured
                       and (self._tier(r), r.metric) < limit]
            if blocked:
                best = min(blocked, key=lambda r: (self._tier(r), r.metric, r.neighbour))
                actions += self._request_if_better(origin, dest, best, now)
        else:
            if dest.advertised is not None:
                dest.advertised = None
                signed = max(dest.routes.values(), key=lambda r: r.updated, default=None)
                if signed is not None:
                    self._counters["retractions_sent"] += len(self._neighbours)
                    actions += self._to_all(RouteUpdate(dest.origin_pub, signed.seqno, INFINITY,
                                                        signed.region, 0, signed.signature))
            if dest.routes:
                self._starving[origin] = None
                actions += self._request_all(origin, dest, now)
            if not dest.routes:
                del self._dests[origin]
        return actions

    def _answer_askers(self, origin: bytes, dest: Destination, new: Route) -> list[Action]:
        """Only the seqno changed: send it now to the neighbours whose request for it we
        forwarded, and to those whose own route (as they last told us) is clearly
        worse than ours through us: they may be stuck behind their feasibility
        distance, which the new seqno lifts (a repair that spreads through the region
        that lost its routes, as after a cut, even if a request was lost in it). The
        others get it with the paced refresh. Flooding every new seqno at once, as
        Babel does, made each seqno request cost an update on every link."""
        askers = self._askers.pop(origin, {})
        due = [nb for nb, (want, _) in askers.items() if seqno_ge(new.seqno, want)]
        if len(due) < len(askers):
            self._askers[origin] = {nb: a for nb, a in askers.items() if nb not in due}
        for nb, cost in self._neighbours.items():
            r = dest.routes.get(nb)
            if nb not in due and (r is None or r.expired or r.advertised - self._margin(
                    r.advertised) > metric_plus(new.metric, cost)):
                due.append(nb)
        if not due:
            return []
        msg = self._update_for(origin, dest, new)
        return [self._send(nb, msg) for nb in due if nb in self._neighbours]

    def _request_all(self, origin: bytes, dest: Destination, now: float) -> list[Action]:
        """Starvation (RFC 8966 §3.8.2.1): ask every neighbour for a newer seqno, at most
        once per update interval; ``on_timer`` retries while the starvation lasts, since
        a request can be lost (into a link not yet known to be dead) and unchanged
        refreshes, which would otherwise prompt a retry, come only once per cycle."""
        src = self._sources.get(origin)
        if src is None:
            return []
        seqno = (src[0] + 1) % SEQNO_MOD
        if not self._may_request(dest, seqno, now):
            return []
        req = SeqnoRequest(origin, seqno, REQUEST_HOPS)
        self._counters["seqno_requests_sent"] += len(self._neighbours)
        return [SendToNeighbour(nb, req) for nb in self._neighbours]

    def _beats_selected(self, dest: Destination, r: Route) -> bool:
        cur = dest.routes.get(dest.selected) if dest.selected else None
        return cur is None or (self._tier(r), r.metric) < (self._tier(cur), cur.metric)

    def _request_if_better(self, origin: bytes, dest: Destination, r: Route,
                           now: float) -> list[Action]:
        """RFC 8966 §3.8.2.2: an infeasible route that would beat the selected one asks
        its neighbour for a newer seqno (with none selected, ``_reselect`` asks all)."""
        cur = dest.routes.get(dest.selected) if dest.selected else None
        src = self._sources.get(origin)
        if (cur is None or src is None or not r.usable
                or (self._tier(r), r.metric) >= (self._tier(cur), cur.metric)):
            return []
        # A route older than our source entry is only stale (its neighbour's newer
        # update is in flight, or was lost): ask for the seqno we already hold, which
        # that neighbour or a node on its way answers. Only a route infeasible at that
        # seqno needs the origin to make a new one (+1).
        seqno = src[0] if seqno_newer(src[0], r.seqno) else (src[0] + 1) % SEQNO_MOD
        if not self._may_request(dest, seqno, now):
            return []
        self._counters["seqno_requests_sent"] += 1
        return [SendToNeighbour(r.neighbour, SeqnoRequest(origin, seqno, REQUEST_HOPS))]

    def _may_request(self, dest: Destination, seqno: int, now: float) -> bool:
        """At most one request per destination per update interval, unless it asks for
        a newer seqno than the last: when the answer to a stale route's request leaves
        it still infeasible, the +1 request goes at once, not an interval later."""
        last = dest.last_requested
        if (now - dest.last_request < self.update_interval
                and (last is None or not seqno_newer(seqno, last))):
            return False
        dest.last_request, dest.last_requested = now, seqno
        return True
