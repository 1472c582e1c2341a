"""``sporenet sim``: discrete-event simulations of the real protocol code.

``sporenet sim routing``: run the real LinkTable + Prober + Router on a simulated
topology (``sporenet.sim.routing``), write ``report.json`` and PNG plots into
``--out`` and print a short summary. Needs matplotlib for the plots (extra ``sim``).
"""

from __future__ import annotations

import time

import click


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
def routing(nodes: int, topology: str, seed: int, duration: float, sample_every: float,
            churn: float, flaps: float, out_dir: str) -> None:
    """Run a routing scenario and report convergence, stretch, loops and overhead."""
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
