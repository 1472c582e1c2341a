"""The contract's rules enforced by real nodes, one test per enforcement point
(docs/contracts.md, "Enforcement"; ``sporenet/agents/enforcement.py``).

Members ``a`` (group ``app``) and ``b`` (group ``db``) under the rule ``app:db``: a may
reach b, b may not reach a. To see one point at work and no other, the node across
from the enforcing one runs without a contract (an open node, as a misconfigured or
hostile member would): nothing on that side stops what the point must stop. Each test
checks the refusal where it happens (the point's counter in ``GET /v1/status``, and
what a user sees: a message not delivered, a route or a link absent) and that the
allowed direction still works; each fails when its point's wiring in
``sporenet/node.py`` is removed.

The last test changes the rules on a 3-node line with a new contract version and
checks that it is in force at every node within 1 s and that the sessions it
forbids are closed.
"""

from __future__ import annotations

import time

import pytest

from sporenet.contract_file import to_json, write_contract
from sporenet.keyfile import generate_identity, load_key_file, write_key_file
from sporenet.local_mesh import selected_routes, send_message, wait_for
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols.identity import Identity

pytestmark = pytest.mark.slow

OWNER = Identity(bytes([43]) * 32)
CHANGE_BOUND = 1.0  # s: a new version is in force at every point of a 3-node line


def key_of(mesh, name: str) -> bytes:
    path = mesh.base_dir / name / "node.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_key_file(path, generate_identity())
    return load_key_file(path).public_key


def contract(mesh, groups: dict[str, str], rules=(("app", "db"),)) -> ct.Contract:
    """Signed version 1 with each named node a member of its group."""
    c = ct.new_contract("lab", [OWNER.public_key], 1, rules=rules)
    for name, group in sorted(groups.items()):
        c = ct.add_member(c, key_of(mesh, name), name, groups=(group,))
    return ct.sign(c, OWNER)


def with_contract(mesh, c: ct.Contract) -> tuple[str, ...]:
    path = mesh.base_dir / "lab.json"
    write_contract(path, c)
    return ("--contract", str(path))


def point(node, name: str) -> dict:
    return node.api.get("/v1/status")["contract"]["points"][name]


def peer_ids(node) -> set[str]:
    return {p["node_id"] for p in node.api.get("/v1/peers")["peers"]}


def session_peers(node) -> set[str]:
    return {s["peer"] for s in node.api.get("/v1/sessions")["sessions"]}


def linked(a, b) -> None:
    wait_for(lambda: b.node_id in peer_ids(a) and a.node_id in peer_ids(b), 20,
             f"{a.name} and {b.name} to link")


def test_link_point_refuses_a_non_member_and_links_a_member(mesh):
    c = contract(mesh, {"a": "app", "b": "db"})
    a = mesh.start_node("a", extra_args=with_contract(mesh, c))
    x = mesh.start_node("x", [a.endpoint])          # not a member; runs open
    b = mesh.start_node("b", [a.endpoint])          # a member; runs open
    linked(a, b)
    wait_for(lambda: point(a, "link")["refused"] >= 1, 20, "a's link point to refuse x")
    assert point(a, "link")["active"]
    assert x.node_id not in peer_ids(a) and a.node_id not in peer_ids(x)


def test_route_point_refuses_a_non_members_routes_relayed_by_an_open_member(mesh):
    c = contract(mesh, {"a": "app", "m": "db"})
    a = mesh.start_node("a", extra_args=with_contract(mesh, c))
    m = mesh.start_node("m", [a.endpoint])          # a member that runs open ...
    x = mesh.start_node("x", [m.endpoint])          # ... and links a non-member
    wait_for(lambda: x.node_id in selected_routes(m), 20, "m to route to x")
    linked(a, m)
    wait_for(lambda: point(a, "route")["refused"] >= 1, 20,
             "a's route point to refuse x's routes relayed by m")
    assert m.node_id in selected_routes(a)          # the member's own route is installed
    assert x.node_id not in selected_routes(a)      # the non-member's is not


def test_session_point_refuses_a_handshake_the_rules_forbid_and_takes_the_allowed_one(mesh):
    c = contract(mesh, {"a": "app", "b": "db"})
    a = mesh.start_node("a", extra_args=with_contract(mesh, c))
    b = mesh.start_node("b", [a.endpoint])          # open: it does not stop itself
    linked(a, b)
    # b -> a is forbidden (db may not reach app): a refuses b's handshakes
    out = send_message(b, a.node_id, "t", "from b", deadline=3.0)
    assert out["state"] == "failed", out
    assert point(a, "session")["refused"] >= 1
    assert b.node_id not in session_peers(a)
    # a -> b is allowed (app:db), and that session carries b's replies
    assert send_message(a, b.node_id, "t", "from a")["state"] == "delivered"
    assert b.node_id in session_peers(a)
    assert point(a, "send")["refused"] == 0


def test_send_point_refuses_a_send_the_rules_forbid_and_lets_the_allowed_one_in(mesh):
    c = contract(mesh, {"a": "app", "b": "db"})
    b = mesh.start_node("b", extra_args=with_contract(mesh, c))
    a = mesh.start_node("a", [b.endpoint])          # open: it accepts any handshake
    linked(a, b)
    # b may not reach a: b's own send point stops the message before any handshake
    out = send_message(b, a.node_id, "t", "from b", deadline=3.0)
    assert out["state"] == "failed", out
    assert point(b, "send")["refused"] >= 1
    assert a.node_id not in session_peers(b)
    # a may reach b: b's session point lets a's handshake in
    assert send_message(a, b.node_id, "t", "from a")["state"] == "delivered"
    assert point(b, "session")["refused"] == 0


def test_a_rule_change_is_in_force_at_every_point_of_a_line_within_1s(mesh):
    v1 = contract(mesh, {"a": "app", "b": "db", "c": "app"}, rules=(("*", "*"),))
    args = with_contract(mesh, v1)
    a = mesh.start_node("a", extra_args=args)
    b = mesh.start_node("b", [a.endpoint], extra_args=args)
    c = mesh.start_node("c", [b.endpoint], extra_args=args)
    wait_for(lambda: c.node_id in selected_routes(a) and a.node_id in selected_routes(c), 30,
             "a and c to route to each other through b")
    assert send_message(a, c.node_id, "t", "v1 lets app reach app")["state"] == "delivered"
    assert c.node_id in session_peers(a) and a.node_id in session_peers(c)
    for n in (a, b, c):
        status = n.api.get("/v1/status")["contract"]
        assert status["version"] == 1
        # every point but the TUN's: these nodes run --no-tun
        assert all(p["active"] for name, p in status["points"].items()
                   if not name.startswith("tun_")), status
        assert not status["points"]["tun_out"]["active"], status

    v2 = ct.sign(ct.set_rules(v1, [("app", "db")]), OWNER)  # app may reach only db now
    posted = time.monotonic()
    assert a.api.post("/v1/contract", to_json(v2))["version"] == 2
    wait_for(lambda: all(n.api.get("/v1/status")["contract"]["version"] == 2 for n in (a, b, c)),
             CHANGE_BOUND, "version 2 to be in force at a, b and c", interval=0.01)
    in_force = time.monotonic() - posted
    assert in_force < CHANGE_BOUND
    # the a-c session the new rules forbid is closed at both ends ...
    wait_for(lambda: c.node_id not in session_peers(a) and a.node_id not in session_peers(c),
             5, "the a-c session to be closed at both ends")
    # ... a new one is refused where it would start, and app -> db still works
    out = send_message(a, c.node_id, "t", "v2 forbids this", deadline=3.0)
    assert out["state"] == "failed" and point(a, "send")["refused"] >= 1
    assert send_message(c, b.node_id, "t", "app may reach db")["state"] == "delivered"
