"""``sporenet explain DESTINATION``: why the node routes to DESTINATION the way it does."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from sporenet.api_client import ApiClient, ApiClientError


@click.command("explain")
@click.argument("destination")
@click.option("--api", envvar="SPORENET_API", default="127.0.0.1:8990", show_default=True,
              help="HOST:PORT of the node's local API")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON as is")
def command(destination: str, api: str, as_json: bool) -> None:
    """Explain the route to DESTINATION (node id, id prefix or overlay address)."""
    try:
        data = ApiClient(api).get("/v1/explain", destination=destination)
    except ApiClientError as e:
        raise click.ClickException(str(e)) from None
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
    if data.get("reason"):
        console.print(f"last change: {data['reason']}")
    table = Table(title="alternatives considered", title_justify="left")
    for col in ("next hop", "metric", "seqno", "ruled out by"):
        table.add_column(col)
    for alt in data.get("alternatives", []):
        table.add_row(alt["next_hop"][:8], str(alt["metric"]), str(alt["seqno"]), alt["ruled_out"])
    console.print(table)
