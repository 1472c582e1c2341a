"""The simulator core: virtual clock, network model, and real protocols at scale."""

import random

import pytest

from sporenet.protocols.errors import LocalProtocolError
from sporenet.sim.clock import VirtualClock
from sporenet.sim.network import NetworkModel, is_connected, random_topology
from sporenet.sim.scenario import build_network, report, run_probe_scenario

# -- clock -------------------------------------------------------------------------


def test_clock_runs_in_time_then_sequence_order():
    clock, seen = VirtualClock(), []
    for when, tag in [(2.0, "c"), (1.0, "a"), (2.0, "d"), (1.0, "b"), (0.5, "first")]:
        clock.call_at(when, lambda tag=tag: seen.append((clock.now, tag)))
    clock.run()
    assert seen == [(0.5, "first"), (1.0, "a"), (1.0, "b"), (2.0, "c"), (2.0, "d")]


def test_clock_run_until_cancel_and_nested_scheduling():
    clock, seen = VirtualClock(), []
    clock.call_later(1.0, lambda: clock.call_later(0.5, lambda: seen.append(clock.now)))
    handle = clock.call_at(1.2, lambda: seen.append("cancelled"))
    handle.cancel()
    clock.run_until(1.4)
    assert seen == [] and clock.now == 1.4 and clock.pending() == 1
    clock.run_until(10.0)
    assert seen == [1.5] and clock.now == 10.0 and clock.events_run == 2
    with pytest.raises(LocalProtocolError):
        clock.call_at(9.0, lambda: None)


# -- network model -----------------------------------------------------------------


def make_net(seed=1, **link):
    clock = VirtualClock()
    net = NetworkModel(clock, random.Random(seed))
    got = {0: [], 1: []}
    for i in (0, 1):
        net.add_node(i, lambda src, data, i=i: got[i].append((clock.now, data)),
                     lambda src, i=i: got[i].append((clock.now, None)))
    net.add_link(0, 1, 0.010, 0.030, **link)
    return clock, net, got


def test_network_delivers_after_per_direction_latency():
    clock, net, got = make_net()
    net.deliver(0, 1, b"x")
    net.deliver(1, 0, b"y")
    clock.run()
    assert got == {1: [(0.010, b"x")], 0: [(0.030, b"y")]}
    assert net.round_trip(0, 1) == pytest.approx(0.040)
    assert net.deliver(0, 7, b"nowhere") is False


def test_network_jitter_keeps_each_direction_fifo():
    clock, net, got = make_net(jitter=5.0)
    for i in range(200):
        clock.call_at(i * 0.001, lambda i=i: net.deliver(0, 1, i.to_bytes(2, "big")))
    clock.run()
    order = [int.from_bytes(d, "big") for _, d in got[1]]
    delays = [t - i * 0.001 for (t, _), i in zip(got[1], order)]
    assert order == list(range(200))
    assert min(delays) >= 0.010 and max(delays) > 0.02


def test_network_loss_is_seeded():
    def run(seed):
        clock, net, got = make_net(seed, loss=0.3)
        kept = [net.deliver(0, 1, b"p") for _ in range(1000)]
        return kept

    assert run(1) == run(1) != run(2)
    assert 250 < run(1).count(False) < 350


def test_random_topology_is_connected_seeded_and_in_range():
    for seed in range(5):
        edges = random_topology(100, 4, random.Random(seed))
        assert is_connected(100, edges)
        assert len(edges) == 200
        assert len({(a, b) for a, b, _, _ in edges}) == 200 and all(a != b for a, b, _, _ in edges)
        assert all(0.0045 <= lat <= 0.165 for _, _, x, y in edges for lat in (x, y))
    assert random_topology(50, 3, random.Random(1)) == random_topology(50, 3, random.Random(1))
    assert random_topology(50, 3, random.Random(1)) != random_topology(50, 3, random.Random(2))
    assert len(random_topology(4, 10, random.Random(1))) == 6  # capped at the full graph


# -- the real protocols on 200 nodes ----------------------------------------------------


@pytest.fixture(scope="module")
def big():
    return run_probe_scenario(n=200, seed=7, duration=30.0)


def test_every_link_comes_up_and_measures_rtt_within_ten_percent(big):
    assert len(big.links) == 400
    assert big.links_up == 400
    for link in big.links:
        assert link.rel_error < 0.10, link
    assert big.frames_dropped == 0


def test_same_seed_same_trace_different_seed_different_trace(big):
    again = run_probe_scenario(n=200, seed=7, duration=30.0)
    assert again.trace_bytes() == big.trace_bytes()
    assert len(big.trace) > 10_000
    other = run_probe_scenario(n=200, seed=8, duration=30.0)
    assert other.trace_bytes() != big.trace_bytes()


def test_loss_is_measured_in_the_simulator():
    sim = build_network(30, seed=3, loss=0.0)
    sim.clock.run_until(5.0)
    for a, b, _, _ in sim.edges:
        sim.network.set_loss(a, b, 0.05)  # per direction: about 9.75% of round trips fail
    sim.clock.run_until(65.0)
    losses = [m.loss for node in sim.nodes for m in node.measured.values()]
    assert len(losses) > 80
    assert 0.06 < sum(losses) / len(losses) < 0.14


def test_partitioned_link_is_declared_dead_on_both_ends_in_bounded_time():
    sim = build_network(10, seed=4)
    sim.clock.run_until(5.0)
    a, b, _, _ = sim.edges[0]
    sim.network.set_loss(a, b, 1.0)
    sim.clock.run_until(20.0)
    downs = [line for line in sim.trace if " down " in line]
    assert len(downs) == 2
    bound = 5.0 + 4 * 1.0 + sim.network.round_trip(a, b)  # dead_after after the last ack
    assert all(float(line.split()[0]) <= bound for line in downs)
    assert all("no probe ack" in line for line in downs)  # each end's own prober noticed
    rep = report(sim, 4, 20.0)
    assert rep.links_up == len(sim.edges) - 1


def test_trace_does_not_depend_on_the_interpreter_hash_seed():
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import hashlib; from sporenet.sim.scenario import run_probe_scenario; "
            "print(hashlib.sha256(run_probe_scenario(n=30, seed=2, duration=8.0)"
            ".trace_bytes()).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, timeout=60)
        digests.add(out.stdout.strip())
    here = run_probe_scenario(n=30, seed=2, duration=8.0).trace_bytes()
    assert digests == {hashlib.sha256(here).hexdigest()}
