"""``sporenet sim``: discrete-event simulations of the real protocol code.

``sporenet sim routing``: run the real LinkTable + Prober + Router on a simulated
topology (``sporenet.sim.routing``), write ``report.json`` and PNG plots into
``--out`` and print a short summary. Needs matplotlib for the plots (extra ``sim``).
With ``--scenario NAME`` (repeatable, or ``all``) it runs the routing issue's
scenarios instead (``sporenet.sim.routing_scenarios``: converge, idle, join, cut,
churn, lossy, regions), one plot per scenario.
"""

from __future__ import annotations

import json
import time

import click

SCENARIO_NAMES = ("converge", "idle", "join", "cut", "churn", "lossy", "regions")


@click.group("sim")
def command() -> None:
    """Simulate the overlay's protocols on a virtual clock."""


@command.command("routing")
@click.option("--nodes", "-n", type=click.IntRange(2), default=50, show_default=True)
@click.option("--topology", "-t", type=click.Choice(["line", "ring", "grid", "geo"]), default="geo",
              show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--duration", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="simulated seconds")
@click.option("--sample-every", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="simulated seconds between FIB samples")
@click.option("--churn", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="fraction of nodes that go down once (after a third of the run)")
@click.option("--flaps", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="fraction of links that flap (after a third of the run)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="directory for report.json and the plots")
@click.option("--scenario", "scenarios", multiple=True,
              type=click.Choice(SCENARIO_NAMES + ("all",)),
              help="run these scenarios (repeatable; 'all' for every one) instead of one timed run")
@click.option("--degree", type=click.FloatRange(min=1.0), default=5.0, show_default=True,
              help="average degree of a geo topology (scenarios)")
@click.option("--cuts", type=click.IntRange(1), default=10, show_default=True,
              help="silent link cuts in the cut scenario")
@click.option("--idle-window", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="simulated seconds of the idle traffic window")
@click.option("--churn-window", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="simulated seconds of churn and flaps")
@click.option("--lossy-settle", type=click.FloatRange(min=1.0), default=40.0, show_default=True,
              help="simulated seconds after convergence before lossy-link avoidance is judged "
                   "(the loss estimate needs probes)")
def routing(nodes: int, topology: str, seed: int, duration: float, sample_every: float,
            churn: float, flaps: float, out_dir: str, scenarios: tuple[str, ...], degree: float,
            cuts: int, idle_window: float, churn_window: float, lossy_settle: float) -> None:
    """Run a routing scenario and report convergence, stretch, loops and overhead."""
    if scenarios:
        names = SCENARIO_NAMES if "all" in scenarios else scenarios
        _run_scenarios(names, out_dir, topology=topology, nodes=nodes, seed=seed,
                       avg_degree=degree, sample_every=sample_every, cuts=cuts,
                       idle_window_s=idle_window, churn_window_s=churn_window,
                       lossy_settle_s=lossy_settle,
                       **({"churn": churn} if churn else {}), **({"flaps": flaps} if flaps else {}))
        return
    from sporenet.sim.routing import run_routing_scenario

    started = time.monotonic()
    report = run_routing_scenario(topology, nodes, seed, duration, sample_every, churn, flaps)
    took = time.monotonic() - started
    written = report.write(out_dir)
    s = report.summary()
    st = s["stretch"]
    conv = s["convergence_s"]
    click.echo(f"{s['topology']}: {s['nodes']} nodes, seed {seed}, {duration:g} s simulated "
               f"in {took:.1f} s wall")
    click.echo(f"  convergence: {'never' if conv is None else f'{conv:g} s'}; "
               f"reachability at end {s['reachability']:.3f}")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    click.echo(f"  stretch: median {fmt(st['median'])}, p90 {fmt(st['p90'])}, p99 {fmt(st['p99'])}")
    click.echo(f"  loops: {s['loops']['total']} over {s['loops']['samples']} samples")
    rr = s["reroute_s"]
    if rr["count"]:
        click.echo(f"  reroute: {rr['count']} failures, p50 {fmt(rr['p50'])} s, p90 {fmt(rr['p90'])} s")
    click.echo(f"  control traffic: {s['control_bytes_per_node_per_s']:.0f} B/node/s")
    click.echo("  wrote " + ", ".join(str(p) for p in written))


def _run_scenarios(names, out_dir: str, **config) -> None:
    from pathlib import Path

    from sporenet.sim.routing_plots import plot_scenarios
    from sporenet.sim.routing_run import Config, run_scenarios

    import logging

    logging.basicConfig(level=logging.INFO, format="    %(message)s")  # per-step progress, stderr
    cfg = Config(**config)
    click.echo(f"{cfg.topology}: {cfg.nodes} nodes, seed {cfg.seed}, scenarios {', '.join(names)}")

    def progress(name: str, r: dict) -> None:
        click.echo(f"  {name}: {_one_line(name, r)} ({r['wall_s']:.1f} s wall, "
                   f"max RSS {r['max_rss_mb']:.0f} MB)")

    result = run_scenarios(cfg, names, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    written = [out / "report.json"] + plot_scenarios(result, out)
    click.echo("  wrote " + ", ".join(str(p) for p in written))


def _one_line(name: str, r: dict) -> str:
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    match name:
        case "converge":
            st = r["stretch"]
            return (f"converged in {f(r['convergence_s'], 1)} s, reachability {f(r['reachability'])}, "
                    f"stretch median {f(st.get('p50'))} p99 {f(st.get('p99'))}, loops {r['loops_total']}")
        case "idle":
            return (f"{f(r['bytes_per_node_per_min']['mean'], 0)} B/node/min, "
                    f"{f(r['bytes_per_peer_per_min']['mean'], 0)} B/peer/min")
        case "join":
            return (f"all nodes have a route after {f(r['all_have_route_s'], 1)} s, "
                    f"all reach it after {f(r['all_reach_s'], 1)} s")
        case "cut":
            return (f"{r['cuts']} cuts: reroute p50 {f(r['reroute_s']['p50'], 2)} s "
                    f"max {f(r['reroute_s']['max'], 2)} s, after detection p50 "
                    f"{f(r['after_detection_s']['p50'], 2)} s, {r['not_rerouted']} not rerouted")
        case "churn":
            return (f"{r['samples']} samples, loops {r['loops_total']}, "
                    f"reachability min {f(r['reachability_min'])} end {f(r['reachability_end'])}")
        case "lossy":
            return (f"{r['eligible_flows']} flows with a loss-free path within +20 %: "
                    f"{f(r['avoided_fraction'])} avoid the lossy links")
        case "regions":
            return (f"{r['in_region_flows']} in-region flows, {r['left_region']} leave their region, "
                    f"{r['unreachable']} unreachable")
    return ""
