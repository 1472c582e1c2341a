"""``sporenet demo``: a local mesh on loopback, no root, no config; exits 0 on success.

Starts three real ``sporenet up`` processes, links them, shows each node's peers
with the RTT, jitter and loss the probers measured, stops one node without
warning and shows the others notice it. Every process it starts is stopped by
its pid, and its temporary directory removed, even when something fails.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from sporenet.local_mesh import LocalMesh, MeshError, wait_for

NAMES = ("alpha", "bravo", "charlie")


def _peers_table(mesh: LocalMesh, title: str) -> Table:
    names = {n.node_id: name for name, n in mesh.nodes.items()}
    table = Table(title=title, title_justify="left")
    for col in ("node", "address", "peer", "direction", "RTT ms", "jitter ms", "loss", "cost"):
        table.add_column(col, justify="right" if col[0].isupper() or col in ("loss", "cost") else "left")
    for name, node in mesh.nodes.items():
        if not node.alive():
            table.add_row(name, node.info["address"], "[red]stopped[/red]", "", "", "", "", "")
            continue
        for p in node.api.peers()["peers"]:
            table.add_row(name, node.info["address"], names.get(p["node_id"], p["node_id"][:8]),
                          "out" if p["outbound"] else "in",
                          f"{p['rtt_ms']:.3f}" if p["rtt_ms"] is not None else "-",
                          f"{p['jitter_ms']:.3f}" if p["jitter_ms"] is not None else "-",
                          f"{p['loss']:.0%}" if p["loss"] is not None else "-",
                          f"{p['cost']:.2f}" if p["cost"] is not None else "-")
    return table


def _measured(node, want: set[str]) -> bool:
    # A few samples, so the smoothed RTT and jitter have settled past the first probe.
    got = {p["node_id"] for p in node.api.peers()["peers"] if p.get("samples", 0) >= 4}
    return want <= got


def run_demo(console: Console, base: Path) -> None:
    mesh = LocalMesh(base, extra_args=("--probe-interval", "0.25"))
    try:
        t0 = time.monotonic()
        console.print(f"[bold]Starting {len(NAMES)} nodes on loopback[/bold] (run dirs under {base})")
        first = mesh.start_node(NAMES[0])
        mesh.start_node(NAMES[1], peers=[first.endpoint])
        mesh.start_node(NAMES[2], peers=[first.endpoint, mesh.nodes[NAMES[1]].endpoint])
        for name, node in mesh.nodes.items():
            console.print(f"  {name:8} {node.info['address']:40} {node.endpoint}  api {node.info['api']}")
        ids = {n.node_id for n in mesh.nodes.values()}
        for name, node in mesh.nodes.items():
            wait_for(lambda: _measured(node, ids - {node.node_id}), 30, f"{name} to measure its links")
        console.print(f"\n[green]Mesh linked and measured in {time.monotonic() - t0:.1f} s[/green]")
        console.print(_peers_table(mesh, "Links, as each node's prober measured them"))

        victim = NAMES[2]
        console.print(f"\n[bold]Stopping {victim} without warning (SIGKILL)[/bold]")
        t1 = time.monotonic()
        mesh.stop_node(victim, sig=9)
        gone = mesh.nodes[victim].node_id
        for name in NAMES[:2]:
            node = mesh.nodes[name]
            wait_for(lambda: gone not in {p["node_id"] for p in node.api.peers()["peers"]}, 30,
                     f"{name} to notice {victim} is gone")
        console.print(f"[green]Both survivors dropped {victim} after {time.monotonic() - t1:.2f} s[/green]")
        console.print(_peers_table(mesh, "Links after the failure"))
        console.print("\nNext: `sporenet keygen` and `sporenet up --help` to run your own node.")
    finally:
        mesh.close()


@click.command("demo")
@click.option("--keep", is_flag=True, help="keep the run directories (logs, node.json) afterwards")
def command(keep: bool) -> None:
    """Run a small local mesh on loopback and show it working (no root needed)."""
    console = Console()
    base = Path(tempfile.mkdtemp(prefix="sporenet-demo-"))
    try:
        run_demo(console, base)
    except MeshError as e:
        raise click.ClickException(f"demo failed: {e} (logs in {base})") from None
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
