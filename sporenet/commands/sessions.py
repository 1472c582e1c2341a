"""``sporenet sessions``: this node's end-to-end sessions, from ``GET /v1/sessions``.

    sporenet sessions [--json]

One row per peer with keys or a handshake under way: the peer's key (short), its
overlay address, state, age of the session, rekeys, application bytes in and out,
replayed frames dropped and whether the current keys come from an ML-KEM psk (pq).
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from sporenet.api_client import ApiClient, ApiClientError

from .status import api_option, console, format_duration, json_option


def render(rows: list[dict[str, Any]]) -> None:
    out = console()
    if not rows:
        out.print("no sessions")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("peer", "address", "state", "age", "rekeys", "bytes in", "bytes out",
                "replay drops", "pq"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["peer"][:16], r["address"], r["state"], format_duration(r["age"]),
                      str(r["rekeys"]), str(r["bytes_in"]), str(r["bytes_out"]),
                      str(r["replay_drops"]), "on" if r["pq"] else "off")
    out.print(table)


@click.command("sessions")
@api_option
@json_option
def command(api: str, as_json: bool) -> None:
    """List this node's end-to-end sessions."""
    try:
        data = ApiClient(api).get("/v1/sessions")
    except ApiClientError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render(data["sessions"])
