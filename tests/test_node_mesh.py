"""Real ``sporenet up`` processes on loopback: they link, measure, and survive a death."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sporenet.node import BUILTIN_AGENTS
from sporenet.local_mesh import LocalMesh, wait_for

pytestmark = pytest.mark.slow

FAST_PROBES = ("--probe-interval", "0.2")


def peers_of(node) -> dict[str, dict]:
    return {p["node_id"]: p for p in node.api.peers()["peers"]}


def measured_peers(node) -> set[str]:
    return {nid for nid, p in peers_of(node).items() if p["rtt_ms"] is not None}


@pytest.fixture
def mesh(tmp_path):
    m = LocalMesh(tmp_path, extra_args=FAST_PROBES)
    try:
        yield m
    finally:
        m.close()


def test_three_nodes_link_measure_and_notice_a_death(mesh):
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    c = mesh.start_node("c", peers=[a.endpoint, b.endpoint])
    nodes = {"a": a, "b": b, "c": c}
    for name, node in nodes.items():
        others = {n.node_id for k, n in nodes.items() if k != name}
        wait_for(lambda: measured_peers(node) >= others, 20, f"{name} to measure its peers")

    # The CLI shows the same, as JSON a script can read.
    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "peers", "--api", a.info["api"],
                          "--json"], capture_output=True, text=True, timeout=30, check=True)
    rows = json.loads(out.stdout)["peers"]
    assert {r["node_id"] for r in rows} == {b.node_id, c.node_id}
    assert all(0 < r["rtt_ms"] < 100 and r["loss"] is not None for r in rows)
    status = a.api.status()
    assert status["node_id"] == a.node_id and status["agents"] == {name: "running" for name in BUILTIN_AGENTS}

    mesh.stop_node("c", sig=9)  # no goodbye: the others must notice by themselves
    for node in (a, b):
        wait_for(lambda: c.node_id not in peers_of(node), 15, "c to be gone")
    assert a.alive() and b.alive()
    assert set(peers_of(a)) == {b.node_id} and set(peers_of(b)) == {a.node_id}


def test_a_silent_node_is_declared_dead_then_relinks_when_it_wakes(mesh):
    """SIGSTOP keeps the TCP connections open: only the probers can tell the peer is gone."""
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    wait_for(lambda: b.node_id in measured_peers(a), 20, "a to measure b")

    b.process.send_signal(19)  # SIGSTOP
    try:
        # dead_after is 4 probe intervals (0.8 s here); allow generous scheduling slack.
        wait_for(lambda: b.node_id not in peers_of(a), 10, "a to declare the silent b dead")
    finally:
        b.process.send_signal(18)  # SIGCONT
    # b redials its configured peer by itself, and the link is measured again.
    wait_for(lambda: b.node_id in measured_peers(a) and a.node_id in measured_peers(b), 30,
             "b to relink with a")
