"""``sporenet up``: run a node in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import dataclasses
import sys

import click

from sporenet.agents.bundle import BundleError
from sporenet.config import ConfigError, NodeConfig, load_config, merge_cli
from sporenet.keyfile import KeyFileError, load_key_file
from sporenet.logs import configure_logging
from sporenet.transports.bus import BusError


@click.command("up")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="node.toml")
@click.option("--key-file", help="Ed25519 key file (sporenet keygen)")
@click.option("--listen", multiple=True, help="tcp://HOST:PORT or udp://HOST:PORT to accept links on (repeatable)")
@click.option("--peer", multiple=True, help="tcp:// or udp://HOST:PORT of a peer to link to (repeatable)")
@click.option("--api", help="HOST:PORT for the local HTTP API")
@click.option("--run-dir", help="directory for the bus sockets and node.json")
@click.option("--name", help="a human name for this node")
@click.option("--region", help='region tag signed into route updates (e.g. "eu"; at most 32 bytes)')
@click.option("--probe-interval", type=click.FloatRange(min=0.05), default=None,
              help="seconds between link probes (overrides [prober] interval; dead after 4x)")
@click.option("--no-tun", is_flag=True, help="userspace only: do not create a TUN device")
@click.option("--tun-device", help='name of the TUN device (default "sporenet0")')
@click.option("--tun-mtu", type=int, help="MTU of the TUN device (default 1420)")
@click.option("--contract", "contract", type=click.Path(dir_okay=False),
              help="network contract JSON file to enforce (overrides contract.file)")
def command(config_path, key_file, listen, peer, api, run_dir, name, region, probe_interval,
            no_tun, tun_device, tun_mtu, contract) -> None:
    """Run a node in the foreground."""
    try:
        config = load_config(config_path) if config_path else NodeConfig()
        config = merge_cli(config, key_file=key_file, listen=listen, peers=peer, api=api,
                           run_dir=run_dir, name=name, region=region, tun=False if no_tun else None,
                           tun_device=tun_device, tun_mtu=tun_mtu, contract=contract)
        if probe_interval is not None:
            config = dataclasses.replace(config, prober=dataclasses.replace(
                config.prober, interval=probe_interval, dead_after=4 * probe_interval))
        identity = load_key_file(config.key_file)
    except (ConfigError, KeyFileError) as e:
        raise click.ClickException(str(e)) from None
    configure_logging(config.log_level, config.log_format)
    if config.tun:  # say what is missing before anything starts (docs/tun.md)
        from sporenet.transports.tun import TunUnavailable, tun_preflight
        try:
            tun_preflight()
        except TunUnavailable as e:
            raise click.ClickException(str(e)) from None
    from sporenet.node import Node  # heavy imports only once the config is known good

    try:
        node = Node(config, identity)
        node.run_forever()
    except (BundleError, BusError, ValueError, OSError) as e:  # ContractLoadError is a ValueError
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
