"""Overlay router: Babel (RFC 8966) over one /64 per node, origin-signed updates.

Driven by ``handle(event, now)`` with the events of ``routing/table.py`` and by
``on_timer(now)`` at ``next_deadline()``. Emits ``SendToNeighbour`` and
``Publish(RoutesChanged)``; ``fib()`` is the forwarding snapshot. Selection is in
``routing/select.py``, what is sent in ``routing/announce.py``, the operator views in
``routing/view.py``.

Rules (each has a unit test in ``tests/test_router.py``):
- Destinations are origins (node ids); the prefix is ``identity.subnet_of(origin_pub)``.
  An update is accepted only with a valid origin signature over
  ``(origin_pub, seqno, region)``; otherwise it is dropped and counted
  (``bad_signature``), the table untouched.
- Metric = sum of link costs (``LinkCostChanged``, rounded, at least 1), capped below
  infinity (0xFFFF). Routes through a neighbour the prober has not measured yet are
  kept but not selected (a guessed cost would set feasibility distances that the
  real cost then violates, starving the route until a seqno round trip; measured
  in the simulator: 30k retractions at the start of a 100-node run, none without).
- Feasibility (RFC 8966 §3.5.1, ``routing.table.feasible``) against the source table
  ``origin -> (seqno, feasibility distance)``, which is updated whenever we advertise a
  route (newer seqno resets, equal seqno takes the minimum). Infeasible routes are
  kept (and shown by ``explain``) but never newly selected: so no transient loops.
  The selected route stays selected when its neighbour's metric rises past our
  feasibility distance (babeld does this; RFC 8966 §3.5.4 allows ignoring such an
  update): keeping a successor cannot close a loop, and unselecting it made every
  node behind it starve, retract and ask the origin for a new seqno at once (in a
  simulated network with 2 % loss on some links, 40 % of routing traffic).
- Selection among usable feasible routes: locality tier first, then metric, with
  hysteresis: a selected route is replaced by a feasible one of the same tier only if
  that is better by more than ``max(hysteresis_frac * metric, hysteresis_min)``.
- Locality: an update's ``crossed`` flag, set by a sender when it or any node before
  it on the path is in a region other than the origin's signed region. When our
  region is non-empty and equals the destination's region, a route received with
  ``crossed`` clear is preferred over any crossed route whatever the metric. With an
  empty own region plain metric applies. (The flag is per hop and not signed: a
  malicious relay can lie about it, as about the metric.)
- Losing the selected route with no feasible alternative: we send a retraction
  (metric infinity, the origin's signature for the route's seqno) to every neighbour,
  and, if a source entry exists, a ``SeqnoRequest(origin, fd seqno + 1)`` to every
  neighbour (starvation recovery, §3.8), at most once per ``update_interval`` per origin
  unless it asks for a newer seqno than the last request did.
- Updates: a full dump (own route and every selected route) to a new neighbour at
  once and on ``RouteRequest``; triggered updates to all neighbours when a route is
  gained or lost, or its metric moves by more than the hysteresis margin from what
  we last advertised. A new seqno alone goes at once only to the neighbours whose
  ``SeqnoRequest`` for it we forwarded (the request's path, back) and to those whose
  own route, as they last told us, is clearly worse than ours through us (they may be
  stuck behind their feasibility distance), and to the others with the paced
  refresh: Babel floods it, so each request cost an update on every link of the
  network (3/4 of the routing traffic of a simulated 300-node network with a few
  lossy links). A node holding the newer seqno answers later requests for it
  itself. (Coalescing triggered updates for 20 ms, as babeld does, saved 2 % of
  updates in a simulated 10 % node failure: not worth 20 ms per hop of convergence.)
  Periodic refresh is paced: every
  ``update_interval`` (each gap x U(0.9, 1.1) from ``rng``) the next ``refresh_batch``
  routes of a round-robin over the table (own route included) go to every neighbour,
  and, on top, the routes gained since the last round (sent once more: a carrier that
  drops frames must not leave a new route unknown for a whole cycle; idle, nothing is
  gained, so idle traffic is unchanged). The refresh is a safety net, not the carrier
  of news; pacing makes idle traffic per node proportional to its neighbours, not to the
  network's size (Babel's full periodic dumps grow with both). Each update carries
  the interval within which we will send it again: twice the current refresh cycle.
- A route not refreshed for ``max(hold_time, 3.5 x the update's interval)`` expires
  (unusable, kept another ``hold_time`` for ``explain``, then removed). Expiry runs
  from a heap with one entry per destination (its earliest route deadline), so timers
  cost O(log n), not a table scan, and the heap holds N entries, not N x degree.
- An update whose (seqno, region, signature) equals a route already held for that
  origin is not verified again: every held route's signature was checked on arrival.
- Link costs are damped: a new cost within ``cost_damping`` (3 %) of the one in use
  is ignored, since each applied change re-evaluates every route through that link.
- Own route: metric 0, our seqno (random start from ``rng``). A ``SeqnoRequest`` for
  us with a seqno newer than ours raises ours to it and sends an update to every
  neighbour; otherwise we answer the asker with our current update. A request for
  another origin is answered if our selected route's seqno is new enough, else
  forwarded (hop count - 1) to the selected next hop, or the best usable route's
  neighbour, once per (origin, seqno) per ``update_interval``; the asker is noted
  (for ``hold_time``) to get the answer. A better route blocked by feasibility asks
  for our source seqno + 1 only if it is as new as our source entry; an older one is
  just stale and asks for the seqno we hold, which needs no new seqno at the origin.
- Contract (``admit(origin_pub, now)``, when given): an update whose origin key is not
  a current member is dropped and counted (``not_member``), so non-members get no
  routes; ``purge(now)`` drops (and retracts) destinations no longer admitted.
- Table bounded at ``max_routes`` destinations: a new origin evicts the destination
  with the worst best metric if the new one is better, else is dropped (``table_full``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable

from ..base import Action, Event, Publish
from ..errors import LocalProtocolError, RemoteProtocolError
from ..identity import Identity, node_id_of, verify_signature
from .table import (Destination, Fib, FrameFromNeighbour, LinkCostChanged, NeighbourDown,
                          NeighbourUp, Route, RoutesChanged, SendToNeighbour, metric_plus)
from .announce import Announcer
from .select import Selector
from .view import RouteViews
from .messages import (INFINITY, MAX_REGION_BYTES, SEQNO_MOD, RouteRequest,
                               RouteUpdate, SeqnoRequest, route_transcript, seqno_ge,
                               seqno_newer)

DEFAULT_COST = 100  # an unmeasured link: 100 ms, pessimistic until the prober reports
SOURCE_GC_TIME = 180.0  # RFC 8966 Appendix B: source entries live 3 minutes unused
HOLD_FACTOR = 3.5  # RFC 8966 §3.5.1: a route lives 3.5 announced intervals
REFRESH_BATCH = 16  # routes refreshed per neighbour per update interval

Verifier = Callable[[bytes, bytes, bytes], bool]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The default ``Router(verify=...)``: Ed25519, True if the signature is valid."""
    try:
        verify_signature(public_key, message, signature)
    except RemoteProtocolError:
        return False
    return True


class Router(Selector, Announcer, RouteViews):
    """Babel-style distance-vector router; see the module docstring."""

    def __init__(self, identity: Identity, *, rng: random.Random, now: float, region: str = "",
                 update_interval: float = 4.0, hold_time: float | None = None,
                 max_routes: int = 4096, default_cost: int = DEFAULT_COST,
                 hysteresis_frac: float = 0.05, hysteresis_min: int = 2,
                 refresh_batch: int = REFRESH_BATCH, cost_damping: float = 0.03,
                 verify: Verifier = verify,
                 admit: Callable[[bytes, float], bool] | None = None) -> None:
        if update_interval <= 0 or max_routes < 1 or refresh_batch < 1:
            raise LocalProtocolError(
                "update_interval must be > 0, max_routes and refresh_batch >= 1")
        if len(region.encode("utf-8")) > MAX_REGION_BYTES:
            raise LocalProtocolError(f"region longer than {MAX_REGION_BYTES} bytes")
        self._id = identity
        self.node_id = identity.node_id
        self._rng = rng
        self.region = region
        self.update_interval = update_interval
        self.hold_time = 3.5 * update_interval if hold_time is None else hold_time
        self.max_routes = max_routes
        self.default_cost = default_cost
        self.hysteresis_frac = hysteresis_frac
        self.hysteresis_min = hysteresis_min
        self.refresh_batch = refresh_batch
        self.cost_damping = cost_damping
        self._verify = verify
        self._admit = admit
        self._seqno = rng.getrandbits(16)
        self._own_sig = (self._seqno, identity.sign(route_transcript(identity.public_key,
                                                                      self._seqno, region)))
        self._neighbours: dict[bytes, int] = {}  # node id -> link cost
        self._measured: set[bytes] = set()  # neighbours whose cost came from the prober
        self._dests: dict[bytes, Destination] = {}
        self._sources: dict[bytes, tuple[int, int, float]] = {}  # origin -> seqno, fd, used
        self._forwarded: dict[tuple[bytes, int], float] = {}
        # origin -> {neighbour: (seqno it asked for, when)}, for requests we forwarded
        self._askers: dict[bytes, dict[bytes, tuple[int, float]]] = {}
        self._now = now
        self._next_update = now + self._gap()
        self._next_gc = now + SOURCE_GC_TIME / 4
        self._expiry: list[tuple[float, bytes]] = []  # (when, origin), see Destination.heap_at
        self._refresh: deque[bytes] = deque((self.node_id,))  # round-robin of origins
        self._queued: set[bytes] = {self.node_id}
        # Routes gained since the last refresh round, in order, each once (a dict).
        self._news: dict[bytes, None] = {}
        # Routes known, none feasible: retry requests. A dict, not a set: on_timer walks
        # it, and a set of bytes walks in a per-process hash order (same seed, other run).
        self._starving: dict[bytes, None] = {}
        self._fib_map: dict[bytes, bytes] = {}  # origin -> next hop, kept current
        self._fib_version = 0
        self._fib = Fib({}, 0)
        self._fib_dirty: dict[bytes, bytes | None] = {}  # origin -> next hop before this call
        self._counters = dict.fromkeys(
            ("bad_signature", "infeasible", "unknown_neighbour", "table_full", "updates_sent",
             "retractions_sent", "seqno_requests_sent", "seqno_requests_forwarded",
             "own_seqno_bumps", "not_member"), 0)

    # ------------------------------------------------------------------ public view
    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    @property
    def seqno(self) -> int:
        return self._seqno

    def fib(self) -> Fib:
        """The forwarding snapshot; a new immutable object only after a change."""
        if self._fib.version != self._fib_version:
            self._fib = Fib(self._fib_map, self._fib_version,
                            {o: d.origin_pub for o in self._fib_map
                             if (d := self._dests.get(o)) is not None})
        return self._fib

    # ------------------------------------------------------------------ driving
    def handle(self, event: Event, now: float) -> list[Action]:
        self._now = now
        match event:
            case FrameFromNeighbour(node_id=nb) if nb not in self._neighbours:
                self._counters["unknown_neighbour"] += 1
                actions: list[Action] = []
            case FrameFromNeighbour(node_id=nb, msg=RouteUpdate() as upd):
                actions = self._on_update(nb, upd, now)
            case FrameFromNeighbour(node_id=nb, msg=SeqnoRequest() as req):
                actions = self._on_request(nb, req, now)
            case FrameFromNeighbour(node_id=nb, msg=RouteRequest()):
                actions = self._dump(nb)
            case FrameFromNeighbour():
                actions = []
            case NeighbourUp(node_id=nb):
                self._neighbours.setdefault(nb, self.default_cost)
                actions = self._dump(nb)
            case NeighbourDown(node_id=nb):
                actions = self._on_down(nb, now)
            case LinkCostChanged(node_id=nb, cost=cost):
                actions = self._on_cost(nb, cost, now)
            case _:
                raise LocalProtocolError(f"Router cannot handle {type(event).__name__}")
        return actions + self._publish()

    def purge(self, now: float) -> list[Action]:
        """Drop every destination whose origin key ``admit`` no longer accepts (a new
        contract version revoked it, or its membership expired): its routes go, the
        FIB loses it, and a retraction goes to the neighbours we advertised it to."""
        self._now = now
        if self._admit is None:
            return []
        actions: list[Action] = []
        for origin, dest in list(self._dests.items()):
            if self._admit(dest.origin_pub, now):
                continue
            self._counters["not_member"] += 1
            signed = max(dest.routes.values(), key=lambda r: r.updated, default=None)
            if dest.advertised is not None and signed is not None:
                dest.advertised = None
                self._counters["retractions_sent"] += len(self._neighbours)
                actions += self._to_all(RouteUpdate(dest.origin_pub, signed.seqno, INFINITY,
                                                    signed.region, 0, signed.signature))
            dest.routes.clear()
            actions += self._reselect(origin, now, "not a member of the network contract", None)
            self._sources.pop(origin, None)
            self._starving.pop(origin, None)
        return actions + self._publish()

    def next_deadline(self) -> float | None:
        """The next paced refresh or the earliest entry of the expiry heap."""
        t = self._next_update
        if self._expiry and self._expiry[0][0] < t:
            t = self._expiry[0][0]
        return t

    def on_timer(self, now: float) -> list[Action]:
        self._now = now
        actions: list[Action] = []
        for origin in self._expire(now):
            actions += self._reselect(origin, now, "expired", None)
        if self._next_update <= now:
            self._next_update = now + self._gap()
            actions += self._refresh_round()
            for origin in list(self._starving):
                dest = self._dests.get(origin)
                if dest is None or dest.selected is not None or not dest.routes:
                    self._starving.pop(origin, None)
                else:
                    actions += self._request_all(origin, dest, now)
            if now >= self._next_gc:
                self._next_gc = now + SOURCE_GC_TIME / 4
                self._gc(now)
        return actions + self._publish()

    def _expire(self, now: float) -> list[bytes]:
        """Pop due heap entries: expire or remove that destination's due routes and
        schedule it again at its next route deadline. An entry whose time is not the
        destination's ``heap_at`` was superseded by an earlier one (or the destination
        was removed): skipped. Running a destination early is harmless: every deadline
        is checked against ``now``."""
        changed: dict[bytes, None] = {}
        heap, hold = self._expiry, self.hold_time
        while heap and heap[0][0] <= now:
            when, origin = heapq.heappop(heap)
            dest = self._dests.get(origin)
            if dest is None or dest.heap_at != when:
                continue
            dest.heap_at = None
            nxt = math.inf
            for nb, r in list(dest.routes.items()):
                if not r.expired and r.expires <= now:
                    r.expired, r.metric = True, INFINITY
                    changed[origin] = None
                if r.expired:
                    gone = r.expires + hold
                    if gone <= now:
                        del dest.routes[nb]
                        if not dest.routes:
                            changed[origin] = None
                        continue
                    nxt = min(nxt, gone)
                else:
                    nxt = min(nxt, r.expires)
            if dest.routes:
                self._schedule(origin, dest, nxt)
        return list(changed)

    def _schedule(self, origin: bytes, dest: Destination, when: float) -> None:
        """Make sure the expiry heap looks at ``dest`` no later than ``when``."""
        if dest.heap_at is None or when < dest.heap_at:
            dest.heap_at = when
            heapq.heappush(self._expiry, (when, origin))

    # ------------------------------------------------------------------ events
    def _on_update(self, nb: bytes, upd: RouteUpdate, now: float) -> list[Action]:
        origin = node_id_of(upd.origin_pub)
        if origin == self.node_id:
            if seqno_newer(upd.seqno, self._seqno):  # our own old announcement survived a restart
                return self._bump_seqno((upd.seqno + 1) % SEQNO_MOD)
            return []
        if self._admit is not None and not self._admit(upd.origin_pub, now):
            self._counters["not_member"] += 1
            return []
        dest = self._dests.get(origin)
        old = same = None
        if dest is not None:
            origin = dest.origin  # the key object: shared by every structure naming it
            old = dest.routes.get(nb)
            same = old if old is not None and self._same_signed(old, upd) else next(
                (r for r in dest.routes.values() if self._same_signed(r, upd)), None)
        if same is None and not self._verify(upd.origin_pub, upd.transcript(), upd.signature):
            self._counters["bad_signature"] += 1
            return []
        if (old is not None and dest.selected is not None and not old.expired
                and old.seqno == upd.seqno
                and old.advertised == upd.metric and old.crossed == upd.crossed
                and old.signature == upd.signature
                and (self._feasible(origin, old) or not self._beats_selected(dest, old))):
            # A refresh that changes nothing (most updates once converged): no reselect.
            # Starving destinations and infeasible routes better than ours take the
            # long way, which (rate-limited) retries the seqno request they need.
            old.updated, old.expires = now, max(old.expires, now + self._hold(upd))
            return []
        actions: list[Action] = []
        if dest is None:
            if upd.is_retraction:
                return []
            if len(self._dests) >= self.max_routes:
                worst = max(self._dests, key=lambda o: (self._best_metric(o), o))
                if self._best_metric(worst) <= metric_plus(upd.metric, self._neighbours[nb]):
                    self._counters["table_full"] += 1
                    return []
                actions += self._evict(worst, now)
            dest = self._dests[origin] = Destination(upd.origin_pub, origin)
        cost = self._neighbours[nb]
        # Equal fields already held point at the held objects (one copy per destination).
        seqno, region, sig = ((same.seqno, same.region, same.signature) if same is not None
                              else (upd.seqno, upd.region, upd.signature))
        dest.routes[nb] = r = Route(nb, seqno, upd.metric, metric_plus(upd.metric, cost),
                                    region, upd.crossed, sig, now, now + self._hold(upd))
        self._schedule(origin, dest, r.expires)
        if not self._feasible(origin, r):
            self._counters["infeasible"] += 1
            actions += self._request_if_better(origin, dest, r, now)
        reason = "retraction from {}" if upd.is_retraction else "update from {}"
        return actions + self._reselect(origin, now, reason, nb)

    @staticmethod
    def _same_signed(r: Route, upd: RouteUpdate) -> bool:
        return r.seqno == upd.seqno and r.signature == upd.signature and r.region == upd.region

    def _hold(self, upd: RouteUpdate) -> float:
        return max(self.hold_time, HOLD_FACTOR * upd.interval / 10)

    def _on_request(self, nb: bytes, req: SeqnoRequest, now: float) -> list[Action]:
        if req.origin == self.node_id:
            if seqno_ge(self._seqno, req.seqno):  # already new enough: the asker missed it
                return [self._send(nb, self._own_update())]
            return self._bump_seqno(req.seqno)  # RFC 8966 §3.8.1.2
        dest = self._dests.get(req.origin)
        if dest is None:
            return []
        sel = dest.routes.get(dest.selected) if dest.selected else None
        if sel is not None and seqno_ge(sel.seqno, req.seqno):
            return [self._send(nb, self._update_for(req.origin, dest, sel))]
        if req.hop_count < 2:
            return []
        usable = [r for r in dest.routes.values() if r.usable and r.neighbour != nb]
        target = sel if sel is not None and sel.neighbour != nb else (
            min(usable, key=lambda r: (r.metric, r.neighbour)) if usable else None)
        last = self._forwarded.get((req.origin, req.seqno))
        if target is None:
            return []
        # Whoever asked gets the new seqno as soon as it reaches us (``_reselect``).
        self._askers.setdefault(dest.origin, {})[nb] = (req.seqno, now)
        if last is not None and now - last < self.update_interval:
            return []
        self._forwarded[(req.origin, req.seqno)] = now
        self._counters["seqno_requests_forwarded"] += 1
        return [SendToNeighbour(target.neighbour,
                                SeqnoRequest(req.origin, req.seqno, req.hop_count - 1))]

    def _on_down(self, nb: bytes, now: float) -> list[Action]:
        if self._neighbours.pop(nb, None) is None:
            return []
        self._measured.discard(nb)
        actions: list[Action] = []
        for origin, dest in list(self._dests.items()):
            if dest.routes.pop(nb, None) is not None:
                actions += self._reselect(origin, now, "neighbour {} down", nb)
        return actions

    def _on_cost(self, nb: bytes, cost: float, now: float) -> list[Action]:
        if nb not in self._neighbours:
            return []
        c = max(1, min(int(round(cost)), INFINITY - 1)) if math.isfinite(cost) else INFINITY - 1
        prev, measured = self._neighbours[nb], nb in self._measured
        self._measured.add(nb)
        if c == prev or (measured and abs(c - prev) <= prev * self.cost_damping):
            return []
        self._neighbours[nb] = c
        actions: list[Action] = []
        for origin, dest in list(self._dests.items()):
            r = dest.routes.get(nb)
            if r is not None and not r.expired:
                r.metric = metric_plus(r.advertised, c)
                actions += self._reselect(origin, now, "link cost to {} changed", nb)
        return actions

    def _evict(self, origin: bytes, now: float) -> list[Action]:
        dest = self._dests[origin]
        dest.routes.clear()
        return self._reselect(origin, now, "evicted: table full", None)

    def _publish(self) -> list[Action]:
        if not self._fib_dirty:
            return []
        added, removed, changed = [], [], []
        for origin, old in self._fib_dirty.items():
            new = self._fib_map.get(origin)
            if new != old:
                (added if old is None else removed if new is None else changed).append(origin)
        self._fib_dirty.clear()
        if not (added or removed or changed):
            return []
        self._fib_version += 1
        return [Publish(RoutesChanged(self._fib_version, len(self._fib_map), tuple(added),
                                      tuple(removed), tuple(changed)))]

    def _gap(self) -> float:
        return self.update_interval * self._rng.uniform(0.9, 1.1)

    def _gc(self, now: float) -> None:
        for origin, (_, _, used) in list(self._sources.items()):
            if origin not in self._dests and now - used > SOURCE_GC_TIME:
                del self._sources[origin]
        for key, t in list(self._forwarded.items()):
            if now - t > self.hold_time:
                del self._forwarded[key]
        for origin, askers in list(self._askers.items()):
            for nb, (_, t) in list(askers.items()):
                if now - t > self.hold_time:
                    del askers[nb]
            if not askers:
                del self._askers[origin]
