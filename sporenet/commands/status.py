"""``sporenet status``: what the local node is, from its HTTP API."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sporenet.api_client import ApiClient, ApiClientError
from sporenet.config import DEFAULT_API

api_option = click.option(
    "--api", default=DEFAULT_API, show_default=True, envvar="SPORENET_API",
    help="HOST:PORT of the node's local API (sporenet up --api).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON as is.")


def fetch(api: str, what: str) -> dict[str, Any]:
    """Call ``ApiClient(api).<what>()``; turn failures into a one-line CLI error."""
    try:
        client = ApiClient(api)
        return getattr(client, what)()
    except ApiClientError as exc:
        raise click.ClickException(str(exc)) from None


def fetch_path(api: str, path: str, **params: str) -> dict[str, Any]:
    """GET ``path`` of the node's API; failures become a one-line CLI error."""
    try:
        return ApiClient(api).get(path, **params)
    except ApiClientError as exc:
        raise click.ClickException(str(exc)) from None


def console() -> Console:
    # Piped output is not cut at 80 columns: scripts and logs want whole lines.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def format_duration(seconds: Any) -> str:
    """``3723.4`` -> ``"1h 02m 03s"``; ``None`` or junk -> ``"-"``."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h:02d}h {m:02d}m"
    if h:
        return f"{h}h {m:02d}m {s:02d}s"
    return f"{m}m {s:02d}s" if m else f"{s}s"


# data path counters that count traffic, not drops (the rest are drop reasons)
_TRAFFIC = frozenset({"packets_out", "bytes_out", "packets_in", "bytes_in", "forwarded",
                      "queued", "session_asked", "icmp_sent", "no_answer_rekey"})


def datapath_line(dp: dict[str, Any] | None) -> str | None:
    """``sporenet0 mtu 1420, offload: 10 out, 9 in, 0 forwarded; dropped: no_route 2``."""
    if dp is None:
        return None
    c = dp.get("counters") or {}
    drops = sorted((k, n) for k, n in c.items() if k not in _TRAFFIC and n)
    dropped = ("dropped: " + ", ".join(f"{k} {n:,}" for k, n in drops)) if drops else "no drops"
    if not dp.get("device"):
        head = "off (--no-tun)" if not dp.get("tun") else "not open yet"
        return f"{head}; {dropped}" if drops else head
    return (f"{dp['device']} mtu {dp.get('mtu')}{', offload' if dp.get('offload') else ''}: "
            f"{c.get('packets_out', 0):,} out, {c.get('packets_in', 0):,} in, "
            f"{c.get('forwarded', 0):,} forwarded; {dropped}")


def render_status(data: dict[str, Any], out: Console, datapath: dict[str, Any] | None = None) -> None:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    rows = [("name", data.get("name") or "-"), ("node id", data.get("node_id", "-")),
            ("address", data.get("address", "-")), ("version", data.get("version", "-")),
            ("uptime", format_duration(data.get("uptime_s"))),
            ("listen", ", ".join(data.get("listen") or []) or "-")]
    if data.get("region"):  # only when set: a node without a region shows no such row
        rows.insert(1, ("region", data["region"]))
    rows.append(("contract", contract_line(data.get("contract"))))
    if (line := datapath_line(datapath)) is not None:
        rows.append(("tun", line))
    for key, value in rows:
        facts.add_row(key, str(value))
    out.print(facts)
    agents = data.get("agents") or {}
    if not agents:
        out.print("no agents reported")
        return
    table = Table(show_edge=False, box=None, pad_edge=False, header_style="bold")
    table.add_column("AGENT")
    table.add_column("STATE")
    for name, state in sorted(agents.items()):
        color = {"running": "green", "failed": "red", "stopped": "yellow"}.get(str(state), "")
        table.add_row(name, f"[{color}]{state}[/]" if color else str(state))
    out.print()
    out.print(table)


def contract_line(c: dict[str, Any] | None) -> str:
    """``lab v2, enforced at link (1 refused), route, session, send``, or an open network."""
    if not c:
        return "none (open network: every node may link, route and talk)"
    points = c.get("points") or {}
    active = [f"{n} ({p['refused']} refused)" if p.get("refused") else n
              for n, p in points.items() if p.get("active")]
    off = [n for n, p in points.items() if not p.get("active")]
    text = f"{c.get('network')} v{c.get('version')}, enforced at " + (", ".join(active) or "no point")
    return text + (f"; NOT enforced at {', '.join(off)}" if off else "")


@click.command("status")
@api_option
@json_option
def command(api: str, as_json: bool) -> None:
    """Show the local node: id, address, name, region, uptime, contract, TUN and data
    path (packets in, out, forwarded, drops by reason), agents."""
    data = fetch(api, "status")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    try:
        datapath = ApiClient(api).get("/v1/datapath")
    except ApiClientError:
        datapath = None  # an older node without the data path: the rest still shows
    render_status(data, console(), datapath)
