"""Simulator topologies: shapes, the world map, determinism, churn and flap schedules."""

import random

import pytest

from sporenet.protocols.errors import LocalProtocolError
from sporenet.sim import geo
from sporenet.sim.clock import VirtualClock
from sporenet.sim.network import NetworkModel
from sporenet.sim.topology import (FailureState, Link, Place, Topology, TopologyEvent, churn_schedule,
                                   flap_schedule, geographic, grid, line, ring, schedule_events)

# -- regular shapes ------------------------------------------------------------------------


def test_line_ring_grid_degrees():
    t = line(10)
    assert t.n == 10 and len(t.links) == 9 and t.is_connected()
    assert t.degrees() == [1] + [2] * 8 + [1]
    r = ring(10)
    assert len(r.links) == 10 and r.degrees() == [2] * 10 and r.link(9, 0) is not None
    g = grid(4, 3)
    assert g.n == 12 and len(g.links) == 3 * 3 + 4 * 2 and g.is_connected()
    deg = g.degrees()
    assert sorted(deg).count(2) == 4 and sorted(deg).count(3) == 6 and sorted(deg).count(4) == 2
    assert deg[0] == 2 and deg[5] == 4  # corner, interior
    assert all(l.latency_ab == l.latency_ba == 0.010 for l in g.links)
    with pytest.raises(LocalProtocolError):
        ring(2)


def test_topology_rejects_bad_links_and_answers_latency_by_direction():
    t = Topology("t", [Place()] * 3, [Link(0, 1, 0.01, 0.03)])
    assert t.latency(0, 1) == 0.01 and t.latency(1, 0) == 0.03 and t.latency(0, 2) is None
    assert not t.is_connected()
    with pytest.raises(LocalProtocolError):
        Topology("t", [Place()] * 3, [Link(0, 1, 0.01, 0.01), Link(1, 0, 0.01, 0.01)])
    with pytest.raises(LocalProtocolError):
        Topology("t", [Place()] * 2, [Link(0, 5, 0.01, 0.01)])


def test_apply_to_installs_links_in_the_network_model():
    t = Topology("t", [Place()] * 3, [Link(0, 1, 0.01, 0.03, 0.1), Link(1, 2, 0.02, 0.02)])
    net = NetworkModel(VirtualClock(), random.Random(1))
    t.apply_to(net, jitter=0.05)
    assert net.link(0, 1).latency == 0.01 and net.link(1, 0).latency == 0.03
    assert net.link(0, 1).loss == 0.1 and net.link(2, 1).jitter == 0.05
    assert net.link(0, 2) is None
    assert t.edges() == [(0, 1, 0.01, 0.03), (1, 2, 0.02, 0.02)]


# -- the world map ---------------------------------------------------------------------------


def test_great_circle_and_latency_are_plausible():
    london = next(c for c in geo.CITIES if c.name == "london")
    ny = next(c for c in geo.CITIES if c.name == "new_york")
    km = geo.great_circle_km(london.lat, london.lon, ny.lat, ny.lon)
    assert 5500 < km < 5600
    one_way = geo.latency_for_km(km)
    assert 0.035 < one_way < 0.045  # real London-New York RTT is ~70-80 ms
    assert geo.latency_for_km(0.0) == geo.HOP_DELAY_S
    assert len({c.region for c in geo.CITIES}) >= 5 and len(geo.CITIES) >= 20


@pytest.fixture(scope="module")
def world():
    return geographic(1000, 6, random.Random(11))


def test_geographic_1000_is_connected_with_degree_4_to_8(world):
    assert world.n == 1000 and world.is_connected()
    assert 4.0 <= world.avg_degree <= 8.0
    assert min(world.degrees()) >= 1
    pairs = {(min(l.a, l.b), max(l.a, l.b)) for l in world.links}
    assert len(pairs) == len(world.links) and all(l.a != l.b for l in world.links)


def test_geographic_places_regions_and_latencies(world):
    regions = world.regions()
    assert sum(len(v) for v in regions.values()) == 1000
    assert {"eu", "na", "asia"} <= set(regions) and len(regions) >= 5
    cities = {c.name: c for c in geo.CITIES}
    for p in world.places:
        assert -90 <= p.lat <= 90 and -180 <= p.lon < 180
        city = cities[p.site]
        assert p.region == city.region
        assert geo.great_circle_km(p.lat, p.lon, city.lat, city.lon) < 2000
    for l in world.links:
        pa, pb = world.places[l.a], world.places[l.b]
        base = geo.latency_for_km(geo.great_circle_km(pa.lat, pa.lon, pb.lat, pb.lon))
        for lat in (l.latency_ab, l.latency_ba):
            assert base * 0.94 <= lat <= base * 1.06
            assert 0.0004 < lat < 0.15  # nothing on Earth is over ~100 ms one way at 1.5x
    # Mostly local links, plus some that cross oceans.
    lats = sorted(l.latency_ab for l in world.links)
    assert lats[len(lats) // 2] < 0.005 and lats[-1] > 0.02


def test_geographic_is_deterministic_and_small_n_works():
    a = geographic(200, 5, random.Random(3))
    assert a.links == geographic(200, 5, random.Random(3)).links
    assert a.places == geographic(200, 5, random.Random(3)).places
    assert a.links != geographic(200, 5, random.Random(4)).links
    for n in (1, 2, 3, 7):
        t = geographic(n, 6, random.Random(n))
        assert t.n == n and t.is_connected()
        assert len(t.links) <= n * (n - 1) // 2


def test_geographic_joins_far_clusters():
    # No long links and degree 2 over far cities: the bridge step must connect it.
    t = geographic(300, 2, random.Random(5), long_fraction=0.0)
    assert t.is_connected()


# -- churn and flaps -----------------------------------------------------------------------


def test_churn_schedule_is_seeded_ordered_and_paired():
    t = ring(100)
    ev = churn_schedule(t, 0.1, 100.0, random.Random(1), start=10.0, downtime=(5.0, 10.0))
    assert ev == churn_schedule(t, 0.1, 100.0, random.Random(1), start=10.0, downtime=(5.0, 10.0))
    assert ev != churn_schedule(t, 0.1, 100.0, random.Random(2), start=10.0, downtime=(5.0, 10.0))
    assert [e.at for e in ev] == sorted(e.at for e in ev)
    downs = [e for e in ev if e.kind == "node_down"]
    assert len(downs) == 10 and len({e.a for e in downs}) == 10
    assert all(10.0 <= e.at < 110.0 for e in ev)
    for up in (e for e in ev if e.kind == "node_up"):
        down = next(e for e in downs if e.a == up.a)
        assert 5.0 <= up.at - down.at <= 10.0


def test_flap_schedule_alternates_per_link():
    t = grid(5, 5)
    ev = flap_schedule(t, 0.2, 60.0, random.Random(7))
    assert ev == flap_schedule(t, 0.2, 60.0, random.Random(7))
    assert [e.at for e in ev] == sorted(e.at for e in ev) and all(e.at < 60.0 for e in ev)
    per_link: dict = {}
    for e in ev:
        assert t.link(e.a, e.b) is not None
        per_link.setdefault((e.a, e.b), []).append(e.kind)
    assert len(per_link) == 8
    for kinds in per_link.values():
        assert kinds[0] == "link_down"
        assert all(k != kinds[i - 1] for i, k in enumerate(kinds) if i)


def test_failure_state_cuts_links_silently_and_restores_loss():
    t = Topology("t", [Place()] * 3, [Link(0, 1, 0.01, 0.01, 0.2), Link(1, 2, 0.01, 0.01)])
    clock = VirtualClock()
    net = NetworkModel(clock, random.Random(1))
    t.apply_to(net)
    state = FailureState(t, net)
    events = [TopologyEvent(1.0, "node_down", 1), TopologyEvent(2.0, "link_down", 2, 1),
              TopologyEvent(3.0, "node_up", 1), TopologyEvent(4.0, "link_up", 1, 2)]
    seen = []
    schedule_events(clock, events, lambda e: (state.apply(e), seen.append(
        (clock.now, net.link(0, 1).loss, net.link(2, 1).loss))))
    clock.run()
    assert seen == [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (3.0, 0.2, 1.0), (4.0, 0.2, 0.0)]
    assert state.down_nodes == set() and state.down_links == set()
