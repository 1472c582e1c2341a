"""Routing scenarios: the real LinkTable + Prober + Router on simulated topologies."""

import json

import pytest
from click.testing import CliRunner

from sporenet.sim.routing import make_topology, run_routing_scenario


def test_line_converges_with_stretch_one_and_no_loops():
    report = run_routing_scenario("line", 10, seed=1, duration=15.0, sample_every=1.0)
    s = report.summary()
    assert report.nodes == 10
    assert s["convergence_s"] is not None and s["convergence_s"] <= 10.0
    assert report.reachability == 1.0
    assert len(report.stretch) == 90
    assert all(x == pytest.approx(1.0) for x in report.stretch)
    assert report.total_loops == 0
    assert report.control_bytes_per_node_per_s > 0
    assert report.extra["probe_interval_s"] == 1.0 and report.extra["update_interval_s"] == 2.0


def test_geographic_30_converges_low_stretch_no_loops():
    report = run_routing_scenario("geo", 30, seed=3, duration=20.0, sample_every=1.0)
    s = report.summary()
    assert s["convergence_s"] is not None
    assert report.reachability == 1.0
    assert s["stretch"]["pairs"] == 30 * 29
    assert s["stretch"]["median"] <= 1.05
    assert report.loops_per_sample and all(n == 0 for n in report.loops_per_sample)


def test_same_seed_same_report():
    a = run_routing_scenario("ring", 12, seed=7, duration=10.0, sample_every=1.0)
    b = run_routing_scenario("ring", 12, seed=7, duration=10.0, sample_every=1.0)
    assert a.to_json(detail=True) == b.to_json(detail=True)


def test_flaps_reroute_without_loops():
    report = run_routing_scenario("grid", 16, seed=2, duration=40.0, sample_every=1.0,
                                  flaps=0.2, failures_from=10.0)
    assert report.extra["failure_events"] > 0 and report.failures
    assert report.convergence_s is not None
    assert report.total_loops == 0
    assert report.reroute_s  # reachability came back after at least one failure


def test_unknown_topology():
    import random
    with pytest.raises(ValueError):
        make_topology("torus", 5, random.Random(1))


def test_cli_writes_report_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from sporenet.cli import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["sim", "routing", "--nodes", "9", "--topology", "grid",
                                      "--seed", "1", "--duration", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "stretch" in result.output and "loops" in result.output
    data = json.loads((out / "report.json").read_text())
    assert data["nodes"] == 9 and data["topology"] == "grid3x3"
    assert list(out.glob("*.png"))


def test_churn_no_loops_and_routes_recover():
    report = run_routing_scenario("grid", 16, seed=2, duration=30.0, sample_every=1.0,
                                  churn=0.25, failures_from=10.0)
    assert report.extra["failure_events"] > 0
    assert report.total_loops == 0
    assert report.reroute_s and min(report.reroute_s) < 10.0  # every pair routed again
