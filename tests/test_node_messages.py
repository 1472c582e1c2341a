"""Real nodes carry messages and pings across several hops of routed overlay."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sporenet.local_mesh import selected_routes as selected, wait_for

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sporenet.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_five_node_line_delivers_a_message_and_a_ping_across_four_hops(mesh):
    nodes = [mesh.start_node("n0")]
    for i in range(1, 5):
        nodes.append(mesh.start_node(f"n{i}", peers=[nodes[-1].endpoint]))
    first, last = nodes[0], nodes[-1]
    wait_for(lambda: last.node_id in selected(first) and first.node_id in selected(last), 60,
             "the ends of the line to learn routes to each other")

    out = cli("send", "--api", first.info["api"], "--to", last.info["address"], "--topic", "greet",
              "hello across four hops")
    assert out.returncode == 0, out.stdout + out.stderr
    got = cli("recv", "--api", last.info["api"], "--topic", "greet", "--wait", "10", "--json")
    assert '"data": "hello across four hops"' in got.stdout
    assert first.info["address"] in got.stdout  # the receiver sees who sent it

    out = cli("ping", "--api", first.info["api"], "-c", "2", last.node_id)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 hops" in out.stdout


def test_send_to_an_unknown_destination_fails_clearly(mesh):
    a = mesh.start_node("a")
    out = cli("send", "--api", a.info["api"], "--to", "600::1", "--timeout", "1", "x")
    assert out.returncode != 0 and "not delivered" in out.stderr
    out = cli("send", "--api", a.info["api"], "--to", "not-an-address", "x")
    assert out.returncode != 0 and "neither an overlay address" in out.stderr
