"""``sporenet ping``, ``sporenet send`` and ``sporenet recv``: the overlay from the shell.

Each is a thin client of the node's local API (``sporenet/user_api.py``). The
module exports ``commands`` (several commands); ``command`` is ``ping``.
"""

from __future__ import annotations

import json
import sys
import time

import click

from sporenet.api_client import MAX_API_MESSAGE, ApiClient, ApiClientError

_api = click.option("--api", envvar="SPORENET_API", default="127.0.0.1:8990", show_default=True,
                    help="HOST:PORT of the node's local API")


def _client(api: str) -> ApiClient:
    return ApiClient(api)


def _wait_result(client: ApiClient, path: str, ident: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        res = client.get(path, id=str(ident))
        if res.get("state") != "pending" or time.monotonic() > deadline:
            return res
        time.sleep(0.02)


@click.command("ping")
@click.argument("destination")
@click.option("-c", "--count", default=3, show_default=True, help="pings to send")
@click.option("--timeout", default=5.0, show_default=True, help="seconds to wait for each")
@_api
def ping(destination: str, count: int, timeout: float, api: str) -> None:
    """Measure the overlay RTT to DESTINATION (address or node id) over the routed path."""
    client, lost = _client(api), 0
    try:
        for _ in range(count):
            started = client.post("/v1/ping", {"to": destination, "timeout": timeout})
            res = _wait_result(client, "/v1/ping", started["id"], timeout + 1)
            if res.get("state") == "ok":
                click.echo(f"reply from {destination}: rtt {res['rtt_ms']:.3f} ms, {res['hops']} hops")
            else:
                lost += 1
                click.echo(f"no reply from {destination}: {res.get('reason', res.get('state'))}")
    except ApiClientError as e:
        raise click.ClickException(str(e)) from None
    if lost == count:
        sys.exit(1)


@click.command("send")
@click.option("--to", "to", required=True, help="destination overlay address or node id")
@click.option("--topic", default="", help="topic the receiver filters on")
@click.option("--timeout", default=30.0, show_default=True, help="delivery deadline, seconds")
@click.option("--reply-to", type=click.IntRange(0, 2 ** 64 - 1), default=0,
              help="msg_id of a received message this answers (see recv --json)")
@click.argument("payload")
@_api
def send(to: str, topic: str, timeout: float, reply_to: int, payload: str, api: str) -> None:
    """Send PAYLOAD (text, or - for standard input) as a message; waits for the ack."""
    data = sys.stdin.buffer.read() if payload == "-" else payload.encode("utf-8")
    import base64

    if len(data) > MAX_API_MESSAGE:
        raise click.ClickException(f"a message of {len(data)} bytes does not fit the local API "
                                   f"(at most {MAX_API_MESSAGE} bytes); split it")

    client = _client(api)
    try:
        started = client.post("/v1/messages", {"to": to, "topic": topic, "deadline": timeout,
                                               "reply_to": reply_to,
                                               "data_b64": base64.b64encode(data).decode()})
        res = _wait_result(client, "/v1/message", started["id"], timeout + 1)
    except ApiClientError as e:
        raise click.ClickException(str(e)) from None
    if res.get("state") != "delivered":
        raise click.ClickException(f"message {started['id']} not delivered: "
                                   f"{res.get('reason', res.get('state'))}")
    click.echo(f"delivered message {started['id']} ({len(data)} bytes)")


@click.command("recv")
@click.option("--topic", default=None, help="only messages on this topic")
@click.option("--wait", default=0.0, show_default=True, help="seconds to wait for a first message")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per message")
@_api
def recv(topic: str | None, wait: float, as_json: bool, api: str) -> None:
    """Print (and take) the messages this node received."""
    client = _client(api)
    deadline = time.monotonic() + wait
    try:
        while True:
            params = {"topic": topic} if topic is not None else {}
            msgs = client.get("/v1/messages", **params)["messages"]
            if msgs or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    except ApiClientError as e:
        raise click.ClickException(str(e)) from None
    for m in msgs:
        if as_json:
            click.echo(json.dumps(m))
        else:
            reply = f" (reply to {m['reply_to']})" if m.get("reply_to") else ""
            click.echo(f"[{m['topic'] or '-'}] from {m['from']}{reply}: "
                       f"{m.get('data', m['data_b64'])}")


command = ping
commands = (ping, send, recv)
