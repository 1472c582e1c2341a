"""Network contracts enforced by real nodes (docs/contracts.md, "Enforcement").

Members A, B, C and a non-member X: X is refused at A's link and gets no routes; A, B,
C route and message; a version 2 without C (A reads it from its ledger, B gets it by
``POST /v1/contract`` or A's gossip) cuts C's links, routes and sessions within a
bounded time. A version published at one node reaches the others by gossip.
The first tests are fast: config keys, the holder, loading and adoption.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sporenet.agents.contract import (ContractHolder, ContractLoadError, adopt,
                                      load_contract)
from sporenet.contract_file import to_json, write_contract
from sporenet.config import ConfigError, ContractConfig, config_from_dict, merge_cli
from sporenet.keyfile import generate_identity, load_key_file, write_key_file
from sporenet.ledger_file import FileLedger
from sporenet.local_mesh import selected_routes, send_message, wait_for
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.manager import SessionManager

OWNER = Identity(bytes([42]) * 32)
REVOKE_BOUND = 10.0  # s: a revocation must cut links, routes and sessions within this


def contract_for(keys: dict[str, bytes], rules=(("*", "*"),)) -> ct.Contract:
    c = ct.new_contract("lab", [OWNER.public_key], 1, rules=rules)
    for name, key in sorted(keys.items()):
        c = ct.add_member(c, key, name)
    return ct.sign(c, OWNER)


def revoke(c: ct.Contract, key: bytes) -> ct.Contract:
    return ct.sign(ct.remove_member(c, key), OWNER)


# -- fast: config, holder, loading --------------------------------------------------


def test_config_contract_key_as_path_or_table_and_cli(tmp_path):
    assert config_from_dict({}).contract is None
    c = config_from_dict({"contract": "lab.json"}, base=tmp_path).contract
    assert c == ContractConfig(tmp_path / "lab.json", None)
    c = config_from_dict({"contract": {"file": "lab.json", "ledger": "led"}}, base=tmp_path)
    assert c.contract == ContractConfig(tmp_path / "lab.json", tmp_path / "led")
    merged = merge_cli(c, contract="other.json")
    assert merged.contract == ContractConfig(Path.cwd() / "other.json", tmp_path / "led")
    for bad, words in [({"contract": 3}, "contract: 3 is not a contract"),
                       ({"contract": {}}, "contract: {} names no contract"),
                       ({"contract": {"fil": "x"}}, 'unknown key "fil" in [contract]')]:
        with pytest.raises(ConfigError) as e:
            config_from_dict(bad, source="node.toml")
        assert words in str(e.value)


def test_holder_admits_members_until_they_expire():
    a, b = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    c = ct.sign(ct.add_member(ct.new_contract("lab", [OWNER.public_key], 1, rules=[("*", "*")]),
                              a.public_key, "a", expires=1000), OWNER)
    c = ct.sign(ct.add_member(c, b.public_key, "b"), OWNER)
    now = [500.0]
    h = ContractHolder(c, clock=lambda: now[0])
    assert h.admits(a.public_key) and h.may_reach(a.public_key, b.public_key)
    assert not h.admits(OWNER.public_key)
    assert h.next_expiry(0) == 1000 and h.next_expiry(1000) is None
    now[0] = 1000.0
    assert not h.admits(a.public_key) and not h.may_reach(b.public_key, a.public_key)
    assert ContractHolder().admits(OWNER.public_key)  # no contract: open network


def test_load_refuses_non_members_and_invalid_contracts_and_says_what_to_do(tmp_path):
    me, other = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    path = tmp_path / "lab.json"
    write_contract(path, contract_for({"other": other.public_key}))
    with pytest.raises(ContractLoadError) as e:
        load_contract(path, None, me.public_key, time.time())
    assert "not a current member" in str(e.value) and me.public_key.hex() in str(e.value)
    assert "contract.file" in str(e.value)
    unsigned = ct.add_member(ct.new_contract("lab", [OWNER.public_key], 1), me.public_key, "me")
    write_contract(path, unsigned)
    with pytest.raises(ContractLoadError, match="invalid contract: threshold not met"):
        load_contract(path, None, me.public_key, time.time())


def test_load_takes_the_ledgers_newest_version_and_adopt_checks_the_chain(tmp_path):
    me, other = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    v1 = contract_for({"me": me.public_key, "other": other.public_key})
    v2 = revoke(v1, other.public_key)
    write_contract(tmp_path / "lab.json", v1)
    assert load_contract(tmp_path / "lab.json", tmp_path / "led", me.public_key, time.time()) == v1
    FileLedger(tmp_path / "led").append(v2)
    assert load_contract(tmp_path / "lab.json", tmp_path / "led", me.public_key, time.time()) == v2
    assert load_contract(None, tmp_path / "led", me.public_key, time.time()) == v2
    assert adopt(v1, v2, time.time()) and not adopt(v2, v1, time.time())
    forged = ct.remove_member(v1, other.public_key)  # the next version, unsigned
    with pytest.raises(ct.ThresholdNotMet):
        adopt(v1, forged, time.time())


def test_up_refuses_to_start_when_this_node_is_not_a_member(tmp_path):
    key = tmp_path / "x.key"
    write_key_file(key, generate_identity())
    write_contract(tmp_path / "lab.json", contract_for({"other": bytes([7]) * 32}))
    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "up", "--key-file", str(key),
                          "--contract", str(tmp_path / "lab.json"), "--no-tun",
                          "--listen", "tcp://127.0.0.1:0", "--api", "127.0.0.1:0",
                          "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "contract.file" in out.stderr and "not a current member" in out.stderr
    assert "sporenet contract add" in out.stderr


def test_overlay_refuses_sends_the_contract_forbids_and_revokes_sessions():
    from test_overlay_sessions import IDS, Line  # tests/ is on sys.path (rootdir, no package)
    from sporenet.protocols.overlay.messaging import MessageReceived
    from sporenet.protocols.sessions.events import SessionClosed
    from sporenet.protocols.base import Publish
    A, _, B = IDS
    line = Line()
    a, _, b = line.ovs
    a.reach = lambda src, dst: dst != B.public_key  # A may not reach B
    line.act(0, a.send(B.address, "chat", b"no", line.now)[1])
    line.run()
    assert a.counters["not_member"] >= 1 and line.of(2, MessageReceived) == []
    assert a.sessions.sessions(line.now) == []

    line = Line()
    a, _, b = line.ovs
    b.sessions = SessionManager(B, rng=random.Random(7), pq=False,
                                accept=lambda key: key != A.public_key)  # B refuses A
    line.act(0, a.send(B.address, "chat", b"no", line.now)[1])
    line.run()
    assert line.of(2, MessageReceived) == [] and b.sessions.sessions(line.now) == []

    # B may not reach A, A may reach B: A's session carries B's acks back, and B's
    # own sends to A while it holds the session A opened (the rules say who opens)
    from sporenet.protocols.overlay.messaging import MessageDelivered
    line = Line()
    a, _, b = line.ovs
    b.reach = lambda src, dst: not (src == B.public_key and dst == A.public_key)
    line.act(0, a.send(B.address, "chat", b"hi", line.now)[1])
    line.run()
    assert len(line.of(2, MessageReceived)) == 1 and len(line.of(0, MessageDelivered)) == 1
    assert b.counters["not_member"] == 0 and b.sessions.answering(A.public_key)
    line.act(2, b.send(A.address, "chat", b"reply", line.now)[1])
    line.run()
    assert len(line.of(0, MessageReceived)) == 1

    line = Line()
    a, _, b = line.ovs
    line.act(0, a.send(B.address, "chat", b"yes", line.now)[1])
    line.run()
    assert len(line.of(2, MessageReceived)) == 1 and len(a.sessions.sessions(line.now)) == 1
    members = {A.public_key, B.public_key}
    a.reach = lambda src, dst: src in members and dst in members
    assert a.revoke(line.now) == []
    members.discard(B.public_key)
    acts = a.revoke(line.now)
    assert a.sessions.sessions(line.now) == [] and a.counters["sessions_revoked"] == 1
    assert any(isinstance(x, Publish) and isinstance(x.message, SessionClosed) for x in acts)


# -- slow: real nodes ----------------------------------------------------------------


def _key(mesh, name: str) -> bytes:
    path = mesh.base_dir / name / "node.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_key_file(path, generate_identity())
    return load_key_file(path).public_key


def _peer_ids(node) -> set[str]:
    return {p["node_id"] for p in node.api.get("/v1/peers")["peers"]}


def _session_peers(node) -> set[str]:
    return {s["peer_key"] for s in node.api.get("/v1/sessions")["sessions"]}


@pytest.mark.slow
def test_members_route_non_member_is_refused_and_revocation_cuts_links_routes_sessions(mesh):
    keys = {n: _key(mesh, n) for n in ("a", "b", "c", "x")}
    v1 = contract_for({n: keys[n] for n in ("a", "b", "c")})
    lab, ledger = mesh.base_dir / "lab.json", mesh.base_dir / "ledger"
    write_contract(lab, v1)
    (mesh.base_dir / "a.toml").write_text(f'[contract]\nfile = "{lab}"\nledger = "{ledger}"\n')
    a = mesh.start_node("a", extra_args=("--config", str(mesh.base_dir / "a.toml")))
    b = mesh.start_node("b", [a.endpoint], extra_args=("--contract", str(lab)))
    c = mesh.start_node("c", [a.endpoint, b.endpoint], extra_args=("--contract", str(lab)))
    x = mesh.start_node("x", [a.endpoint])  # no contract: it would join an open network
    ids = {n: mesh.nodes[n].node_id for n in ("a", "b", "c", "x")}

    def full_mesh() -> bool:
        return all(set(selected_routes(n)) >= {ids[m] for m in "abc" if m != n.name}
                   for n in (a, b, c))
    wait_for(full_mesh, 30, "a, b and c to route to each other")
    wait_for(lambda: a.log_path.read_text().count("peer_not_member") >= 2, 30,
             "a to refuse x twice (x redials)")
    assert ids["x"] not in _peer_ids(a)
    assert not set(selected_routes(x)) & {ids["a"], ids["b"], ids["c"]}
    assert ids["x"] not in selected_routes(a) and ids["x"] not in selected_routes(b)
    assert keys["x"][:4].hex() in a.log_path.read_text()  # logged with x's short id
    assert send_message(a, ids["c"], "t", "hello c")["state"] == "delivered"
    assert send_message(c, ids["b"], "t", "hello b")["state"] == "delivered"
    assert keys["c"].hex() in _session_peers(a)

    v2 = revoke(v1, keys["c"])
    start = time.monotonic()
    assert FileLedger(ledger).append(v2)          # a watches the ledger
    assert b.api.post("/v1/contract", to_json(v2))["version"] == 2  # (or a's gossip came first)
    assert b.api.get("/v1/contract")["version"] == 2

    def c_cut() -> bool:
        return (ids["c"] not in _peer_ids(a) | _peer_ids(b)
                and ids["c"] not in set(selected_routes(a)) | set(selected_routes(b))
                and keys["c"].hex() not in _session_peers(a))
    wait_for(c_cut, REVOKE_BOUND, "c's links, routes and sessions to be cut at a and b")
    assert time.monotonic() - start < REVOKE_BOUND
    assert a.api.get("/v1/contract")["version"] == 2
    assert send_message(a, ids["b"], "t", "still here")["state"] == "delivered"
    assert ids["c"] not in _peer_ids(a) | _peer_ids(b)  # c redials and is refused
    assert a.alive() and b.alive()


@pytest.mark.slow
def test_a_new_version_spreads_by_gossip_one_verified_step_at_a_time(mesh):
    keys = {n: _key(mesh, n) for n in ("a", "b", "c", "d")}
    v1 = contract_for({n: keys[n] for n in ("a", "b", "c")})
    v2 = ct.sign(ct.add_member(v1, keys["d"], "d"), OWNER)
    v3 = ct.sign(ct.set_rules(v2, [("*", "*"), ("ops", "*")]), OWNER)
    lab, ledger = mesh.base_dir / "lab.json", mesh.base_dir / "ledger"
    write_contract(lab, v1)
    (mesh.base_dir / "a.toml").write_text(f'[contract]\nfile = "{lab}"\nledger = "{ledger}"\n')
    a = mesh.start_node("a", extra_args=("--config", str(mesh.base_dir / "a.toml")))
    b = mesh.start_node("b", [a.endpoint], extra_args=("--contract", str(lab)))
    wait_for(lambda: mesh.nodes["b"].node_id in selected_routes(a), 30, "a to route to b")
    led = FileLedger(ledger)
    assert led.append(v2) and led.append(v3)  # a adopts 2 then 3 and offers each
    wait_for(lambda: all(n.api.get("/v1/contract")["version"] == 3 for n in (a, b)), 15,
             "version 3 to reach b by gossip")
    # c starts from version 1: b's offer of 3 is ahead, so c asks b for 2, then takes 3.
    c = mesh.start_node("c", [b.endpoint], extra_args=("--contract", str(lab)))
    wait_for(lambda: c.api.get("/v1/contract")["version"] == 3, 15,
             "c to catch up from version 1 to 3 through b")
    write_contract(lab.with_name("lab3.json"), v3)  # d starts from version 3 and is admitted
    d = mesh.start_node("d", [c.endpoint], extra_args=("--contract", str(lab.with_name("lab3.json"))))
    wait_for(lambda: d.node_id in selected_routes(a), 30, "a to route to the new member d")
