"""``sporenet sessions``: this node's end-to-end sessions, from ``GET /v1/sessions``.

    sporenet sessions [--json]

One row per peer with keys or a handshake under way: the peer's node id (short), its
overlay address, state, age of the session, rekeys, application bytes in and out,
replayed frames dropped and whether the current keys come from an ML-KEM psk (pq).
Then one line on the handshake flood guard: under load or not, msg1s queued, the
Diffie-Hellman operations this node did, and what became of arriving msg1s (dropped
for a bad mac1 on the link's receive path or later, rate-limited per link or per
source, queue full, answered by a cookie reply, answered). ``--json`` has it all
under ``guard``.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from .status import api_option, console, fetch_path, format_duration, json_option


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


def render_guard(guard: dict[str, Any]) -> None:
    i = guard.get("initiations", {})
    console().print(
        f"handshake guard: {'UNDER LOAD' if guard.get('under_load') else 'not under load'}, "
        f"{guard.get('queued', 0)} queued, {guard.get('dh_operations', 0)} DH operations; "
        f"msg1s: bad mac1 {i.get('bad_mac1_screened', 0) + i.get('bad_mac1', 0)}, "
        f"rate-limited {i.get('rate_limited_screened', 0) + i.get('rate_limited_link', 0)}"
        f" link / {i.get('rate_limited_source', 0)} source, queue full {i.get('queue_full', 0)},"
        f" cookie sent {i.get('cookie_sent', 0)}, answered {i.get('answered', 0)}")


@click.command("sessions")
@api_option
@json_option
def command(api: str, as_json: bool) -> None:
    """List this node's end-to-end sessions."""
    data = fetch_path(api, "/v1/sessions")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render(data["sessions"])
        if "guard" in data:
            render_guard(data["guard"])
