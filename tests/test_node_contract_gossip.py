"""Contract gossip between real nodes: a contract larger than one link frame (3,000
members) spreads over two hops in chunks, and a forked version is refused and alerted
everywhere (docs/contracts.md, "Forks" and "Large contracts")."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from sporenet.cli import cli
from sporenet.contract_file import to_json, write_contract
from sporenet.keyfile import generate_identity, load_key_file, write_key_file
from sporenet.ledger_file import FileLedger, load_forks
from sporenet.local_mesh import wait_for
from sporenet.api_client import ApiRequestError
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols.contracts.transfer import fits_one_frame
from sporenet.protocols.identity import Identity

OWNER = Identity(bytes([42]) * 32)


def _key(mesh, name: str) -> bytes:
    path = mesh.base_dir / name / "node.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_key_file(path, generate_identity())
    return load_key_file(path).public_key


def _genesis(keys: dict[str, bytes]) -> ct.Contract:
    c = ct.new_contract("lab", [OWNER.public_key], 1, rules=[("*", "*")])
    members = tuple(sorted((ct.Member(k, n) for n, k in keys.items()), key=lambda m: m.public_key))
    return ct.sign(replace(c, members=members), OWNER)


def _contract(node) -> dict:
    return node.api.get("/v1/contract")


@pytest.mark.slow
def test_a_3000_member_contract_spreads_by_chunked_gossip_two_hops(mesh):
    keys = {n: _key(mesh, n) for n in "abc"}
    v1 = _genesis(keys)
    extra = [ct.Member(bytes([0xEE, i >> 8, i & 0xFF]) + bytes(29), f"member-{i:04d}", ("app",))
             for i in range(3000)]
    v2 = ct.sign(ct.bump_version(v1, members=tuple(sorted(v1.members + tuple(extra),
                                                          key=lambda m: m.public_key))), OWNER)
    assert not fits_one_frame(len(ct.encode(v2)))  # ~170 KB: it needs chunks
    lab, ledger = mesh.base_dir / "lab.json", mesh.base_dir / "ledger"
    write_contract(lab, v1)
    (mesh.base_dir / "a.toml").write_text(f'[contract]\nfile = "{lab}"\nledger = "{ledger}"\n')
    a = mesh.start_node("a", extra_args=("--config", str(mesh.base_dir / "a.toml")))
    b = mesh.start_node("b", [a.endpoint], extra_args=("--contract", str(lab)))
    c = mesh.start_node("c", [b.endpoint], extra_args=("--contract", str(lab)))  # 2 hops from a
    wait_for(lambda: len(b.api.get("/v1/peers")["peers"]) == 2, 30, "b to link a and c")
    assert FileLedger(ledger).append(v2)  # a adopts it from its ledger and announces it
    wait_for(lambda: all(_contract(n)["version"] == 2 for n in (a, b, c)), 30,
             lambda: f"version 2 to reach b and c: {[_contract(n) for n in (b, c)]}")
    for n in (b, c):
        doc = _contract(n)
        assert doc["members"] == 3003 and doc["hash"] == v2.hash.hex() and doc["forks"] == []
        assert doc["counters"]["completed"] == 1 and doc["counters"].get("bad_transfers", 0) == 0
    assert all(n.alive() for n in (a, b, c))


@pytest.mark.slow
def test_a_forked_version_is_refused_alerted_stored_and_the_alert_spreads(mesh):
    keys = {n: _key(mesh, n) for n in "abc"}
    v1 = _genesis(keys)
    v2a = ct.sign(ct.set_flag(v1, "pq", "preferred"), OWNER)
    v2b = ct.sign(ct.set_flag(v1, "pq", "off"), OWNER)  # the same owner signed both: a fork
    files = {}
    for name, c in (("v2a", v2a), ("v2b", v2b)):
        files[name] = mesh.base_dir / f"{name}.json"
        write_contract(files[name], c)
    ledger = mesh.base_dir / "ledger-a"  # a's history: 1, then 2a (b and c only know 2b)
    assert FileLedger(ledger).append(v1) and FileLedger(ledger).append(v2a)
    (mesh.base_dir / "a.toml").write_text(
        f'[contract]\nfile = "{files["v2a"]}"\nledger = "{ledger}"\n')
    b = mesh.start_node("b", extra_args=("--contract", str(files["v2b"])))
    c = mesh.start_node("c", [b.endpoint], extra_args=("--contract", str(files["v2b"])))
    wait_for(lambda: len(b.api.get("/v1/peers")["peers"]) == 1, 30, "b to link c")
    a = mesh.start_node("a", [b.endpoint], extra_args=("--config", str(mesh.base_dir / "a.toml")))

    def alerted(n) -> bool:
        return len(_contract(n)["forks"]) == 1
    wait_for(lambda: all(alerted(n) for n in (a, b, c)), 30,
             lambda: f"a, b and c to report the fork: {[_contract(n)['forks'] for n in (a, b, c)]}")
    hashes = sorted([v2a.hash.hex(), v2b.hash.hex()])
    for n, kept in ((a, v2a), (b, v2b), (c, v2b)):
        doc = _contract(n)
        assert doc["version"] == 2 and doc["hash"] == kept.hash.hex()  # each keeps its own
        fork = doc["forks"][0]
        assert sorted(fork["hashes"]) == hashes and fork["version"] == 2 and doc["fork_alerts"] == 1
        log = n.log_path.read_text()
        assert '"contract_fork"' in log and all(h in log for h in hashes)
    assert _contract(c)["forks"][0]["source"] == "gossip"
    # The evidence (both signed versions) is next to a's ledger and in c's run dir.
    (path, ev), = load_forks(ledger)
    assert {ev.first, ev.second} == {v2a, v2b} and path.parent.name == "lab.forks"
    assert _contract(a)["forks"][0]["evidence"] == str(path)
    assert len(load_forks(c.run_dir / "contract-forks")) == 1
    # Posting the other version by hand is refused too, naming the fork.
    with pytest.raises(ApiRequestError, match="forks from the one this node holds"):
        a.api.post("/v1/contract", to_json(v2b))
    assert _contract(a)["hash"] == v2a.hash.hex() and _contract(a)["fork_alerts"] == 1
    # The CLI shows it: the node's status and the stored evidence.
    runner = CliRunner()
    out = runner.invoke(cli, ["contract", "status", "--api", a.info["api"]])
    assert out.exit_code == 0 and "FORK of network lab at version 2" in out.output
    assert hashes[0] in out.output and "rotate" in out.output
    out = runner.invoke(cli, ["contract", "forks", str(ledger), "--export",
                              str(mesh.base_dir / "export"), "--json"])
    assert out.exit_code == 0, out.output
    row, = json.loads(out.output)["forks"]
    assert len(row["exported"]) == 2 and sorted(row["hashes"]) == hashes
    assert all(n.alive() for n in (a, b, c))
