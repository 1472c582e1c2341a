"""Real nodes route beyond their neighbours: a line a - b - c, where a and c never link."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sporenet.local_mesh import selected_routes, wait_for

pytestmark = pytest.mark.slow


def test_line_of_three_learns_routes_through_the_middle_and_loses_them(mesh):
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    c = mesh.start_node("c", peers=[b.endpoint])

    wait_for(lambda: c.node_id in selected_routes(a) and a.node_id in selected_routes(c), 30,
             "a and c to learn routes to each other")
    via_b = selected_routes(a)[c.node_id]
    assert via_b["next_hop"] == b.node_id
    assert via_b["address"] == c.info["address"]
    direct = selected_routes(a)[b.node_id]
    assert via_b["metric"] > direct["metric"]  # two link costs add up to more than one
    assert selected_routes(c)[a.node_id]["next_hop"] == b.node_id

    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "routes", "--api", a.info["api"],
                          "--json"], capture_output=True, text=True, timeout=30, check=True)
    assert c.node_id in {r["destination"] for r in json.loads(out.stdout)["routes"]}

    why = a.api.get("/v1/explain", destination=c.info["address"])
    assert why["destination"] == c.node_id and why["selected"]["next_hop"] == b.node_id
    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "explain", c.node_id[:12],
                          "--api", a.info["api"]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and b.node_id[:8] in out.stdout, out.stdout + out.stderr

    mesh.stop_node("b", sig=9)
    wait_for(lambda: c.node_id not in selected_routes(a), 30, "a to drop its route to c")
