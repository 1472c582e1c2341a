"""Routing metrics: Dijkstra truth, stretch, loop detection, samples, the report and its plots."""

import json
import math
import random
import time

import pytest

from sporenet.sim.metrics import (LocalitySample, Loop, find_loops, follow_path, path_latency, percentiles,
                                  region_locality, sample_routing, settle_time, shortest_paths, stretch,
                                  walk_destination)
from sporenet.sim.report import RoutingReport
from sporenet.sim.topology import Link, Place, Topology, geographic, grid, ring


def small():
    """
    0 -1ms- 1 -1ms- 2          0->3 direct is 10 ms; 0->1->2->3 is 3 ms.
    |               |          3->0 direct is 2 ms (asymmetric link).
    +-----10/2 ms---3 -1- ... 4 (4 only via 3)
    """
    return Topology("small", [Place()] * 5, [
        Link(0, 1, 0.001, 0.001), Link(1, 2, 0.001, 0.001), Link(2, 3, 0.001, 0.001),
        Link(0, 3, 0.010, 0.002), Link(3, 4, 0.001, 0.005)])


@pytest.mark.parametrize("use_scipy", [False, None])
def test_dijkstra_matches_hand_computed_graph(use_scipy):
    sp = shortest_paths(small(), use_scipy=use_scipy)
    assert sp.latency(0, 3) == pytest.approx(0.003)
    assert sp.path(0, 3) == [0, 1, 2, 3]
    assert sp.latency(3, 0) == pytest.approx(0.002) and sp.path(3, 0) == [3, 0]
    assert sp.latency(0, 4) == pytest.approx(0.004) and sp.path(0, 4) == [0, 1, 2, 3, 4]
    assert sp.latency(4, 0) == pytest.approx(0.007) and sp.path(4, 1) == [4, 3, 2, 1]
    assert sp.path(4, 0) == [4, 3, 0]
    assert sp.latency(2, 2) == 0.0 and sp.next_hop(2, 2) is None and sp.path(2, 2) == [2]
    # Without link 2-3, 0 must take the direct link.
    cut = shortest_paths(small(), down_links=[(3, 2)], use_scipy=use_scipy)
    assert cut.path(0, 4) == [0, 3, 4] and cut.latency(0, 4) == pytest.approx(0.011)
    # Without node 3, node 4 is unreachable.
    gone = shortest_paths(small(), down_nodes=[3], use_scipy=use_scipy)
    assert math.isinf(gone.latency(0, 4)) and gone.path(0, 4) is None and gone.next_hop(0, 4) is None


def test_scipy_and_pure_python_agree_on_a_world_map():
    pytest.importorskip("scipy")
    t = geographic(150, 5, random.Random(2))
    a, b = shortest_paths(t, use_scipy=False), shortest_paths(t, use_scipy=True)
    for src in range(0, 150, 7):
        for dst in range(150):
            assert a.latency(src, dst) == pytest.approx(b.latency(src, dst), rel=1e-9)
            assert path_latency(t, a.path(src, dst)) == pytest.approx(a.latency(src, dst))


def test_stretch_percentiles_and_path_latency():
    assert stretch(0.03, 0.02) == pytest.approx(1.5)
    assert stretch(None, 0.02) == math.inf and stretch(math.inf, 1.0) == math.inf
    assert stretch(0.0, 0.0) == 1.0
    assert percentiles([1, 2, 3, 4, 5]) == {"p50": 3, "p90": pytest.approx(4.6), "p99": pytest.approx(4.96)}
    assert percentiles([], (50,)) == {"p50": None}
    assert percentiles([7.0], (0, 100)) == {"p0": 7.0, "p100": 7.0}
    assert path_latency(small(), [0, 3, 4]) == pytest.approx(0.011)
    assert path_latency(small(), [0, 2]) is None


def test_follow_path_stops_on_dead_end_loop_and_hop_limit():
    table = {(0, 9): 1, (1, 9): 2, (2, 9): 9, (5, 9): 6, (6, 9): 5}
    hop = lambda u, d: table.get((u, d))  # noqa: E731
    assert follow_path(hop, 0, 9, 10) == [0, 1, 2, 9]
    assert follow_path(hop, 0, 9, 2) is None
    assert follow_path(hop, 5, 9, 10) is None  # 5 <-> 6 loop
    assert follow_path(hop, 3, 9, 10) is None  # no route
    assert follow_path(hop, 9, 9, 0) == [9]


def test_find_loops_finds_a_planted_loop_once():
    sp = shortest_paths(ring(12))
    planted = {(4, 0): 5, (5, 0): 6, (6, 0): 4}  # 4 -> 5 -> 6 -> 4 toward 0

    def hop(u, d):
        return planted.get((u, d), sp.next_hop(u, d))

    loops = find_loops(hop, range(12))
    assert loops == [Loop(0, (4, 5, 6))]
    # The loop's nodes are unreachable; the rest route around the ring (hop counts).
    walk = walk_destination(hop, 0, range(12))
    assert all(math.isinf(walk.latency[u]) for u in (4, 5, 6))
    assert [walk.latency[u] for u in (1, 3, 7, 11)] == [1, 3, 5, 1]
    # A chain that runs into a loop is unreachable too (planted 3 -> 4).
    planted[(3, 0)] = 4
    walk = walk_destination(hop, 0, [0, 1, 2, 3, 4, 5, 6, 7])
    assert math.isinf(walk.latency[3]) and walk.latency[2] == 2
    assert walk.loops == [Loop(0, (4, 5, 6))]
    assert find_loops(hop, range(12), destinations=[1, 2]) == []


def test_no_loops_in_dijkstra_next_hops_on_1000_nodes_fast():
    t = geographic(1000, 6, random.Random(4))
    sp = shortest_paths(t)
    started = time.perf_counter()
    assert find_loops(sp.next_hop, range(t.n)) == []
    took = time.perf_counter() - started
    assert took < 30  # 10^6 chains; memoised walks make it ~1-3 s (not a benchmark, a sanity bound)


def test_sample_routing_on_truth_is_perfect_and_counts_breakage():
    t = grid(5, 5)
    sp = shortest_paths(t)
    s = sample_routing(1.0, sp.next_hop, t, sp)
    assert s.pairs == 25 * 24 and s.reachable == s.pairs and s.loops == 0
    assert s.reachability == 1.0 and all(x == pytest.approx(1.0) for x in s.stretch)

    # A FIB that still points over a dead link: chains toward 24 through (23, 24) break.
    cut = shortest_paths(t, down_links=[(23, 24)])

    def stale(u, d):
        hop = sp.next_hop(u, d)
        return None if (u, hop) == (23, 24) else hop

    s2 = sample_routing(2.0, stale, t, cut)
    assert s2.pairs == 25 * 24 and s2.reachable < s2.pairs and s2.loops == 0
    assert 0.9 < s2.reachability < 1.0


def test_settle_time():
    tl = [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.0), (4, 0.8), (5, 1.0), (6, 1.0)]
    assert settle_time(tl, 0.0) == 5.0
    assert settle_time(tl[:4], 0.0) == 2.0
    assert settle_time(tl, 4.0) == 1.0
    assert settle_time([(0, 0.2)], 0.0) is None


def test_report_json_and_plots(tmp_path):
    t = grid(4, 4)
    sp = shortest_paths(t)
    samples = [sample_routing(0.0, lambda u, d: None, t, sp), sample_routing(1.0, sp.next_hop, t, sp)]
    broken = shortest_paths(t, down_nodes=[5])
    nodes = [i for i in range(16) if i != 5]

    def stale(u, d):
        return None if sp.next_hop(u, d) == 5 else sp.next_hop(u, d)

    samples.append(sample_routing(3.0, stale, t, broken, nodes=nodes))
    samples.append(sample_routing(4.5, broken.next_hop, t, broken, nodes=nodes))
    rep = RoutingReport.from_samples("grid4x4", 16, 1, 5.0, samples, control_bytes=8000,
                                     failures=[2.5])
    assert rep.convergence_s == 1.0 and rep.reroute_s == [2.0]
    assert rep.control_bytes_per_node_per_s == 100.0 and rep.reachability == 1.0
    assert rep.loops_per_sample == [0, 0, 0, 0]
    out = json.loads(rep.to_json())
    assert out["stretch"]["median"] == pytest.approx(1.0) and out["loops"]["total"] == 0
    assert out["reroute_s"]["count"] == 1 and out["convergence_s"] == 1.0
    files = rep.write(tmp_path / "out")
    assert [f.name for f in files] == ["report.json", "stretch_cdf.png", "convergence.png",
                                       "reroute_hist.png"]
    for f in files[1:]:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    assert json.loads(files[0].read_text())["timeline"][0] == [0.0, 0.0]


def test_report_plots_with_no_data(tmp_path):
    rep = RoutingReport.from_samples("empty", 0, 1, 1.0, [], control_bytes=0)
    assert rep.convergence_s is None and rep.reachability == 0.0
    assert all(p.exists() for p in rep.plot(tmp_path))
    json.loads(rep.to_json(detail=True))


def test_region_locality_counts_chains_that_leave_their_region():
    # 0,1,2 in "eu" on a line; 3 in "na" bridges 0 and 2 with cheaper links.
    places = [Place(region="eu")] * 3 + [Place(region="na")]
    t = Topology("loc", places, [Link(0, 1, 0.010, 0.010), Link(1, 2, 0.010, 0.010),
                                 Link(0, 3, 0.001, 0.001), Link(3, 2, 0.001, 0.001)])
    sp = shortest_paths(t)
    assert sp.path(0, 2) == [0, 3, 2]
    truth = region_locality(sp.next_hop, t)
    assert truth.pairs == 6 and truth.left_region == 2 and truth.unreachable == 0  # 0<->2 via na
    local = {(0, 2): 1, (2, 0): 1}

    def hop(u, d):
        return local.get((u, d), sp.next_hop(u, d))

    assert region_locality(hop, t) == LocalitySample(6, 0, 0)
    geo = geographic(300, 6, random.Random(9))
    s = region_locality(shortest_paths(geo).next_hop, geo)
    assert s.pairs > 0 and s.unreachable == 0 and s.left_region < s.pairs


def test_shortest_paths_as_matrices_match_the_scalar_view():
    for use_scipy in (False, None):
        sp = shortest_paths(small(), use_scipy=use_scipy)
        dist, nh = sp.matrix(), sp.next_hops()
        assert dist.shape == (5, 5) and nh.shape == (5, 5)
        for src in range(5):
            for dst in range(5):
                assert dist[dst, src] == pytest.approx(sp.latency(src, dst))
                hop = sp.next_hop(src, dst)
                assert nh[src, dst] == (-1 if hop is None else hop)
