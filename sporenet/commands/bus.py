"""``sporenet bus tap``: print every notice on a running node's bus, live.

Connects over ipc to the bus in ``--run-dir`` (found through ``bus.json``),
confirms its subscription is live, says so on stderr, then prints one line per
notice on stdout: time, topic, fields (bytes as short hex), or JSON lines with
``--json`` (bytes as full hex).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from sporenet.protocols.errors import DecodeError
from sporenet.transports.bus import BUS_FILE, BusClient, BusError, load_endpoints
from sporenet.transports.bus_codec import notice_fields, notice_topic


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 8 else f"{value[:4].hex()}…{value[-2:].hex()}({len(value)}B)"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _line(notice: Any, as_json: bool) -> str:
    now = datetime.now(timezone.utc)
    topic, fields = notice_topic(notice), notice_fields(notice)
    if as_json:
        return json.dumps({"time": now.isoformat(timespec="milliseconds"), "topic": topic,
                           "fields": _jsonable(fields)})
    shown = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
    return f"{now.astimezone().strftime('%H:%M:%S.%f')[:-3]} {topic} {shown}"


@click.group("bus")
def command() -> None:
    """The node's agent bus."""


@command.command("tap")
@click.option("--run-dir", envvar="SPORENET_RUN_DIR", required=True,
              type=click.Path(file_okay=False), help="the node's run directory (env SPORENET_RUN_DIR)")
@click.option("--topic", "topics", multiple=True, default=("",), show_default=False,
              help="topic prefix to show, repeatable (default: all)")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, bytes as hex")
@click.option("--count", type=click.IntRange(min=1), default=None, help="exit after N notices")
def tap(run_dir: str, topics: tuple[str, ...], as_json: bool, count: int | None) -> None:
    """Print each notice on the node's bus as it passes."""
    try:
        client = BusClient(load_endpoints(run_dir))
    except BusError as e:
        raise click.ClickException(str(e)) from None
    seen = 0
    try:
        client.subscribe(*topics)
        client.sync()
        click.echo(f"tapping {run_dir} topics={list(topics)}", err=True)
        while count is None or seen < count:
            try:
                notice = client.recv(timeout=1.0)
            except DecodeError as e:
                click.echo(f"{time.strftime('%H:%M:%S')} undecodable: {e}", err=True)
                continue
            if notice is not None:
                click.echo(_line(notice, as_json))
                seen += 1
            elif not (Path(run_dir) / BUS_FILE).exists():
                raise click.ClickException(f"the node in {run_dir} stopped")
    except BusError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
