"""``sporenet delay-proxy``: forward TCP from one endpoint to another with an added delay.

A stand-in for ``tc netem`` on kernels without it: point a node's ``--peer`` at the
proxy's endpoint and the link gets ``2 * delay`` more RTT. Prints the bound endpoint
on its first stdout line (so ``--listen tcp://127.0.0.1:0`` is usable from scripts), then
runs until SIGINT or SIGTERM and exits 0.
"""

from __future__ import annotations

import signal
import threading

import click

from sporenet.logs import configure_logging
from sporenet.protocols.errors import LocalProtocolError
from sporenet.transports.delay_proxy import DelayProxy
from sporenet.transports.errors import TransportError


@click.command("delay-proxy")
@click.option("--listen", default="tcp://127.0.0.1:0", show_default=True,
              help="tcp://HOST:PORT to accept connections on (port 0: any free port)")
@click.option("--to", "target", required=True, help="tcp://HOST:PORT to forward each connection to")
@click.option("--delay-ms", type=click.FloatRange(min=0), required=True,
              help="one-way delay added to every byte, each direction")
@click.option("--jitter-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="uniform +/- jitter on the delay (never reorders bytes)")
@click.option("--seed", type=int, default=None, help="seed for the jitter (reproducible runs)")
def command(listen: str, target: str, delay_ms: float, jitter_ms: float, seed: int | None) -> None:
    """Forward TCP from LISTEN to TO, delaying each direction by DELAY-MS."""
    configure_logging("info", "auto")  # logs on stderr; stdout carries the endpoint line
    try:
        proxy = DelayProxy(listen, target, delay_ms, jitter_ms, seed)
        endpoint = proxy.start()
    except (LocalProtocolError, TransportError) as exc:
        raise click.ClickException(str(exc)) from None
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        click.echo(f"delay-proxy {endpoint} -> {target} delay {delay_ms:g} ms"
                   f" jitter {jitter_ms:g} ms")
        while not done.wait(1.0):
            pass
    finally:
        proxy.stop()
