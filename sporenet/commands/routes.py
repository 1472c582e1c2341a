"""``sporenet routes``: every destination the node knows, with next hop, metric, seqno and age,
then the router's non-zero counters (e.g. ``bad_signature``: updates refused because the
origin's signature did not verify)."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from .status import fetch_path


@click.command("routes")
@click.option("--api", envvar="SPORENET_API", default="127.0.0.1:8990", show_default=True,
              help="HOST:PORT of the node's local API")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON as is")
@click.option("--all", "show_all", is_flag=True, help="also list routes not selected")
def command(api: str, as_json: bool, show_all: bool) -> None:
    """Show the node's routing table."""
    data = fetch_path(api, "/v1/routes")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"routes (own seqno {data.get('seqno', '-')})", title_justify="left")
    for col in ("destination", "address", "next hop", "metric", "seqno", "age s", "state"):
        table.add_column(col, justify="right" if col in ("metric", "seqno", "age s") else "left")
    for r in sorted(data["routes"], key=lambda r: (r["destination"], not r["selected"])):
        if not (r["selected"] or show_all):
            continue
        state = "selected" if r["selected"] else ("feasible" if r["feasible"] else "infeasible")
        table.add_row(r["destination"][:8], r["address"], r["next_hop"][:8], str(r["metric"]),
                      str(r["seqno"]), f"{r['age']:.1f}", state)
    console = Console()
    console.print(table)
    counters = {k: v for k, v in sorted(data.get("counters", {}).items()) if v}
    if counters:
        console.print("router counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()),
                      highlight=False, soft_wrap=True)
