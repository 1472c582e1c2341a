"""``sporenet contract``: write, sign, check and publish a network contract (docs/contracts.md).

A contract file is JSON holding the canonical fields (keys and hashes in hex); the
bytes owners sign are rebuilt from those fields (``protocols.contracts.contract.encode_body``),
so any hand edit of a signed field breaks the signatures, and key order or spacing in
the file does not matter. Editing a signed contract makes the next version and drops
the signatures: owners sign again.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path
from typing import Callable

import click

from sporenet.contract_file import read_contract, run_action, to_json, write_contract
from sporenet.keyfile import KeyFileError, load_key_file
from sporenet.ledger_file import FileLedger, load_forks
from sporenet.protocols.contracts import contract as ct

from . import contract_forks

_HEX_KEY = re.compile(r"(?:ed25519:)?([0-9a-fA-F]{64})\Z")
_FILE = click.Path(dir_okay=False, path_type=Path)


# -- argument parsing -----------------------------------------------------------------


def parse_key(value: str) -> bytes:
    """A public key in hex (optionally ``ed25519:``-prefixed), or the key of a key file."""
    m = _HEX_KEY.match(value.strip())
    if m:
        return bytes.fromhex(m.group(1))
    if not Path(value).exists():
        raise click.BadParameter(f"{value!r} is neither a public key (64 hex digits) nor a key file")
    try:
        return load_key_file(value).public_key
    except KeyFileError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_date(value: str | None, now: float) -> int | None:
    """``never``, unix seconds, or an ISO 8601 date/time (UTC unless it names a zone)."""
    if value is None or value == "never":
        return None
    if value.isdigit():
        stamp = int(value)
    else:
        try:
            when = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a date; expected e.g. 2027-01-31, "
                                     "2027-01-31T12:00:00Z, unix seconds or never") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        stamp = int(when.timestamp())
    if stamp <= now:
        raise click.BadParameter(f"{value} is in the past: it would be expired already")
    return stamp


def parse_rule(value: str) -> tuple[str, str]:
    src, sep, dst = value.partition(":")
    if not sep:
        raise click.BadParameter(f"rule {value!r}: expected FROM_GROUP:TO_GROUP (\"*\" = any member)")
    return src.strip(), dst.strip()


def _edit(path: Path, change: Callable[[ct.Contract], ct.Contract]) -> None:
    def action() -> None:
        before = read_contract(path)
        after = change(before)
        write_contract(path, after)
        if after.version != before.version:
            click.echo(f"{path}: version {after.version} of network {after.network} "
                       f"(signatures cleared: owners must sign it again)")
        else:
            click.echo(f"{path}: draft version {after.version} of network {after.network} updated")
    run_action(action)


# -- commands -------------------------------------------------------------------------


@click.group("contract")
def command() -> None:
    """Network contracts: the signed whitelist of members, groups and rules."""


@command.command("new")
@click.option("--network", required=True, help="Network id (letters, digits, '.', '_', '-').")
@click.option("--owner", "owners", multiple=True, required=True,
              help="Owner public key (hex) or key file; repeat for each owner.")
@click.option("--threshold", type=int, default=1, show_default=True,
              help="How many owners must sign each version (m of n).")
@click.option("--rule", "rules", multiple=True, help='FROM:TO group rule ("*" = any); repeatable.')
@click.option("--pq", type=click.Choice(ct.PQ_VALUES), help="Post-quantum key exchange policy.")
@click.option("--expires", help="When the whole contract expires (date, unix seconds, never).")
@click.option("--out", required=True, type=_FILE, help="Contract file to create.")
def new(network: str, owners: tuple[str, ...], threshold: int, rules: tuple[str, ...],
        pq: str | None, expires: str | None, out: Path) -> None:
    """Create version 1 (genesis) of a network contract, unsigned and without members."""
    keys = [parse_key(o) for o in owners]
    parsed = [parse_rule(r) for r in rules]
    until = parse_date(expires, time.time())

    def action() -> None:
        c = ct.new_contract(network, keys, threshold, rules=parsed,
                            flags={"pq": pq} if pq else None, expires=until)
        write_contract(out, c, new=True)
        click.echo(f"{out}: network {network}, version 1, {threshold} of {len(keys)} owners must sign")
    run_action(action)


@command.command("add")
@click.argument("file", type=_FILE)
@click.option("--member", required=True, help="Member public key (hex) or key file.")
@click.option("--name", required=True, help="A human name for the member.")
@click.option("--groups", default="", help="Comma-separated groups, e.g. app,db.")
@click.option("--expires", help="When the membership ends (date, unix seconds, never).")
def add(file: Path, member: str, name: str, groups: str, expires: str | None) -> None:
    """Add a member."""
    key, until = parse_key(member), parse_date(expires, time.time())
    names = [g.strip() for g in groups.split(",") if g.strip()]
    _edit(file, lambda c: ct.add_member(c, key, name, names, until))


@command.command("remove")
@click.argument("file", type=_FILE)
@click.option("--member", required=True, help="Member public key (hex) or key file.")
def remove(file: Path, member: str) -> None:
    """Remove (revoke) a member: the next version no longer admits it."""
    key = parse_key(member)
    _edit(file, lambda c: ct.remove_member(c, key))


command.add_command(remove, "revoke")  # the name DESIGN.md §6 uses


@command.command("rules")
@click.argument("file", type=_FILE)
@click.option("--rule", "rules", multiple=True, help='FROM:TO group rule ("*" = any); repeatable.')
def set_rules(file: Path, rules: tuple[str, ...]) -> None:
    """Replace the rules (none given: nobody may reach anybody)."""
    parsed = [parse_rule(r) for r in rules]
    _edit(file, lambda c: ct.set_rules(c, parsed))


@command.command("owners")
@click.argument("file", type=_FILE)
@click.option("--owner", "owners", multiple=True, required=True,
              help="New owner public key (hex) or key file; repeat for each owner.")
@click.option("--threshold", type=int, required=True, help="How many new owners must sign (m of n).")
def set_owners(file: Path, owners: tuple[str, ...], threshold: int) -> None:
    """Replace the owner set. The old owners' threshold and the new one's must sign
    (old owners sign with `sign --ledger DIR`)."""
    keys = [parse_key(o) for o in owners]
    _edit(file, lambda c: ct.set_owners(c, keys, threshold))


@command.command("sign")
@click.argument("file", type=_FILE)
@click.option("--key-file", required=True, type=_FILE, help="The owner's key file.")
@click.option("--ledger", type=click.Path(file_okay=False, path_type=Path),
              help="Ledger directory: lets owners of the previous version sign an owner change.")
def sign(file: Path, key_file: Path, ledger: Path | None) -> None:
    """Sign the contract with an owner key."""
    def action() -> None:
        c = read_contract(file)
        prev = FileLedger(ledger).get(c.network, c.version - 1) if ledger else None
        identity = load_key_file(key_file)
        c = ct.sign(c, identity, prev)
        write_contract(file, c)
        click.echo(f"{file}: signed by owner {identity.public_key.hex()}; "
                   f"{len(c.signatures)} signature(s), {c.threshold} of {len(c.owners)} needed")
    run_action(action)


def _verify(c: ct.Contract, ledger: Path | None, now: float) -> str:
    if ledger is None:
        ct.verify(c, now)
        return "" if c.version == 1 else " (chain not checked: pass --ledger DIR)"
    led = FileLedger(ledger)
    latest = led.latest(c.network)
    held = led.get(c.network, c.version)
    if held is not None and held.hash == c.hash:
        ct.verify(c, now, led.get(c.network, c.version - 1))
        return f" (in the ledger; latest version {latest.version})"
    if latest is not None and c.version <= latest.version:
        raise ct.VersionNotNext(f"version {c.version} goes backwards: the ledger holds version "
                                f"{latest.version} of network {c.network}; edit that one instead")
    if latest is None and c.version != 1:
        raise ct.VersionNotNext(f"the ledger holds nothing for network {c.network}: publish "
                                f"version 1 before version {c.version}")
    ct.verify(c, now, latest)
    return " (follows the ledger; publish it with `sporenet contract publish`)"


@command.command("verify")
@click.argument("file", type=_FILE)
@click.option("--ledger", type=click.Path(file_okay=False, path_type=Path),
              help="Ledger directory: also check the version chain against it.")
@click.option("--member", help="Also check that this key (hex or key file) is a member now.")
def verify(file: Path, ledger: Path | None, member: str | None) -> None:
    """Check signatures, threshold, chain and expiry; exit 1 saying what is wrong."""
    key = parse_key(member) if member else None

    def action() -> None:
        c = read_contract(file)
        now = time.time()
        note = _verify(c, ledger, now)
        click.echo(f"{file}: network {c.network} version {c.version} is valid{note}")
        if key is not None:
            m = c.member(key, now)
            click.echo(f"{m.name} is a member (groups: {', '.join(m.groups) or '-'})")
    run_action(action)


@command.command("publish")
@click.argument("file", type=_FILE)
@click.option("--ledger", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Ledger directory.")
def publish(file: Path, ledger: Path) -> None:
    """Verify the contract and append it to the ledger (fsync'd)."""
    def action() -> None:
        c, led = read_contract(file), FileLedger(ledger)
        ct.verify(c, time.time(), led.get(c.network, c.version - 1))
        added = led.append(c)
        click.echo(f"{'appended' if added else 'already in'} {ledger}: network {c.network} "
                   f"version {c.version}")
    run_action(action)


def _when(stamp: int | None) -> str:
    if stamp is None:
        return "never"
    try:
        when = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
    except (OverflowError, ValueError, OSError):  # beyond year 9999: show the number
        return str(stamp)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@command.command("show")
@click.argument("file", type=_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the file's JSON plus the hash.")
@click.option("--ledger", type=click.Path(file_okay=False, path_type=Path),
              help="Ledger directory: also list the forks of this network stored there.")
def show(file: Path, as_json: bool, ledger: Path | None) -> None:
    """Show a contract: owners, members, rules, signatures (and forks, with --ledger)."""
    def action() -> None:
        c, now = read_contract(file), time.time()
        forks = [ev.summary() for _, ev in load_forks(ledger) if ev.network == c.network] \
            if ledger else []
        if as_json:
            click.echo(json.dumps({**to_json(c), "hash": c.hash.hex(), "signed": ct.is_signed(c),
                                   **({"forks": forks} if ledger else {})}, indent=2))
            return
        signed = {s.public_key for s in c.signatures}
        click.echo(f"network   {c.network}\nversion   {c.version}\nhash      {c.hash.hex()}")
        click.echo(f"previous  {c.previous.hex() if c.version > 1 else '-'}\n"
                   f"expires   {_when(c.expires)}\nflags     "
                   + (", ".join(f"{k}={v}" for k, v in c.flags) or "-"))
        click.echo(f"owners    {c.threshold} of {len(c.owners)} must sign")
        for k in c.owners:
            click.echo(f"  {k.hex()}  {'signed' if k in signed else 'not signed'}")
        click.echo(f"members   {len(c.members)}")
        for m in c.members:
            state = "EXPIRED" if m.expired(now) else f"until {_when(m.expires)}"
            click.echo(f"  {m.name}  {m.public_key.hex()}  groups {','.join(m.groups) or '-'}  {state}")
        click.echo("rules     " + (", ".join(f"{r.src} -> {r.dst}" for r in c.rules) or "none (deny all)"))
        click.echo(f"status    {'signed' if ct.is_signed(c) else 'draft: needs signatures'}")
        for f in forks:
            click.echo(f"FORK      version {f['version']}: {' / '.join(f['hashes'])} "
                       f"(`sporenet contract forks {ledger}`)")
    run_action(action)


# `contract status` (a running node) and `contract forks` (stored evidence) live apart
command.add_command(contract_forks.status)
command.add_command(contract_forks.forks)
