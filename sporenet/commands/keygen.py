"""``sporenet keygen``: create a node identity key file, or show the one in a file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sporenet.keyfile import (KeyFileError, default_key_file, generate_identity, load_key_file,
                              write_key_file)
from sporenet.protocols.identity import Identity, subnet_of


def describe(identity: Identity, key_file: Path) -> dict[str, str]:
    """The public facts of an identity, as ``--json`` prints them."""
    return {
        "key_file": str(key_file),
        "node_id": identity.node_id.hex(),
        "public_key": identity.public_key.hex(),
        "address": str(identity.address),
        "subnet": str(subnet_of(identity.public_key)),
    }


@click.command("keygen")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), envvar="SPORENET_KEY_FILE",
              help="Key file to create (or to read with --show). "
                   "[default: $XDG_CONFIG_HOME/sporenet/node.key]")
@click.option("--show", is_flag=True, help="Show the identity in an existing key file; create nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(key_file: Path | None, show: bool, as_json: bool) -> None:
    """Create a node key (mode 0600), or --show the identity in one.

    Prints the node id, public key, overlay address and /64. Never overwrites
    a file: to replace a key, remove the old file first.
    """
    key_file = key_file or default_key_file()
    try:
        if show:
            identity = load_key_file(key_file)
        else:
            identity = generate_identity()
            write_key_file(key_file, identity)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    facts = describe(identity, key_file)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    if not show:
        click.echo(f"wrote a new key to {key_file} (mode 0600); keep it secret")
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if key != "key_file" or show:
            click.echo(f"{key.replace('_', ' '):<{width}}  {value}")
