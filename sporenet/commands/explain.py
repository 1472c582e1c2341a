"""``sporenet explain DESTINATION``: why the node routes to DESTINATION the way it does.

Shows the path a trace found (every hop with its link's RTT, loss and cost and that
node's metric to the destination), the selected route, the alternatives with the
rule that ruled each out, and the last change."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from .status import fetch_path


@click.command("explain")
@click.argument("destination")
@click.option("--api", envvar="SPORENET_API", default="127.0.0.1:8990", show_default=True,
              help="HOST:PORT of the node's local API")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON as is")
def command(destination: str, api: str, as_json: bool) -> None:
    """Explain the route to DESTINATION (node id, id prefix or overlay address)."""
    data = fetch_path(api, "/v1/explain", destination=destination)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    sel = data.get("selected")
    console.print(f"destination {data['destination']}")
    if sel is None:
        console.print(f"[red]no usable route[/red] ({data.get('reason')})")
    else:
        console.print(f"selected: next hop {sel['next_hop'][:8]}, metric {sel['metric']}, "
                      f"seqno {sel['seqno']}" + (", crossed regions" if sel.get("crossed") else ""))
        if sel.get("feasible") is False:
            console.print("  kept although its metric rose past what we advertised before: "
                          "switching needs a feasible route or a newer seqno from the origin")
    if data.get("reason"):
        age = data.get("last_change_age_s")
        when = f" ({age:.1f} s ago)" if age is not None else ""
        console.print(f"last change{when}: {data['reason']}")
    console.print(path_table(data))
    table = Table(title="alternatives considered", title_justify="left")
    for col in ("next hop", "metric", "seqno", "ruled out by"):
        table.add_column(col)
    for alt in data.get("alternatives", []):
        table.add_row(alt["next_hop"][:8], str(alt["metric"]), str(alt["seqno"]), alt["ruled_out"])
    console.print(table)


def _num(v, fmt: str) -> str:
    return "?" if v is None else format(v, fmt)


def path_table(data: dict):
    """The per-hop table of ``data["path"]``, or a line saying why there is none."""
    path = data.get("path")
    if path is None:
        return f"path: [yellow]unknown[/yellow] ({data.get('path_error') or 'not traced'})"
    title = f"path ({len(path)} hops, trace round trip {_num(data.get('path_rtt_ms'), '.1f')} ms"
    title += ", truncated)" if data.get("path_truncated") else ")"
    table = Table(title=title, title_justify="left")
    for col in ("hop", "node", "next hop", "link RTT ms", "loss %", "cost", "metric"):
        table.add_column(col, justify="right" if col not in ("node", "next hop") else "left")
    for h in path:
        node = h["node"][:8] if h.get("node") else h["address"]
        loss = None if h.get("loss") is None else h["loss"] * 100
        table.add_row(str(h["hop"]), node, h["next_hop"][:8], _num(h.get("rtt_ms"), ".2f"),
                      _num(loss, ".1f"), _num(h.get("cost"), ".2f"), _num(h.get("metric"), "d"))
    return table
