"""``sporenet trace DESTINATION``: the path to DESTINATION as a trace finds it, hop by hop.

A thin client of ``POST /v1/trace`` / ``GET /v1/trace`` (``sporenet/user_api.py``);
the table is the one ``sporenet explain`` prints above its alternatives.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from sporenet.api_client import ApiClient, ApiClientError

from .explain import path_table
from .messages import _wait_result


@click.command("trace")
@click.argument("destination")
@click.option("--timeout", default=2.0, show_default=True, help="seconds to wait for the reply")
@click.option("--api", envvar="SPORENET_API", default="127.0.0.1:8990", show_default=True,
              help="HOST:PORT of the node's local API")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON as is")
def command(destination: str, timeout: float, api: str, as_json: bool) -> None:
    """Trace the overlay path to DESTINATION (address or 64-hex-digit node id)."""
    client = ApiClient(api)
    try:
        started = client.post("/v1/trace", {"to": destination, "timeout": timeout})
        res = _wait_result(client, "/v1/trace", started["id"], timeout + 1)
    except ApiClientError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        ok = res.get("state") == "ok"
        Console().print(path_table({"path": res.get("hops") if ok else None,
                                    "path_error": res.get("reason", res.get("state")),
                                    "path_rtt_ms": res.get("rtt_ms"),
                                    "path_truncated": res.get("truncated")}))
    if res.get("state") != "ok":
        sys.exit(1)
