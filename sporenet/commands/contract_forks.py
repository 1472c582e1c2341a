"""``sporenet contract status`` and ``sporenet contract forks``: what a running node
enforces (and any fork it saw), and the fork evidence kept next to a ledger
(docs/contracts.md, "Forks").

``commands/contract.py`` adds both to its ``contract`` group; this module imports nothing
of it and exports no ``command`` of its own, so the CLI does not register it at the top
level.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sporenet.config import DEFAULT_API
from sporenet.contract_file import run_action, write_contract
from sporenet.ledger_file import load_forks
from sporenet.protocols.contracts import contract as ct

from .status import fetch_path

FORK_ADVICE = ("the owners (or someone holding their keys) signed two different versions; this "
               "node keeps its own and refuses the other. Compare the two "
               "(`sporenet contract forks DIR --export OUT`), find out who signed what, rotate "
               "any compromised owner key (`sporenet contract owners`) and publish a version "
               "that settles it")


@click.command("status")
@click.option("--api", default=DEFAULT_API, show_default=True, envvar="SPORENET_API",
              help="HOST:PORT of the node's local API (sporenet up --api).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON as is.")
def status(api: str, as_json: bool) -> None:
    """The contract a running node enforces, and any fork it has seen."""
    doc = fetch_path(api, "/v1/contract")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"network   {doc['network']}\nversion   {doc['version']}\n"
               f"hash      {doc.get('hash', '-')}\nmembers   {doc['members']}")
    forks = doc.get("forks", [])
    click.echo(f"forks     {len(forks) or 'none'}"
               + (f" ({doc.get('fork_alerts')} alerts)" if forks else ""))
    for f in forks:
        a, b = f["hashes"]
        click.echo(f"  FORK of network {f['network']} at version {f['version']}: {a} / {b} "
                   f"(seen via {f.get('source', '?')}; evidence {f.get('evidence') or 'not saved'})")
    if forks:
        click.echo(f"warning: {FORK_ADVICE}", err=True)


@click.command("forks")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--export", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Write both versions of each fork there as contract files.")
@click.option("--json", "as_json", is_flag=True, help="Print the forks as JSON.")
def forks(directory: Path, out: Path | None, as_json: bool) -> None:
    """The fork evidence a node stored in DIRECTORY (its ledger directory, or
    RUN_DIR/contract-forks without one)."""
    def action() -> None:
        found = load_forks(directory)
        rows = [{**ev.summary(), "file": str(path)} for path, ev in found]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for (_, ev), row in zip(found, rows):
                row["exported"] = []
                for c in (ev.first, ev.second):
                    dest = out / f"{c.network}-v{c.version}-{c.hash.hex()[:16]}.json"
                    write_contract(dest, c)
                    row["exported"].append(str(dest))
        if as_json:
            click.echo(json.dumps({"forks": rows}, indent=2))
            return
        if not rows:
            click.echo(f"no fork evidence in {directory}")
            return
        for (_, ev), row in zip(found, rows):
            click.echo(f"FORK of network {row['network']} at version {row['version']} ({row['file']})")
            for c in (ev.first, ev.second):
                signers = ", ".join(s.public_key.hex()[:16] for s in c.signatures) or "none"
                click.echo(f"  version {c.version}  hash {c.hash.hex()}  members {len(c.members)}  "
                           f"signed by {signers}  ({'signed' if ct.is_signed(c) else 'not signed'})")
            for path in row.get("exported", []):
                click.echo(f"  exported {path}")
        click.echo(f"advice: {FORK_ADVICE}")
    run_action(action)  # LedgerError (a file that is not evidence), ContractFileError: one line, exit 1
