"""``sporenet topics``: who may send this node messages on which topic.

    sporenet topics [--json]                      # the rules and what they refused
    sporenet topics allow TOPIC SENDER...         # only these senders (replaces the rule)
    sporenet topics allow TOPIC --anyone          # everyone
    sporenet topics close TOPIC                   # nobody
    sporenet topics reset TOPIC                   # no rule: unknown_topics in the config

A SENDER is an overlay address, a network (``600:1234::/64``) or a node id. Runtime
changes last until the node restarts; ``[topics]`` in the config is the lasting form
(``docs/messages.md``). A thin client of ``GET``/``POST /v1/topics``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Callable

import click
from rich.table import Table

from sporenet.api_client import ApiClientError, Client, Topics
from sporenet.config import DEFAULT_API

from .status import console

_api = click.option("--api", envvar="SPORENET_API", default=DEFAULT_API, show_default=True,
                    help="HOST:PORT of the node's local API (sporenet up --api).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON.")


def _run(api: str, as_json: bool, call: Callable[[Client], Topics]) -> None:
    try:
        topics = call(Client(api))
    except ApiClientError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(_as_json(topics), indent=2))
    else:
        render(topics)


def _as_json(topics: Topics) -> dict[str, Any]:
    return {"accept_unknown_topics": topics.accept_unknown_topics,
            "refused_chunks": topics.refused_chunks,
            "topics": [{**asdict(r), "senders": None if r.senders is None else list(r.senders)}
                       for r in topics.rules]}


def _who(senders: tuple[str, ...] | None) -> str:
    if senders is None:
        return "anyone"
    return ", ".join(senders) if senders else "nobody"


def render(topics: Topics) -> None:
    out = console()
    default = "accepted from anyone" if topics.accept_unknown_topics else "refused"
    out.print(f"topics without a rule: {default}")
    if not topics.rules:
        out.print("no topic rules")
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("topic", "accepts", "refused chunks", "last refused from"):
            table.add_column(col)
        for r in topics.rules:
            accepts = _who(r.senders) + ("" if r.rule else " (no rule: default)")
            table.add_row(repr(r.topic) if not r.topic or r.topic.strip() != r.topic else r.topic,
                          accepts, str(r.refused_chunks), r.last_refused_from or "-",
                          style=None if r.rule else "dim")
        out.print(table)
    out.print(f"refused chunks in total: {topics.refused_chunks}")


@click.group("topics", invoke_without_command=True)
@_api
@_json
@click.pass_context
def command(ctx: click.Context, api: str, as_json: bool) -> None:
    """Show or change which senders this node accepts messages from, per topic."""
    if ctx.invoked_subcommand is None:
        _run(api, as_json, lambda c: c.topics())


@command.command("allow")
@click.argument("topic")
@click.argument("senders", nargs=-1)
@click.option("--anyone", is_flag=True, help="accept TOPIC from every sender")
@_api
@_json
def allow(topic: str, senders: tuple[str, ...], anyone: bool, api: str, as_json: bool) -> None:
    """Accept TOPIC only from SENDERS (addresses, /64 networks, node ids), or --anyone.

    Replaces the topic's rule. Use "" for the default (empty) topic."""
    if anyone == bool(senders):
        raise click.UsageError("give SENDER... or --anyone (not both)")
    _run(api, as_json, lambda c: c.allow(topic, None if anyone else senders))


@command.command("close")
@click.argument("topic")
@_api
@_json
def close(topic: str, api: str, as_json: bool) -> None:
    """Refuse TOPIC from every sender."""
    _run(api, as_json, lambda c: c.close_topic(topic))


@command.command("reset")
@click.argument("topic")
@_api
@_json
def reset(topic: str, api: str, as_json: bool) -> None:
    """Drop TOPIC's rule: the config's unknown_topics decides again."""
    _run(api, as_json, lambda c: c.reset_topic(topic))
