"""Router: each rule driven by hand (hand-advanced now), then small networks in a pump."""

import heapq
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.base import Publish
from sporenet.protocols.identity import Identity
from sporenet.protocols.routing.table import (Fib, FrameFromNeighbour, LinkCostChanged,
                                            NeighbourDown, NeighbourUp, RoutesChanged,
                                            SendToNeighbour, feasible)
from sporenet.protocols.routing.router import Router
from sporenet.protocols.routing.messages import (INFINITY, RouteRequest, RouteUpdate,
                                                 SeqnoRequest, route_transcript)

ME, A, B, C, O, O2, O3, EVIL = (Identity(bytes([i]) * 32) for i in range(1, 9))


def signed(origin, seqno, metric, region="", flags=0, signer=None):
    sig = (signer or origin).sign(route_transcript(origin.public_key, seqno, region))
    return RouteUpdate(origin.public_key, seqno, metric, region, flags, sig)


def make(region="", neighbours=((A, 10), (B, 10)), **kw):
    r = Router(ME, rng=random.Random(1), now=0.0, region=region, **kw)
    for ident, cost in neighbours:
        r.handle(NeighbourUp(ident.node_id, ident.public_key), 0.0)
        r.handle(LinkCostChanged(ident.node_id, cost), 0.0)
    return r


def feed(r, nb, msg, now=0.0):
    return r.handle(FrameFromNeighbour(nb.node_id, msg), now)


def sends(actions, kind=RouteUpdate):
    return [(a.node_id, a.msg) for a in actions
            if isinstance(a, SendToNeighbour) and isinstance(a.msg, kind)]


def notices(actions):
    return [a.message for a in actions if isinstance(a, Publish)]


# ---------------------------------------------------------------- basics, signatures
def test_fib_carries_each_destinations_public_key_for_sessions():
    r = make()
    assert r.fib().public_keys == {} and Fib({}, 0).public_keys == {}
    feed(r, A, signed(O, 7, 5))
    feed(r, B, signed(O2, 3, 5))
    fib = r.fib()
    assert dict(fib.public_keys) == {O.node_id: O.public_key, O2.node_id: O2.public_key}
    feed(r, A, signed(O, 8, INFINITY))  # retracted: no route, no key
    assert dict(r.fib().public_keys) == {O2.node_id: O2.public_key}
    assert dict(fib.public_keys) == {O.node_id: O.public_key, O2.node_id: O2.public_key}


def test_signed_update_installs_route_and_triggers_update():
    r = make()
    acts = feed(r, A, signed(O, 7, 5))
    assert dict(r.fib()) == {O.node_id: A.node_id}
    out = sends(acts)
    assert {nb for nb, _ in out} == {A.node_id, B.node_id}
    assert all(m.metric == 15 and m.seqno == 7 and m.origin_pub == O.public_key for _, m in out)
    [n] = notices(acts)
    assert isinstance(n, RoutesChanged) and n.added == (O.node_id,) and n.version == r.fib().version
    assert r.source(O.node_id) == (7, 15)  # advertising set the feasibility distance


@pytest.mark.parametrize("forged", [
    lambda: signed(O, 7, 5, signer=EVIL),                                   # other key signs
    lambda: RouteUpdate(O.public_key, 8, 5, "", 0, signed(O, 7, 5).signature),  # seqno changed
    lambda: RouteUpdate(O.public_key, 7, 5, "eu", 0, signed(O, 7, 5).signature),  # region changed
    lambda: RouteUpdate(EVIL.public_key, 7, 5, "", 0, signed(O, 7, 5).signature),  # origin swapped
    lambda: RouteUpdate(O.public_key, 7, INFINITY, "", 0, signed(O, 7, 5, signer=EVIL).signature),
])
def test_forged_updates_are_rejected_counted_and_change_nothing(forged):
    r = make()
    feed(r, A, signed(O, 7, 5))
    before_rows, before_fib = r.routes(), r.fib()
    assert feed(r, B, forged()) == []
    assert r.counters["bad_signature"] == 1
    assert r.routes() == before_rows and r.fib() is before_fib


def test_metric_and_flags_are_not_signed_so_relays_may_change_them():
    r = make()
    feed(r, A, signed(O, 7, 5))
    upd = signed(O, 7, 5)
    relayed = RouteUpdate(O.public_key, 7, 40, "", 1, upd.signature)
    feed(r, B, relayed)
    assert r.counters["bad_signature"] == 0 and len(r.routes()) == 2


def test_frames_from_unknown_neighbours_are_ignored_and_counted():
    r = make()
    assert feed(r, C, signed(O, 1, 1)) == [] and r.counters["unknown_neighbour"] == 1
    assert r.fib() == {}


def test_own_route_is_announced_to_a_new_neighbour():
    r = Router(ME, rng=random.Random(3), now=0.0)
    out = sends(r.handle(NeighbourUp(A.node_id, A.public_key), 0.0))
    [(nb, m)] = out
    assert nb == A.node_id and m.origin_pub == ME.public_key and m.metric == 0
    assert m.seqno == r.seqno


def test_route_request_gets_a_full_dump():
    r = make()
    feed(r, A, signed(O, 1, 5))
    out = sends(feed(r, B, RouteRequest()))
    assert {m.origin_pub for _, m in out} == {ME.public_key, O.public_key}


# ---------------------------------------------------------------- feasibility
def test_feasibility_condition_table():
    assert feasible(None, 5, 100)                 # no source entry
    assert feasible((5, 10), 4, INFINITY)         # retraction
    assert feasible((5, 10), 6, 1000)             # newer seqno
    assert feasible((5, 10), 5, 9)                # equal seqno, metric < FD
    assert not feasible((5, 10), 5, 10)           # equal metric is not enough
    assert not feasible((5, 10), 4, 1)            # older seqno
    assert feasible((0xFFFF, 10), 0, 50)          # newer across the wrap
    assert not feasible((0, 10), 0xFFFF, 1)       # older across the wrap


@given(st.integers(0, 0xFFFF), st.integers(1, 0x7FFF), st.integers(0, INFINITY - 1),
       st.integers(0, INFINITY - 1))
def test_feasibility_across_wrap_property(s, step, fd, metric):
    newer, older = (s + step) & 0xFFFF, (s - step) & 0xFFFF
    assert feasible((s, fd), newer, metric)
    assert not feasible((s, fd), older, metric)
    assert feasible((s, fd), s, metric) == (metric < fd)


def test_infeasible_update_is_kept_not_selected_and_starvation_sends_seqno_request():
    r = make()
    feed(r, A, signed(O, 1, 10))                  # metric 20, FD (1, 20)
    feed(r, B, signed(O, 1, 25))                  # advertised 25 >= FD 20: infeasible
    assert r.counters["infeasible"] == 1
    rows = {row["next_hop"]: row for row in r.routes()}
    assert rows[B.node_id.hex()]["feasible"] is False and rows[A.node_id.hex()]["selected"]
    assert r.explain(O.node_id)["alternatives"][0]["ruled_out"] == "infeasible"
    acts = feed(r, A, signed(O, 1, INFINITY), now=1.0)   # A retracts
    assert r.fib() == {}                                  # B stays unusable
    retractions = sends(acts)
    assert retractions and all(m.metric == INFINITY for _, m in retractions)
    reqs = sends(acts, SeqnoRequest)
    assert {nb for nb, _ in reqs} == {A.node_id, B.node_id}
    assert all(m.origin == O.node_id and m.seqno == 2 for _, m in reqs)
    # No answer (the request was lost): the request is retried at the next ticks,
    # not only when B happens to refresh its route.
    retried = []
    while (t := r.next_deadline()) < 12.0:
        retried += [t for _, m in sends(r.on_timer(t), SeqnoRequest) if m.origin == O.node_id]
    assert len(retried) >= 2 and retried[0] >= 1.0 + r.update_interval
    feed(r, B, signed(O, 2, 25), now=12.0)        # the origin's newer seqno arrives via B
    assert dict(r.fib()) == {O.node_id: B.node_id}
    assert not any(m.origin == O.node_id for _, m in sends(r.on_timer(r.next_deadline()),
                                                           SeqnoRequest))


def test_a_selected_route_whose_metric_rises_past_the_fd_is_kept_not_retracted():
    r = make(neighbours=((A, 10), (B, 10)))
    feed(r, A, signed(O, 1, 10))                  # via A: 20, advertised: FD (1, 20)
    feed(r, B, signed(O, 1, 40))                  # via B: 50, infeasible
    acts = feed(r, A, signed(O, 1, 30), now=1.0)  # A's own path got worse: 30 >= FD 20
    assert r.fib()[O.node_id] == A.node_id        # kept: only switching needs feasibility
    out = sends(acts)
    assert out and all(m.metric == 40 for _, m in out)   # the true metric, not a retraction
    assert r.source(O.node_id) == (1, 20)         # the FD does not rise
    assert r.explain(O.node_id)["selected"]["feasible"] is False   # shown as kept
    assert sends(acts, SeqnoRequest) == []        # nothing better is blocked (B: 50 > 40)
    feed(r, B, signed(O, 1, 5), now=2.0)          # feasible (5 < 20) and clearly better
    assert r.fib()[O.node_id] == B.node_id
    acts = feed(r, B, signed(O, 1, INFINITY), now=3.0)
    assert r.fib() == {}                          # A's infeasible route is not taken back
    assert {m.metric for _, m in sends(acts)} == {INFINITY}


def test_equal_seqno_better_metric_is_feasible():
    r = make(neighbours=((A, 10), (B, 1)))
    feed(r, A, signed(O, 1, 10))                  # FD 20
    feed(r, B, signed(O, 1, 15))                  # 15 < 20: feasible, metric 16 -> switch
    assert dict(r.fib()) == {O.node_id: B.node_id}


# ---------------------------------------------------------------- selection, hysteresis
def test_hysteresis_keeps_current_route_unless_clearly_better():
    r = make(neighbours=((A, 1), (B, 1)))
    feed(r, A, signed(O, 1, 99))                  # metric 100
    feed(r, B, signed(O, 2, 96))                  # metric 97: 3% better, stays on A
    assert r.fib()[O.node_id] == A.node_id
    assert r.explain(O.node_id)["alternatives"][0]["ruled_out"] == "hysteresis"
    feed(r, B, signed(O, 2, 90))                  # metric 91: 9% better: switch
    assert r.fib()[O.node_id] == B.node_id


def test_no_flapping_between_two_paths_within_a_few_percent():
    r = make(neighbours=((A, 50), (B, 50)))
    feed(r, A, signed(O, 1, 50))
    feed(r, B, signed(O, 1, 49))
    version = r.fib().version
    rng = random.Random(5)
    for step in range(200):
        r.handle(LinkCostChanged(A.node_id, 50 * rng.uniform(0.98, 1.02)), step)
        r.handle(LinkCostChanged(B.node_id, 50 * rng.uniform(0.98, 1.02)), step)
        feed(r, A, signed(O, 1 + step // 10, 50), now=step)
        feed(r, B, signed(O, 1 + step // 10, 49), now=step)
    assert r.fib().version == version


def test_a_retracted_current_route_is_replaced_without_hysteresis():
    r = make(neighbours=((A, 1), (B, 1)))
    feed(r, A, signed(O, 1, 9))
    feed(r, B, signed(O, 2, 9))                   # same metric: stays A
    assert r.fib()[O.node_id] == A.node_id
    feed(r, A, signed(O, 1, INFINITY))
    assert r.fib()[O.node_id] == B.node_id
    assert r.explain(O.node_id)["alternatives"][0]["ruled_out"] == "retracted"


def test_locality_prefers_a_route_that_never_left_the_region():
    r = make(region="eu")
    feed(r, A, signed(O, 1, 1, region="eu", flags=1))   # crossed, metric 11
    acts = feed(r, B, signed(O, 1, 490, region="eu"), now=1.0)  # stayed in eu, metric 500
    # 490 >= FD 11: infeasible for now, but it would win: ask B for a newer seqno
    assert sends(acts, SeqnoRequest) == [(B.node_id, SeqnoRequest(O.node_id, 2, 127))]
    assert r.fib()[O.node_id] == A.node_id
    feed(r, B, signed(O, 2, 490, region="eu"), now=2.0)
    assert r.fib()[O.node_id] == B.node_id
    feed(r, A, signed(O, 2, 1, region="eu", flags=1), now=3.0)  # cheaper but crossed
    assert r.fib()[O.node_id] == B.node_id
    ex = r.explain(O.node_id)
    assert ex["selected"]["crossed"] is False and ex["alternatives"][0]["ruled_out"] == "locality"


def test_without_a_region_plain_metric_applies():
    r = make(region="")
    feed(r, A, signed(O, 1, 1, region="eu", flags=1))
    feed(r, B, signed(O, 1, 490, region="eu"))
    assert r.fib()[O.node_id] == A.node_id


def test_locality_only_for_destinations_in_our_region():
    r = make(region="us")
    feed(r, A, signed(O, 1, 1, region="eu", flags=1))
    feed(r, B, signed(O, 1, 490, region="eu"))
    assert r.fib()[O.node_id] == A.node_id


def test_a_new_seqno_goes_at_once_only_to_who_asked_or_has_a_worse_route_the_rest_later():
    D = O3                                                                 # a 4th neighbour
    r = make(neighbours=((A, 10), (B, 10), (C, 10), (D, 10)), update_interval=4.0)
    feed(r, A, signed(O, 3, 5))                                            # via A: 15
    for nb in (B, C, D):
        feed(r, nb, signed(O, 3, 8))                                       # their own: 8
    feed(r, D, signed(O, 3, 900))            # D's route went bad: 900 > 15 + 10 via us
    assert sends(feed(r, B, SeqnoRequest(O.node_id, 4, 5), 1.0), SeqnoRequest)  # to A
    acts = feed(r, A, signed(O, 4, 5), now=1.1)                            # the answer
    assert sorted(nb for nb, m in sends(acts) if m.seqno == 4) == sorted([B.node_id, D.node_id])
    feed(r, D, signed(O, 4, 8), now=1.15)                                  # D is fine again
    acts = feed(r, A, signed(O, 5, 5), now=1.2)                            # nobody asked
    assert sends(acts) == []
    told = set()
    while len(told) < 4 and (t := r.next_deadline()) < 60.0:               # the paced refresh
        told |= {nb for nb, m in sends(r.on_timer(t)) if m.origin_pub == O.public_key
                 and m.seqno == 5}
    assert told == {A.node_id, B.node_id, C.node_id, D.node_id}
    acts = feed(r, A, signed(O, 6, 50), now=t + 0.1)                       # metric 60: +300 %
    assert {nb for nb, m in sends(acts)} == {A.node_id, B.node_id, C.node_id, D.node_id}


@pytest.mark.parametrize("my_region,origin_region,in_flags,out_flags", [
    ("eu", "eu", 0, 0),   # stays inside the origin's region
    ("us", "eu", 0, 1),   # we are outside the origin's region: we set the flag
    ("eu", "eu", 1, 1),   # crossed earlier: the flag sticks
    ("", "", 0, 0),       # no regions at all
])
def test_crossed_flag_on_forwarded_updates(my_region, origin_region, in_flags, out_flags):
    r = make(region=my_region)
    acts = feed(r, A, signed(O, 1, 5, region=origin_region, flags=in_flags))
    assert {m.flags for _, m in sends(acts)} == {out_flags}


# ---------------------------------------------------------------- updates, expiry
def test_periodic_updates_are_jittered_and_carry_own_and_selected_routes():
    r = make(update_interval=4.0)
    feed(r, A, signed(O, 1, 5))
    t = r.next_deadline()
    assert 3.6 <= t <= 4.4
    acts = r.on_timer(t)
    got = {(nb, m.origin_pub) for nb, m in sends(acts)}
    assert got == {(n.node_id, o.public_key) for n in (A, B) for o in (ME, O)}
    t2 = r.next_deadline()
    assert 3.6 <= t2 - t <= 4.4 and t2 - t != pytest.approx(t)
    other = Router(ME, rng=random.Random(2), now=0.0)
    assert other.next_deadline() != pytest.approx(t)


def test_triggered_update_only_on_significant_metric_change():
    r = make(neighbours=((A, 100), (B, 100)))
    feed(r, A, signed(O, 1, 100))                      # metric 200
    assert sends(r.handle(LinkCostChanged(A.node_id, 103), 1.0)) == []   # 203: 1.5%
    out = sends(r.handle(LinkCostChanged(A.node_id, 160), 2.0))         # 260: 30%
    assert out and all(m.metric == 260 for _, m in out)


def test_a_gained_route_is_repeated_in_the_next_refresh_round_ahead_of_the_ring():
    r = make(update_interval=4.0)
    others = [Identity(bytes([50 + i]) * 32) for i in range(40)]
    for o in others:                                   # a ring of 41 routes: 3 rounds of 16
        feed(r, A, signed(o, 1, 5))
    while (t := r.next_deadline()) < 10.0:             # let the gains of t=0 be repeated
        r.on_timer(t)
    acts = feed(r, A, signed(O, 1, 5), now=t)          # gained: triggered to A and B
    assert {nb for nb, m in sends(acts) if m.origin_pub == O.public_key} == {A.node_id, B.node_id}
    # A frame-dropping carrier may have lost it: it goes again in the very next round,
    # not after the 41 routes ahead of it in the ring
    out = sends(r.on_timer(r.next_deadline()))
    assert {nb for nb, m in out if m.origin_pub == O.public_key} == {A.node_id, B.node_id}
    assert len(out) == 2 * (r.refresh_batch + 1)       # on top of the paced batch


def test_routes_expire_after_hold_time_and_are_retracted_then_removed():
    r = make(update_interval=4.0)                      # hold time 14 s
    feed(r, A, signed(O, 1, 5), now=0.0)
    for t in (4.0, 8.0, 12.0):                         # periodic dumps; no refresh from A
        assert O.node_id in r.fib()
        r.on_timer(t)
    acts = r.on_timer(14.0)
    assert r.fib() == {}
    assert all(m.metric == INFINITY for _, m in sends(acts) if m.origin_pub == O.public_key)
    assert [n.removed for n in notices(acts)] == [(O.node_id,)]
    assert r.explain(O.node_id)["alternatives"][0]["ruled_out"] == "expired"
    r.on_timer(28.0)
    assert r.routes() == [] and r.explain(O.node_id)["reason"] == "no route"


def test_refreshed_route_does_not_expire():
    r = make(update_interval=4.0)
    for t in range(0, 40, 4):
        feed(r, A, signed(O, 1, 5), now=float(t))
        r.on_timer(float(t))
    assert O.node_id in r.fib()


def test_neighbour_down_reroutes_or_retracts():
    r = make()
    feed(r, A, signed(O, 1, 5))
    feed(r, B, signed(O, 2, 50))
    r.handle(NeighbourDown(A.node_id), 1.0)
    assert r.fib()[O.node_id] == B.node_id
    acts = r.handle(NeighbourDown(B.node_id), 2.0)
    assert r.fib() == {} and notices(acts)[0].removed == (O.node_id,)


# ---------------------------------------------------------------- seqno requests
def test_seqno_request_for_us_bumps_our_seqno():
    r = make()
    s = r.seqno
    for older_or_equal in ((s - 1) % 65536, s):       # the asker missed ours: answer it
        acts = feed(r, A, SeqnoRequest(ME.node_id, older_or_equal, 5))
        assert r.seqno == s and [(nb, m.seqno) for nb, m in sends(acts)] == [(A.node_id, s)]
    acts = feed(r, A, SeqnoRequest(ME.node_id, (s + 1) % 65536, 5))       # newer: raise, tell all
    assert r.seqno == (s + 1) % 65536
    assert {(nb, m.seqno) for nb, m in sends(acts)} == {(A.node_id, r.seqno), (B.node_id, r.seqno)}
    feed(r, A, SeqnoRequest(ME.node_id, (s + 10) % 65536, 5))             # jump to it
    assert r.seqno == (s + 10) % 65536


def test_seqno_request_for_another_origin_is_answered_or_forwarded_once():
    r = make()
    feed(r, A, signed(O, 3, 5))
    [(nb, m)] = sends(feed(r, B, SeqnoRequest(O.node_id, 3, 5)))           # we have seqno 3
    assert nb == B.node_id and m.seqno == 3
    [(nb, m)] = sends(feed(r, B, SeqnoRequest(O.node_id, 4, 5), 1.0), SeqnoRequest)
    assert nb == A.node_id and m == SeqnoRequest(O.node_id, 4, 4)
    assert feed(r, B, SeqnoRequest(O.node_id, 4, 5), 2.0) == []            # duplicate: dropped
    assert feed(r, B, SeqnoRequest(O.node_id, 5, 1), 2.0) == []            # hop count spent


# ---------------------------------------------------------------- table bound, views
def test_table_is_bounded_and_drops_the_worst():
    r = make(neighbours=((A, 1),), max_routes=2)
    feed(r, A, signed(O, 1, 10))
    feed(r, A, signed(O2, 1, 50))
    feed(r, A, signed(O3, 1, 20))                      # evicts O2 (worst)
    assert set(r.fib()) == {O.node_id, O3.node_id}
    feed(r, A, signed(O2, 1, 500))                     # worse than all: dropped
    assert set(r.fib()) == {O.node_id, O3.node_id} and r.counters["table_full"] == 1


def test_fib_is_immutable_versioned_and_rebuilt_only_on_change():
    r = make()
    f0 = r.fib()
    assert isinstance(f0, Fib) and f0.version == 0
    feed(r, A, signed(O, 1, 5))
    f1 = r.fib()
    assert f1.version == 1 and f0 == {}
    feed(r, A, signed(O, 1, 5), now=1.0)              # refresh, same next hop
    assert r.fib() is f1
    with pytest.raises(TypeError):
        f1[O.node_id] = B.node_id


def test_routes_rows_and_explain_fields():
    r = make()
    feed(r, A, signed(O, 1, 5, region="eu"), now=1.0)
    [row] = r.routes(now=3.0)
    assert row == {"destination": O.node_id.hex(), "address": str(O.address),
                   "next_hop": A.node_id.hex(), "metric": 15, "seqno": 1, "age": 2.0,
                   "region": "eu", "crossed": False, "feasible": True, "selected": True}
    ex = r.explain(O.node_id)
    assert ex["selected"]["next_hop"] == A.node_id.hex() and ex["last_change"] == 1.0
    assert ex["selected"]["feasible"] is True
    assert "update" in ex["reason"]


# ---------------------------------------------------------------- networks
class Net:
    """Routers over a graph; frames are encoded, decoded and delivered after ``delay``."""

    def __init__(self, n, seed=0, delay=0.005, **kw):
        self.ids = [Identity(bytes([100 + i]) * 32) for i in range(n)]
        self.rng = random.Random(seed)
        self.routers = [Router(ident, rng=random.Random(seed * 1000 + i), now=0.0, **kw)
                        for i, ident in enumerate(self.ids)]
        self.index = {ident.node_id: i for i, ident in enumerate(self.ids)}
        self.links: dict[frozenset, float] = {}
        self.queue: list = []
        self.seq = 0
        self.now = 0.0
        self.delay = delay
        self.on_step = None

    def _run(self, i, actions):
        for a in actions:
            if isinstance(a, SendToNeighbour):
                j = self.index[a.node_id]
                frame = wire.encode_frame(a.msg)
                self.seq += 1
                heapq.heappush(self.queue, (self.now + self.delay, self.seq, i, j, frame))

    def link(self, i, j, cost):
        self.links[frozenset((i, j))] = cost
        for x, y in ((i, j), (j, i)):
            r = self.routers[x]
            peer = self.ids[y]
            self._run(x, r.handle(NeighbourUp(peer.node_id, peer.public_key), self.now))
            self._run(x, r.handle(LinkCostChanged(self.ids[y].node_id, cost), self.now))

    def cost(self, i, j, cost):
        self.links[frozenset((i, j))] = cost
        for x, y in ((i, j), (j, i)):
            event = LinkCostChanged(self.ids[y].node_id, cost)
            self._run(x, self.routers[x].handle(event, self.now))

    def unlink(self, i, j):
        del self.links[frozenset((i, j))]
        for x, y in ((i, j), (j, i)):
            self._run(x, self.routers[x].handle(NeighbourDown(self.ids[y].node_id), self.now))

    def run(self, duration):
        end = self.now + duration
        while True:
            deadlines = [(r.next_deadline(), i) for i, r in enumerate(self.routers)]
            t_timer, who = min(deadlines)
            t_msg = self.queue[0][0] if self.queue else float("inf")
            t = min(t_timer, t_msg)
            if t > end:
                break
            self.now = t
            if t_msg <= t_timer:
                _, _, i, j, frame = heapq.heappop(self.queue)
                if frozenset((i, j)) in self.links:   # a frame on a removed link is lost
                    self._run(j, self.routers[j].handle(
                        FrameFromNeighbour(self.ids[i].node_id, wire.decode_frame(frame)), t))
            else:
                self._run(who, self.routers[who].on_timer(t))
            if self.on_step:
                self.on_step()
        self.now = end

    def hop(self, i, j):
        nh = self.routers[i].fib().get(self.ids[j].node_id)
        return None if nh is None else self.index[nh]

    def path(self, i, j):
        seen, at = [i], i
        while at != j:
            at = self.hop(at, j)
            if at is None:
                return None
            assert at not in seen, f"loop {seen + [at]}"
            seen.append(at)
        return seen

    def check_loops(self):
        for i in range(len(self.routers)):
            for j in range(len(self.routers)):
                if i != j:
                    self.path(i, j)


def test_line_of_five_converges_to_the_right_next_hops():
    net = Net(5)
    for i in range(4):
        net.link(i, i + 1, 10)
    net.run(2.0)
    for i in range(5):
        for j in range(5):
            if i != j:
                assert net.hop(i, j) == (i + 1 if j > i else i - 1)
    assert {row["metric"] for row in net.routers[0].routes()} == {10, 20, 30, 40}
    net.unlink(3, 4)                                    # the end node leaves
    net.run(0.5)                                        # far less than the 14 s hold time:
    for i in range(4):                                  # retractions, not expiry, did this
        assert net.hop(i, 4) is None
        assert net.path(i, 3) is not None


def test_diamond_picks_the_cheaper_side_and_reroutes_when_a_node_goes():
    net = Net(4)                                        # 0=A 1=B 2=C 3=D
    net.link(0, 1, 10); net.link(1, 3, 10)
    net.link(0, 2, 30); net.link(2, 3, 30)
    net.run(2.0)
    assert net.path(0, 3) == [0, 1, 3] and net.path(3, 0) == [3, 1, 0]
    net.unlink(0, 1); net.unlink(1, 3)                  # B leaves
    net.run(2.0)
    assert net.path(0, 3) == [0, 2, 3] and net.path(3, 0) == [3, 2, 0]
    assert net.hop(0, 1) is None


def test_diamond_follows_a_cost_change():
    net = Net(4)
    net.link(0, 1, 10); net.link(1, 3, 10)
    net.link(0, 2, 30); net.link(2, 3, 30)
    net.run(2.0)
    net.cost(0, 1, 200)
    net.run(20.0)
    assert net.path(0, 3) == [0, 2, 3]


@pytest.mark.parametrize("seed", [42, 7])
def test_no_loops_under_random_cost_changes_and_removals(seed):
    n = 8
    net = Net(n, seed=seed, update_interval=1.0)
    rng = random.Random(seed)
    edges = [(i, (i + 1) % n) for i in range(n)] + [(0, 3), (1, 5), (2, 6), (4, 7), (3, 7)]
    for i, j in edges:
        net.link(i, j, rng.uniform(1, 50))
    net.on_step = net.check_loops                       # invariant on every event
    net.run(3.0)
    for _ in range(150):
        i, j = rng.choice(edges)
        roll = rng.random()
        if frozenset((i, j)) not in net.links:
            net.link(i, j, rng.uniform(1, 50))
        elif roll < 0.25:
            net.unlink(i, j)
        else:
            net.cost(i, j, rng.uniform(1, 80))
        net.run(rng.uniform(0.0, 1.5))
    for i, j in edges:                                  # heal, then everyone reaches everyone
        if frozenset((i, j)) not in net.links:
            net.link(i, j, 10)
    net.run(3.0)                                        # T10: within 3 update intervals
    for i in range(n):
        for j in range(n):
            if i != j:
                assert net.path(i, j) is not None, (i, j)
    net.run(5.0)
    versions = [r.fib().version for r in net.routers]
    net.run(20.0)                                       # no flaps once converged
    assert [r.fib().version for r in net.routers] == versions


def test_routes_changed_notice_crosses_the_bus_codec():
    from sporenet.protocols.notices import notice_class
    from sporenet.transports.bus_codec import decode_notice, encode_notice
    assert notice_class("router.routes_changed") is RoutesChanged
    n = RoutesChanged(3, 2, (O.node_id,), (), (A.node_id,))
    assert decode_notice(*encode_notice(n)) == n


def test_our_own_route_from_a_neighbour_is_not_installed_but_a_newer_seqno_is_outbid():
    r = make()
    s = r.seqno
    assert feed(r, A, signed(ME, s, 5)) == [] and r.routes() == []
    acts = feed(r, A, signed(ME, (s + 100) % 65536, 5))   # announced before a restart
    assert r.seqno == (s + 101) % 65536 and r.routes() == []
    assert {m.seqno for _, m in sends(acts)} == {r.seqno}


def test_non_routing_frames_are_ignored():
    from sporenet.protocols.link.messages import Probe
    r = make()
    assert feed(r, A, Probe(1)) == []


def test_link_costs_are_rounded_floored_at_one_and_capped():
    r = make(neighbours=((A, 0.2),))
    feed(r, A, signed(O, 1, 5))
    assert r.routes()[0]["metric"] == 6
    r.handle(LinkCostChanged(A.node_id, float("inf")), 1.0)
    assert r.routes()[0]["metric"] == INFINITY - 1 and O.node_id in r.fib()
    r.handle(LinkCostChanged(A.node_id, 12.6), 2.0)
    assert r.routes()[0]["metric"] == 18


def test_constructor_refuses_bad_arguments():
    from sporenet.protocols.errors import LocalProtocolError
    for kw in ({"region": "r" * 33}, {"update_interval": 0}, {"max_routes": 0}):
        with pytest.raises(LocalProtocolError):
            Router(ME, rng=random.Random(1), now=0.0, **kw)


def test_next_deadline_is_the_earliest_expiry_and_follows_changes():
    r = make(update_interval=100.0, hold_time=10.0)
    feed(r, A, signed(O, 1, 5), now=1.0)
    assert r.next_deadline() == 11.0
    feed(r, A, signed(O, 1, 5), now=3.0)               # refresh moves the expiry to 13
    # The heap keeps one entry per destination, scheduled at 11: that early wake-up
    # (allowed by the protocol contract) expires nothing and reschedules at 13.
    assert r.next_deadline() in (11.0, 13.0)
    assert r.on_timer(r.next_deadline()) == [] and r.fib()[O.node_id] == A.node_id
    assert r.next_deadline() == 13.0
    r.on_timer(13.0)                                    # expired: kept until 23 for explain
    assert O.node_id not in r.fib()
    assert r.next_deadline() == 23.0
    r.on_timer(23.0)
    assert r.routes(23.0) == [] and r.next_deadline() == r._next_update  # noqa: SLF001


def test_each_route_of_a_destination_expires_at_its_own_time():
    r = make(update_interval=100.0, hold_time=10.0, neighbours=((A, 10), (B, 30)))
    feed(r, A, signed(O, 1, 5), now=0.0)                 # via A: 15, expires at 10
    feed(r, B, signed(O, 1, 5), now=4.0)                 # via B: 35 (feasible), expires at 14
    assert r.fib()[O.node_id] == A.node_id
    while (t := r.next_deadline()) <= 10.0:
        r.on_timer(t)
    assert r.fib()[O.node_id] == B.node_id               # A's expired, B's still held
    while (t := r.next_deadline()) <= 14.0:
        r.on_timer(t)
    assert O.node_id not in r.fib()
    assert [a["ruled_out"] for a in r.explain(O.node_id)["alternatives"]] == ["expired"] * 2
    while (t := r.next_deadline()) <= 24.0:
        r.on_timer(t)
    assert r.routes(24.0) == []


def test_announced_interval_sets_the_hold_time():
    r = make(update_interval=4.0)                       # own hold time 14 s
    upd = signed(O, 1, 5)
    feed(r, A, RouteUpdate(upd.origin_pub, 1, 5, "", 0, upd.signature, interval=1000), now=0.0)
    r.on_timer(14.0)
    assert r.fib()[O.node_id] == A.node_id              # 3.5 x 100 s, not 14 s
    r.on_timer(349.0)
    assert r.fib()[O.node_id] == A.node_id
    r.on_timer(350.0)
    assert O.node_id not in r.fib()


def test_periodic_refresh_is_paced_so_idle_traffic_does_not_grow_with_the_table():
    sent = {}
    for n in (4, 200):
        r = make(update_interval=4.0)
        for i in range(n):  # announced interval 100 s: held 350 s without refresh
            upd = signed(Identity(bytes([i % 256, 1 + i // 256]) * 16), 1, 5)
            feed(r, A, RouteUpdate(upd.origin_pub, 1, 5, "", 0, upd.signature, interval=1000))
        count, t = 0, 0.0
        while (t := r.next_deadline()) <= 300.0:
            count += len(sends(r.on_timer(t)))
        sent[n] = count - 2 * n  # the first round repeats the n gained routes once (news)
    rounds = 300 / (4.0 * 1.1), 300 / (4.0 * 0.9) + 1
    # 4 routes + our own fit in one batch: each round sends all 5 to both neighbours.
    # 200 routes + ours take 13 rounds: each round sends one batch of 16, not the table.
    assert sent[4] <= 5 * 2 * rounds[1]
    assert 16 * 2 * (rounds[0] - 1) <= sent[200] <= 16 * 2 * rounds[1]
    r200 = r
    upd = sends(r200.on_timer(r200.next_deadline()))[0][1]
    assert upd.interval >= 10 * 4.0 * 13  # promises a full cycle, at least


def test_small_cost_changes_are_damped_large_ones_reroute():
    r = make(neighbours=((A, 100), (B, 100)))
    feed(r, A, signed(O, 1, 0))
    assert r.fib()[O.node_id] == A.node_id and r.routes()[0]["metric"] == 100
    r.handle(LinkCostChanged(A.node_id, 102), 1.0)      # 2 %: ignored, nothing recomputed
    assert r.routes()[0]["metric"] == 100
    r.handle(LinkCostChanged(A.node_id, 110), 2.0)      # 10 %: applied
    assert r.routes()[0]["metric"] == 110


def test_signature_check_is_injectable_and_skipped_for_a_known_signature():
    calls = []

    def counting(pub, msg, sig):
        calls.append(pub)
        return True

    r = make(verify=counting)
    upd = signed(O, 1, 5)
    feed(r, A, upd)
    feed(r, A, upd, now=1.0)                             # same signature: no second check
    feed(r, B, upd, now=1.0)
    assert len(calls) == 1
    # The signature is known, but not for this seqno: checked (a real check refuses it).
    feed(r, A, RouteUpdate(O.public_key, 2, 5, "", 0, upd.signature), now=2.0)
    assert len(calls) == 2
    refuse = make(verify=lambda pub, msg, sig: False)
    feed(refuse, A, upd)
    assert refuse.counters["bad_signature"] == 1 and O.node_id not in refuse.fib()


def test_routes_through_an_unmeasured_link_wait_for_its_first_cost():
    r = make(neighbours=())
    r.handle(NeighbourUp(A.node_id, A.public_key), 0.0)
    feed(r, A, signed(O, 1, 5))
    assert O.node_id not in r.fib()
    assert r.explain(O.node_id)["alternatives"][0]["ruled_out"] == "unmeasured"
    r.handle(LinkCostChanged(A.node_id, 300), 1.0)      # dearer than the 100 guessed
    assert r.fib()[O.node_id] == A.node_id and r.routes()[0]["metric"] == 305



def test_a_selected_route_that_gets_much_worse_asks_for_a_newer_seqno_at_once():
    r = make(neighbours=((A, 10), (B, 10)))
    feed(r, A, signed(O, 1, 10))                        # via A: 20, advertised so FD = 20
    feed(r, B, signed(O, 1, 40))                        # via B: 50, infeasible (40 >= 20)
    assert r.fib()[O.node_id] == A.node_id
    acts = r.handle(LinkCostChanged(A.node_id, 60_000), 5.0)   # A's link turns suspect
    assert r.fib()[O.node_id] == A.node_id              # B is still infeasible...
    assert sends(acts, SeqnoRequest) == [(B.node_id, SeqnoRequest(O.node_id, 2, 127))]  # ...so ask
    feed(r, B, signed(O, 2, 40), now=5.1)               # the origin's answer comes back via B
    assert r.fib()[O.node_id] == B.node_id


def test_a_stale_better_route_asks_for_the_seqno_we_hold_not_a_new_one():
    r = make(neighbours=((A, 10), (B, 10)))
    feed(r, B, signed(O, 1, 10))                        # via B: 20, FD (1, 20)
    r.handle(LinkCostChanged(B.node_id, 100), 1.0)      # via B: 110
    feed(r, A, signed(O, 2, 30), now=2.0)               # a newer seqno via A: 40, selected
    assert r.fib()[O.node_id] == A.node_id and r.source(O.node_id) == (2, 40)
    # B's link recovers: its seqno-1 route (20) is better but older than what we hold
    # (B's seqno-2 update is in flight or was lost). Asking B for seqno 2, which it
    # or a node on its way holds, does not make the origin flood a new seqno.
    acts = r.handle(LinkCostChanged(B.node_id, 10), 5.0)
    assert r.fib()[O.node_id] == A.node_id
    assert sends(acts, SeqnoRequest) == [(B.node_id, SeqnoRequest(O.node_id, 2, 127))]
    feed(r, B, signed(O, 2, 10), now=5.1)               # B's answer: feasible (10 < 40)
    assert r.fib()[O.node_id] == B.node_id


def test_when_the_stale_routes_answer_is_still_infeasible_the_new_seqno_is_asked_at_once():
    r = make(neighbours=((A, 10), (B, 10)))
    feed(r, B, signed(O, 1, 10))                        # via B: 20, FD (1, 20)
    r.handle(LinkCostChanged(B.node_id, 100), 1.0)      # via B: 110
    feed(r, A, signed(O, 2, 30), now=2.0)               # via A: 40, FD (2, 40)
    acts = r.handle(LinkCostChanged(B.node_id, 10), 5.0)   # B's stale route (20) is better
    assert sends(acts, SeqnoRequest) == [(B.node_id, SeqnoRequest(O.node_id, 2, 127))]
    feed(r, B, signed(O, 2, 41), now=5.1)               # the answer: 41 >= FD 40, infeasible
    acts = r.handle(LinkCostChanged(A.node_id, 60_000), 5.2)   # our route turns suspect
    # B's route (51) is now clearly better and blocked: seqno 3 is asked for at once,
    # not an update interval after the request for seqno 2
    assert sends(acts, SeqnoRequest) == [(B.node_id, SeqnoRequest(O.node_id, 3, 127))]


# ---------------------------------------------------------------- contract admission
def test_updates_from_non_member_origins_are_dropped_and_counted():
    members = {ME.public_key, A.public_key, B.public_key, O.public_key}
    r = make(admit=lambda key, now: key in members)
    feed(r, A, signed(O, 7, 5))
    acts = feed(r, A, signed(EVIL, 3, 5))
    assert dict(r.fib()) == {O.node_id: A.node_id}
    assert sends(acts) == [] and r.counters["not_member"] == 1


def test_purge_drops_and_retracts_destinations_no_longer_admitted():
    members = {ME.public_key, A.public_key, B.public_key, O.public_key, O2.public_key}
    r = make(admit=lambda key, now: key in members)
    feed(r, A, signed(O, 7, 5))
    feed(r, B, signed(O2, 3, 5))
    assert r.purge(1.0) == []
    members.discard(O.public_key)
    acts = r.purge(1.0)
    assert dict(r.fib()) == {O2.node_id: B.node_id}
    out = sends(acts)
    assert {nb for nb, _ in out} == {A.node_id, B.node_id}
    assert all(m.origin_pub == O.public_key and m.metric == INFINITY for _, m in out)
    [n] = notices(acts)
    assert isinstance(n, RoutesChanged) and n.removed == (O.node_id,)
    assert r.source(O.node_id) is None
    feed(r, A, signed(O, 8, 5))  # a later update from the revoked origin: still dropped
    assert O.node_id not in dict(r.fib())


def test_purge_without_admit_does_nothing():
    r = make()
    feed(r, A, signed(O, 7, 5))
    assert r.purge(1.0) == [] and dict(r.fib()) == {O.node_id: A.node_id}
