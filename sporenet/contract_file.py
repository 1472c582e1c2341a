"""The contract file: JSON holding a contract's canonical fields (docs/contracts.md).

Keys and hashes are hex; the bytes owners sign are rebuilt from these fields
(``protocols.contracts.contract.encode_body``), so a hand edit of a signed field breaks
the signatures, and key order or spacing in the file does not matter. Read by the
``sporenet contract`` commands, the contract agent and the node's start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import click

from sporenet.keyfile import KeyFileError
from sporenet.ledger_file import LedgerError
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols.errors import LocalProtocolError

FORMAT = "sporenet-contract-v1"


class ContractFileError(Exception):
    """A contract file cannot be read or written; the message names the file."""


# -- the JSON file format -------------------------------------------------------------


def to_json(c: ct.Contract) -> dict[str, Any]:
    return {
        "format": FORMAT, "network": c.network, "version": c.version,
        "previous": c.previous.hex(), "expires": c.expires,
        "owners": [k.hex() for k in c.owners], "threshold": c.threshold,
        "members": [{"public_key": m.public_key.hex(), "name": m.name, "groups": list(m.groups),
                     "expires": m.expires} for m in c.members],
        "rules": [{"from": r.src, "to": r.dst} for r in c.rules],
        "flags": dict(c.flags),
        "signatures": [{"public_key": s.public_key.hex(), "signature": s.signature.hex()}
                       for s in c.signatures],
    }


def from_json(doc: Any) -> ct.Contract:
    """Build a contract from the file's fields; ``ValueError`` etc. say what is wrong."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f'not a contract file (expected "format": "{FORMAT}")')
    members = sorted((ct.Member(bytes.fromhex(m["public_key"]), m["name"],
                                tuple(sorted(set(m.get("groups", ())))), m.get("expires"))
                      for m in doc.get("members", ())), key=lambda m: m.public_key)
    sigs = sorted((ct.Signature(bytes.fromhex(s["public_key"]), bytes.fromhex(s["signature"]))
                   for s in doc.get("signatures", ())), key=lambda s: s.public_key)
    return ct.Contract(
        doc["network"], doc["version"], bytes.fromhex(doc["previous"]),
        tuple(sorted(bytes.fromhex(k) for k in doc["owners"])), doc["threshold"],
        tuple(members), ct.sorted_rules((r["from"], r["to"]) for r in doc.get("rules", ())),
        tuple(sorted(doc.get("flags", {}).items())), doc.get("expires"), tuple(sigs))


def read_contract(path: Path) -> ct.Contract:
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ContractFileError(f"no contract file at {path}; create one with "
                                "`sporenet contract new`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractFileError(f"cannot read contract file {path}: {exc}") from None
    try:
        return from_json(doc)
    except KeyError as exc:
        raise ContractFileError(f"{path}: missing field {exc}") from None
    except (ValueError, TypeError, AttributeError, LocalProtocolError) as exc:
        raise ContractFileError(f"{path}: {exc}") from None


def write_contract(path: Path, c: ct.Contract, *, new: bool = False) -> None:
    """Write atomically (temp file, fsync, rename); ``new`` refuses to replace a file."""
    if new and os.path.lexists(path):
        raise ContractFileError(f"{path} already exists; choose another --out or remove it")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(to_json(c), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ContractFileError(f"cannot write contract file {path}: {exc.strerror}") from None


def run_action(action: Callable[[], None]) -> None:
    """Turn every expected failure into a one-line error and exit status 1."""
    try:
        action()
    except (ct.ContractError, LocalProtocolError, LedgerError, KeyFileError, ContractFileError) as exc:
        raise click.ClickException(str(exc)) from None
