"""``sporenet peers``: the node's direct links and how good they are, from its HTTP API."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .status import api_option, console, fetch, format_duration, json_option

COLUMNS = ("NODE", "NAME", "ADDRESS", "ENDPOINT", "DIR", "RTT ms", "JITTER ms", "LOSS", "COST", "UP")


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def peer_row(peer: dict[str, Any]) -> tuple[str, ...]:
    loss = peer.get("loss")
    return (
        str(peer.get("node_id", ""))[:8] or "-",
        peer.get("name") or "-",
        peer.get("address") or "-",
        peer.get("endpoint") or "-",
        "out" if peer.get("outbound") else "in",
        _num(peer.get("rtt_ms"), ".1f"),
        _num(peer.get("jitter_ms"), ".1f"),
        _num(loss * 100, ".1f") + "%" if isinstance(loss, (int, float)) else "-",
        _num(peer.get("cost"), "g"),
        format_duration(peer.get("since_s")),
    )


def render_peers(data: dict[str, Any], out: Console) -> None:
    peers = data.get("peers") or []
    if not peers:
        out.print("no peers")
        return
    table = Table(show_edge=False, box=None, pad_edge=False, header_style="bold")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in ("RTT ms", "JITTER ms", "LOSS", "COST")
                         else "left", no_wrap=True)
    for peer in peers:  # in the API's order
        table.add_row(*peer_row(peer))
    out.print(table)


@click.command("peers")
@api_option
@json_option
def command(api: str, as_json: bool) -> None:
    """List direct peers with their link quality.

    One row per peer: node id (short), name, overlay address, underlay endpoint,
    direction, RTT, jitter, loss, link cost and how long the link has been up.
    """
    data = fetch(api, "peers")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render_peers(data, console())
