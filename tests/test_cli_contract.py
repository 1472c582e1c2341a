"""``sporenet contract``: new -> add -> sign x2 -> verify -> publish, and the errors users meet."""

import json

import pytest
from click.testing import CliRunner

from sporenet.cli import cli
from sporenet.contract_file import read_contract
from sporenet.keyfile import write_key_file
from sporenet.ledger_file import FileLedger
from sporenet.protocols.identity import Identity

OWNERS = [Identity(bytes([i + 1]) * 32) for i in range(3)]
ALICE, BOB = Identity(b"\x41" * 32), Identity(b"\x42" * 32)


def run(*args):
    result = CliRunner().invoke(cli, ["contract", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture
def keys(tmp_path):
    paths = {}
    for name, ident in [("o1", OWNERS[0]), ("o2", OWNERS[1]), ("o3", OWNERS[2]), ("alice", ALICE)]:
        paths[name] = write_key_file(tmp_path / f"{name}.key", ident)
    return paths


@pytest.fixture
def draft(tmp_path, keys):
    """A 2-of-3 contract with alice (key file) and bob (hex key), unsigned."""
    path = tmp_path / "lab.json"
    code, out = run("new", "--network", "lab", "--owner", keys["o1"], "--owner", keys["o2"],
                    "--owner", OWNERS[2].public_key.hex(), "--threshold", 2,
                    "--rule", "app:db", "--pq", "required", "--out", path)
    assert code == 0, out
    assert run("add", path, "--member", keys["alice"], "--name", "alice", "--groups", "app")[0] == 0
    code, out = run("add", path, "--member", BOB.public_key.hex(), "--name", "bob",
                    "--groups", "db,ops", "--expires", "2099-01-01")
    assert code == 0 and "draft version 1" in out, out
    return path


def sign(path, *keyfiles, ledger=None):
    for k in keyfiles:
        code, out = run("sign", path, "--key-file", k, *(["--ledger", ledger] if ledger else []))
        assert code == 0, out


def test_full_flow_new_add_sign_twice_verify_publish(tmp_path, keys, draft):
    sign(draft, keys["o1"], keys["o2"])
    code, out = run("verify", draft, "--member", keys["alice"])
    assert code == 0 and "network lab version 1 is valid" in out and "alice is a member" in out, out
    c = json.loads(draft.read_text())
    assert c["version"] == 1 and len(c["signatures"]) == 2 and c["flags"] == {"pq": "required"}
    code, out = run("publish", draft, "--ledger", tmp_path / "ledger")
    assert code == 0 and "appended" in out, out
    assert FileLedger(tmp_path / "ledger").latest("lab").may_reach(
        ALICE.public_key, BOB.public_key, 1_800_000_000)


def test_revocation_flow_through_the_ledger(tmp_path, keys, draft):
    ledger = tmp_path / "ledger"
    sign(draft, keys["o1"], keys["o2"])
    run("publish", draft, "--ledger", ledger)
    code, out = run("revoke", draft, "--member", BOB.public_key.hex())  # alias of remove
    assert code == 0 and "version 2" in out and "sign it again" in out, out
    sign(draft, keys["o2"], keys["o3"])
    code, out = run("verify", draft, "--ledger", ledger)
    assert code == 0 and "follows the ledger" in out, out
    assert run("publish", draft, "--ledger", ledger)[0] == 0
    latest = FileLedger(ledger).latest("lab")
    assert latest.version == 2 and not latest.is_member(BOB.public_key, 0)
    code, out = run("verify", draft, "--member", BOB.public_key.hex())
    assert code == 1 and "is not a member of network lab" in out


def test_owner_change_needs_old_and_new_owners(tmp_path, keys, draft):
    ledger = tmp_path / "ledger"
    sign(draft, keys["o1"], keys["o2"])
    run("publish", draft, "--ledger", ledger)
    code, out = run("owners", draft, "--owner", keys["alice"], "--threshold", 1)
    assert code == 0 and "version 2" in out, out
    sign(draft, keys["alice"])  # the new owner alone: not enough
    code, out = run("verify", draft, "--ledger", ledger)
    assert code == 1 and "from the previous version's owners, 2 of 3 required" in out, out
    code, out = run("sign", draft, "--key-file", keys["o1"])  # not an owner of version 2...
    assert code == 1 and "not an owner" in out
    sign(draft, keys["o1"], keys["o3"], ledger=ledger)  # ...but of version 1, from the ledger
    code, out = run("verify", draft, "--ledger", ledger)
    assert code == 0, out
    assert run("publish", draft, "--ledger", ledger)[0] == 0
    assert FileLedger(ledger).latest("lab").owners == (ALICE.public_key,)


def test_threshold_not_met(keys, draft):
    sign(draft, keys["o1"])
    code, out = run("verify", draft)
    assert code == 1 and "threshold not met: 1 valid signature(s)" in out and "2 of 3" in out, out


def test_bad_signature_after_hand_edit(keys, draft):
    sign(draft, keys["o1"], keys["o2"])
    doc = json.loads(draft.read_text())
    doc["members"][0]["groups"] = ["admin"]  # someone edits the signed file by hand
    draft.write_text(json.dumps(doc))
    code, out = run("verify", draft)
    assert code == 1 and "bad signature by owner" in out and "sign again" in out, out


def test_expired_member(tmp_path, keys, draft):
    doc = json.loads(draft.read_text())
    alice = next(m for m in doc["members"] if m["name"] == "alice")
    alice["expires"] = 1_000_000  # long ago (the CLI refuses past dates)
    draft.write_text(json.dumps(doc))
    sign(draft, keys["o1"], keys["o2"])
    code, out = run("verify", draft, "--member", keys["alice"])
    assert code == 1 and "membership of alice" in out and "expired" in out, out
    code, out = run("show", draft)
    assert code == 0 and "EXPIRED" in out
    code, out = run("add", draft, "--member", keys["o3"], "--name", "x", "--expires", "2001-01-01")
    assert code != 0 and "in the past" in out


def test_version_backwards(tmp_path, keys, draft):
    ledger = tmp_path / "ledger"
    sign(draft, keys["o1"], keys["o2"])
    old = draft.read_text()
    run("publish", draft, "--ledger", ledger)
    run("remove", draft, "--member", BOB.public_key.hex())
    sign(draft, keys["o1"], keys["o2"])
    run("publish", draft, "--ledger", ledger)
    stale = tmp_path / "stale.json"
    doc = json.loads(old)
    doc["rules"] = []  # a different version 1, made from an old copy
    stale.write_text(json.dumps(doc))
    code, out = run("verify", stale, "--ledger", ledger)
    assert code == 1 and "version 1 goes backwards: the ledger holds version 2" in out, out
    code, out = run("publish", stale, "--ledger", ledger)
    assert code == 1 and "Error:" in out


def test_later_version_against_an_empty_ledger(tmp_path, keys, draft):
    sign(draft, keys["o1"], keys["o2"])
    run("remove", draft, "--member", BOB.public_key.hex())
    sign(draft, keys["o1"], keys["o2"])
    code, out = run("verify", draft, "--ledger", tmp_path / "empty")
    assert code == 1 and "publish version 1 before version 2" in out, out
    code, out = run("publish", draft, "--ledger", tmp_path / "empty")
    assert code == 1 and "append version 1" in out, out


def test_unknown_key_and_missing_file(tmp_path, keys, draft):
    code, out = run("sign", draft, "--key-file", keys["alice"])
    assert code == 1 and "not an owner of network lab" in out
    code, out = run("show", tmp_path / "nope.json")
    assert code == 1 and "no contract file at" in out
    code, out = run("add", draft, "--member", "zz", "--name", "x")
    assert code != 0 and "neither a public key" in out
    code, out = run("new", "--network", "lab", "--owner", keys["o1"], "--out", draft)
    assert code == 1 and "already exists" in out


def test_show_json(keys, draft):
    sign(draft, keys["o1"], keys["o2"])
    code, out = run("show", draft, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["signed"] is True and len(doc["hash"]) == 64
    assert doc["hash"] == read_contract(draft).hash.hex()
    code, out = run("show", draft)
    assert "alice" in out and "app -> db" in out and "status    signed" in out


def _fork(tmp_path, keys, draft):
    """Two different signed versions 2 of the draft's network, stored as evidence."""
    from sporenet.ledger_file import save_fork
    from sporenet.protocols.contracts import contract as ct
    from sporenet.protocols.contracts.fork import ForkEvidence
    sign(draft, keys["o1"], keys["o2"])
    v1 = read_contract(draft)
    v2a = ct.sign(ct.sign(ct.set_flag(v1, "pq", "off"), OWNERS[0]), OWNERS[1])
    v2b = ct.sign(ct.sign(ct.set_flag(v1, "pq", "preferred"), OWNERS[0]), OWNERS[1])
    ev = ForkEvidence.of(v2a, v2b)
    path = save_fork(tmp_path / "ledger", ev)
    assert save_fork(tmp_path / "ledger", ev) == path  # stored once
    return ev, path


def test_forks_lists_and_exports_the_evidence_and_show_names_it(tmp_path, keys, draft):
    ev, path = _fork(tmp_path, keys, draft)
    assert path == tmp_path / "ledger" / "lab.forks" / f"v2-{ev.id.hex()[:16]}.fork"
    code, out = run("forks", tmp_path / "ledger", "--export", tmp_path / "out")
    assert code == 0, out
    assert "FORK of network lab at version 2" in out and ev.first.hash.hex() in out
    assert ev.second.hash.hex() in out and "rotate" in out
    exported = sorted((tmp_path / "out").glob("lab-v2-*.json"))
    assert [read_contract(p) for p in exported] == sorted([ev.first, ev.second],
                                                          key=lambda c: c.hash.hex()[:16])
    code, out = run("show", draft, "--ledger", tmp_path / "ledger")
    assert code == 0 and "FORK      version 2" in out and ev.first.hash.hex() in out
    code, out = run("show", draft, "--ledger", tmp_path / "ledger", "--json")
    assert json.loads(out)["forks"][0]["id"] == ev.id.hex()
    code, out = run("forks", tmp_path / "nothing")
    assert code == 0 and "no fork evidence" in out


def test_forks_refuses_a_file_that_is_not_evidence_and_status_needs_a_node(tmp_path, keys, draft):
    _, path = _fork(tmp_path, keys, draft)
    path.write_bytes(b"junk")
    code, out = run("forks", tmp_path / "ledger")
    assert code == 1 and str(path) in out and "not fork evidence" in out
    code, out = run("status", "--api", "127.0.0.1:9")
    assert code == 1 and "Error:" in out
