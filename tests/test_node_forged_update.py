"""A rogue peer forges route updates against a real node: every forgery is refused and
counted (``bad_signature``), no route changes, and the node goes on serving its peers.

Three real nodes: the victim ``v`` and ``w`` both link to ``a``. The test process
is the rogue: it completes the signed hello with a key of its own (so it is a
genuine, authenticated neighbour of ``a``), answers ``a``'s probes, and sends
``RouteUpdate`` frames that claim ``v``'s prefix (``v``'s public key) without
``v``'s signature. A correctly signed announcement of the rogue's own prefix is the
control: it is accepted, so the refusals are about the signatures, not about the
rogue's link being ignored.

Not tested here: replaying a genuine update of ``v`` with a better metric. That is
not a forgery (signatures cover origin, seqno and region, not the metric, as in
Babel) and a relay can lie about its metric; see ``sporenet/protocols/routing/router.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from sporenet.config import parse_endpoint
from sporenet.keyfile import load_key_file
from sporenet.local_mesh import LocalMesh, wait_for
from sporenet.node import BUILTIN_AGENTS
from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError
from sporenet.protocols.link.framing import FrameDecoder, encode_length_prefixed
from sporenet.protocols.identity import Identity
from sporenet.protocols.link.messages import Close, Hello, HelloProof, Probe, ProbeAck, hello_transcript
from sporenet.protocols.routing.messages import INFINITY, RouteUpdate, route_transcript

pytestmark = pytest.mark.slow

DEADLINE = 10.0


class Rogue:
    """A peer driven by the test: a real TCP link with a completed signed hello.

    A reader thread answers the node's probes (so the node keeps the link) and
    keeps every ``RouteUpdate`` the node sends."""

    def __init__(self, node, identity: Identity, name: str = "rogue") -> None:
        self.identity = identity
        self.node_id = identity.node_id.hex()
        _, host, port = parse_endpoint(node.endpoint)
        self.sock = socket.create_connection((host, port), timeout=DEADLINE)
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self.updates: list[RouteUpdate] = []
        self.closed: Close | None = None
        self.probes_answered = 0
        self._decoder = FrameDecoder()
        theirs = self._read_hello()
        nonce = os.urandom(16)
        self.send(Hello(identity.public_key, nonce, "", name))
        self.send(HelloProof(identity.sign(hello_transcript(identity.public_key, nonce,
                                                            theirs.public_key, theirs.nonce))))
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, name="rogue-reader", daemon=True)
        self._thread.start()

    def _read_hello(self) -> Hello:
        while True:
            chunk = self.sock.recv(65536)
            assert chunk, "node closed before its hello"
            frames = self._decoder.feed(chunk)
            if frames:
                msg = wire.decode_frame(frames[0])
                assert isinstance(msg, Hello) and len(frames) == 1
                return msg

    def send(self, msg: wire.Message) -> None:
        with self._send_lock:
            self.sock.sendall(encode_length_prefixed(wire.encode_frame(msg)))

    def _run(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                for frame in self._decoder.feed(chunk):
                    try:
                        msg = wire.decode_frame(frame)
                    except DecodeError:
                        continue  # a frame type this test does not need to read
                    self._on(msg)
        except OSError:
            return
        finally:
            with self._cond:
                self.closed = self.closed or Close(0, "socket closed")
                self._cond.notify_all()

    def _on(self, msg: wire.Message) -> None:
        if isinstance(msg, Probe):
            self.send(ProbeAck(msg.seq))
            self.probes_answered += 1
        with self._cond:
            if isinstance(msg, RouteUpdate):
                self.updates.append(msg)
            elif isinstance(msg, Close):
                self.closed = msg
            self._cond.notify_all()

    def update_for(self, origin_pub: bytes) -> RouteUpdate | None:
        """The latest update the node sent us for ``origin_pub``."""
        with self._cond:
            return next((u for u in reversed(self.updates) if u.origin_pub == origin_pub), None)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


def routes(node) -> list[dict]:
    return node.api.get("/v1/routes")["routes"]


def router_counters(node) -> dict[str, int]:
    return node.api.get("/v1/routes")["counters"]


def peers_of(node) -> dict[str, dict]:
    return {p["node_id"]: p for p in node.api.peers()["peers"]}


def selected(node) -> dict[str, dict]:
    return {r["destination"]: r for r in routes(node) if r["selected"]}


def rows_to(node, dest_id: str) -> list[dict]:
    return [r for r in routes(node) if r["destination"] == dest_id]


def pong(src, dst) -> dict:
    started = src.api.post("/v1/ping", {"to": dst.node_id, "timeout": 3})
    res = wait_for(lambda: (lambda r: r if r.get("state") != "pending" else None)(
        src.api.get("/v1/ping", id=str(started["id"]))), 6, "the ping result")
    assert res["state"] == "ok", res
    return res


def pub_of(node) -> bytes:
    return load_key_file(node.key_file).public_key


@pytest.fixture
def trio(tmp_path):
    mesh = LocalMesh(tmp_path, extra_args=("--probe-interval", "0.2"))
    try:
        a = mesh.start_node("a")
        v = mesh.start_node("v", peers=[a.endpoint])
        w = mesh.start_node("w", peers=[a.endpoint])
        wait_for(lambda: v.node_id in selected(w) and w.node_id in selected(v)
                 and all((p["samples"] or 0) >= 3 for p in peers_of(a).values())
                 and len(peers_of(a)) == 2, 20, "v and w to route to each other through a")
        yield mesh, a, v, w
    finally:
        mesh.close()


def announce_own(rogue: Rogue, seqno: int) -> RouteUpdate:
    """The rogue's own prefix, correctly signed: what any node may say."""
    rid = rogue.identity
    msg = RouteUpdate(rid.public_key, seqno, 0, "", 0,
                      rid.sign(route_transcript(rid.public_key, seqno, "")))
    rogue.send(msg)
    return msg


def forgeries(rogue: Rogue, v_pub: bytes, genuine: RouteUpdate) -> dict[str, RouteUpdate]:
    """Updates for v's prefix that v never signed."""
    s, region = genuine.seqno, genuine.region
    newer = (s + 1) % 0x10000

    def signed_by_rogue(seqno: int, reg: str) -> bytes:
        return rogue.identity.sign(route_transcript(v_pub, seqno, reg))

    return {
        # v's prefix with a newer seqno, best metric, signed by the rogue's own key
        "rogue_signed": RouteUpdate(v_pub, newer, 0, region, 0, signed_by_rogue(newer, region)),
        # the same with garbage for a signature
        "garbage_signature": RouteUpdate(v_pub, newer, 0, region, 0, os.urandom(64)),
        # a retraction of v's route that v never signed
        "forged_retraction": RouteUpdate(v_pub, s, INFINITY, region, 0,
                                         signed_by_rogue(s, region)),
        # v's genuine signature moved to another region (a locality lie)
        "moved_signature": RouteUpdate(v_pub, s, 0, region + "x", 0, genuine.signature),
        # v's genuine signature on a newer seqno
        "stale_signature": RouteUpdate(v_pub, newer, 0, region, 0, genuine.signature),
    }


def selected_keys(rows: list[dict], skip: str) -> set[tuple]:
    return {(r["destination"], r["next_hop"], r["seqno"]) for r in rows
            if r["selected"] and r["destination"] != skip}


def assert_routes_unchanged(a, v, w, rogue: Rogue, before: dict, explain_before: dict,
                            seqno: int) -> None:
    for node in (a, w):
        rows = rows_to(node, v.node_id)
        assert not any(r["next_hop"] == rogue.node_id for r in rows), rows
        was = [r for r in before[node.name] if r["destination"] == v.node_id]
        assert {(r["next_hop"], r["seqno"]) for r in rows} == {
            (r["next_hop"], r["seqno"]) for r in was}, (was, rows)
        assert all(r["seqno"] == seqno for r in rows)
        # Every selected route (but the rogue's own): same next hop and seqno as before.
        assert selected_keys(routes(node), rogue.node_id) == selected_keys(
            before[node.name], rogue.node_id), node.name
    sel = selected(a)[v.node_id]
    old = next(r for r in before["a"] if r["destination"] == v.node_id and r["selected"])
    assert sel["next_hop"] == v.node_id
    # The metric is the a-v link cost (v advertises 0); only a re-measured cost moves it.
    cost = round(peers_of(a)[v.node_id]["cost"])
    assert sel["metric"] == old["metric"] or abs(sel["metric"] - cost) <= 1, (old, sel, cost)
    assert selected(w)[v.node_id]["next_hop"] == a.node_id
    explain_after = a.api.get("/v1/explain", destination=v.node_id)
    assert explain_after["selected"]["next_hop"] == v.node_id
    assert (explain_after["last_change"], explain_after["reason"]) == (
        explain_before["last_change"], explain_before["reason"])


def assert_still_serving(a, v, w, rogue: Rogue) -> None:
    assert a.alive() and a.api.status()["agents"] == {n: "running" for n in BUILTIN_AGENTS}
    assert set(peers_of(a)) == {v.node_id, w.node_id, rogue.node_id}
    assert pong(w, v)["hops"] == 2
    assert pong(a, v)["hops"] == 1


def assert_cli_shows_counter(a, value: int) -> None:
    def routes_cli(*extra: str) -> str:
        return subprocess.run([sys.executable, "-m", "sporenet.cli", "routes", "--api",
                               a.info["api"], *extra], capture_output=True, text=True,
                              timeout=30, check=True).stdout

    assert json.loads(routes_cli("--json"))["counters"]["bad_signature"] == value
    out = routes_cli()
    assert f"bad_signature {value}" in out, out


def test_forged_updates_for_anothers_prefix_are_refused_and_change_no_route(trio):
    mesh, a, v, w = trio
    rogue = Rogue(a, Identity(os.urandom(32)))
    try:
        wait_for(lambda: rogue.node_id in peers_of(a), DEADLINE, "a to accept the rogue")
        v_pub = pub_of(v)
        # a dumps its table to a new neighbour: the rogue now holds v's genuine update.
        genuine = wait_for(lambda: rogue.update_for(v_pub), DEADLINE, "a's update for v")
        assert genuine.metric < INFINITY
        # Control: the rogue's own prefix, correctly signed, is accepted and relayed.
        announce_own(rogue, 7)
        wait_for(lambda: rogue.node_id in selected(a) and rogue.node_id in selected(w),
                 DEADLINE, "a and w to route to the rogue")

        before = {n.name: routes(n) for n in (a, w)}
        counters_before = router_counters(a)
        explain_before = a.api.get("/v1/explain", destination=v.node_id)
        assert explain_before["selected"]["next_hop"] == v.node_id
        forged = forgeries(rogue, v_pub, genuine)
        for msg in forged.values():
            rogue.send(msg)
        want = counters_before["bad_signature"] + len(forged)
        wait_for(lambda: router_counters(a)["bad_signature"] >= want, DEADLINE,
                 f"a to count {len(forged)} bad signatures")
        # Once a takes the rogue's next own update, everything sent before it has been
        # handled (one TCP stream, one router actor).
        announce_own(rogue, 8)
        wait_for(lambda: (selected(a).get(rogue.node_id) or {}).get("seqno") == 8,
                 DEADLINE, "a to take the rogue's refresh")
        counters_after = router_counters(a)
        print(f"\nbad_signature {counters_before['bad_signature']} -> "
              f"{counters_after['bad_signature']} for {len(forged)} forgeries")
        assert counters_after["bad_signature"] == want, counters_after
        assert counters_after["unknown_neighbour"] == counters_before["unknown_neighbour"]

        assert_routes_unchanged(a, v, w, rogue, before, explain_before, genuine.seqno)
        assert_still_serving(a, v, w, rogue)
        assert_cli_shows_counter(a, want)
    finally:
        rogue.close()
