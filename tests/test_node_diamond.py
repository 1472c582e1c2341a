"""Real processes on loopback, a diamond: A-B-D and A-C-D, where B reaches D through a
delay proxy. A routes to D via C; killing or freezing C moves the route to B within a bound
derived from the probe interval, and bringing C back moves it back.

        B --(proxy +DELAY_MS each way)-- D
       /                                 /
      A ------------- C ----------------'
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from sporenet.local_mesh import LocalMesh, wait_for
from sporenet.transports.delay_proxy import DelayProxy

pytestmark = pytest.mark.slow

PROBE = 0.2  # --probe-interval: a link is declared dead 4 intervals after its last ack
DELAY_MS = 40  # one way on B-D: any path over that link has an RTT of at least 80 ms
SLOW_METRIC = 2 * DELAY_MS  # cost = rtt_ms + 1 >= 2 * DELAY_MS + 1 on the B-D link
# Dead detection (4 probe intervals; a SIGKILLed peer's sockets usually close at once)
# plus propagation: A's retraction and seqno request to B, B's forward to D over the
# proxy, D's new seqno back over the proxy, each a few bus hops inside every node.
REROUTE_BUDGET = 4 * PROBE + 2.0


def routes_to(node, dest) -> list[dict]:
    return [r for r in node.api.get("/v1/routes")["routes"] if r["destination"] == dest.node_id]


def selected_to(node, dest) -> dict | None:
    return next((r for r in routes_to(node, dest) if r["selected"]), None)


def via(node, dest, hop) -> dict | None:
    """The selected route from node to dest if its next hop is hop, else None."""
    r = selected_to(node, dest)
    return r if r is not None and r["next_hop"] == hop.node_id else None


def peer_cost(node, peer) -> float | None:
    p = next((p for p in node.api.peers()["peers"] if p["node_id"] == peer.node_id), None)
    return None if p is None else p["cost"]


def ping(src, dst, timeout: float = 2.0) -> dict:
    """One overlay ping src -> dst through the node's API: the final result."""
    started = src.api.post("/v1/ping", {"to": dst.node_id, "timeout": timeout})
    return wait_for(lambda: (lambda r: r if r.get("state") != "pending" else None)(
        src.api.get("/v1/ping", id=str(started["id"]))), timeout + 3, "the ping result")


def ping_ok(src, dst) -> dict:
    """Pings until one is answered (a route may still be settling on the way back)."""
    return wait_for(lambda: (lambda r: r if r["state"] == "ok" else None)(ping(src, dst)),
                    15, f"a ping {src.name} -> {dst.name} to be answered", interval=0)


def send_ok(src, dst, text: str) -> None:
    started = src.api.post("/v1/messages", {"to": dst.info["address"], "topic": "diamond",
                                            "data": text, "deadline": 10})
    res = wait_for(lambda: (lambda r: r if r.get("state") != "pending" else None)(
        src.api.get("/v1/message", id=str(started["id"]))), 12, "the message result")
    assert res["state"] == "delivered", res
    got = wait_for(lambda: dst.api.get("/v1/messages", topic="diamond")["messages"], 5,
                   f"{dst.name} to receive the message")
    assert [m["data"] for m in got] == [text]


class Diamond:
    """The four nodes, the proxy on B-D, and C's process while it is frozen."""

    def __init__(self, tmp_path) -> None:
        self.mesh = LocalMesh(tmp_path, extra_args=("--probe-interval", str(PROBE)))
        self.proxy: DelayProxy | None = None
        self.frozen = None

    def start(self) -> None:
        self.d = self.mesh.start_node("d")
        self.proxy = DelayProxy(listen="tcp://127.0.0.1:0", target=self.d.endpoint,
                                delay_ms=DELAY_MS)
        self.b = self.mesh.start_node("b", peers=[self.proxy.start()])
        self.c = self.mesh.start_node("c", peers=[self.d.endpoint])
        self.a = self.mesh.start_node("a", peers=[self.b.endpoint, self.c.endpoint])

    def fail_c(self, how: str) -> None:
        if how == "kill":
            self.mesh.stop_node("c", sig=signal.SIGKILL)
        else:
            self.frozen = self.c.process
            os.kill(self.frozen.pid, signal.SIGSTOP)

    def restore_c(self, how: str) -> None:
        if how == "kill":  # a new process on a new port: it dials A and D
            self.c = self.mesh.start_node("c", peers=[self.d.endpoint, self.a.endpoint])
        else:  # the same process: A had closed the link and redials C's endpoint
            os.kill(self.frozen.pid, signal.SIGCONT)
            self.frozen = None

    def close(self) -> None:
        if self.frozen is not None and self.frozen.poll() is None:
            os.kill(self.frozen.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
        if self.proxy is not None:
            self.proxy.stop()
        self.mesh.close()


@pytest.fixture
def diamond(tmp_path):
    net = Diamond(tmp_path)
    try:
        net.start()
        yield net
    finally:
        net.close()


def check_route_via_c(net: Diamond) -> None:
    a, b, c, d = net.a, net.b, net.c, net.d
    # Measured links (an unmeasured one costs 100) and B's route to D known to A.
    wait_for(lambda: (peer_cost(b, d) or 0) > SLOW_METRIC and via(a, d, c)
             and via(d, a, c) and any(r["next_hop"] == b.node_id for r in routes_to(a, d)),
             20, "A and D to route to each other via C, with B's route to D known to A")
    sel = via(a, d, c)
    assert 2 <= sel["metric"] < SLOW_METRIC, sel
    c_to_d, a_to_c = via(c, d, d)["metric"], round(peer_cost(a, c))
    # C re-advertises only when its metric moves by more than the hysteresis margin
    # (2 at these sizes) and costs are re-measured between the reads: a small slack.
    assert abs(sel["metric"] - (a_to_c + c_to_d)) <= 4, (sel, a_to_c, c_to_d)
    alt = [r for r in routes_to(a, d) if r["next_hop"] == b.node_id]
    assert alt and not alt[0]["selected"] and alt[0]["metric"] > sel["metric"]
    why = a.api.get("/v1/explain", destination=d.node_id)
    assert why["selected"]["next_hop"] == c.node_id
    ruled = {x["next_hop"]: x["ruled_out"] for x in why["alternatives"]}
    assert ruled.get(b.node_id) in ("infeasible", "worse metric"), why
    before = ping_ok(a, d)
    assert before["hops"] == 2 and before["rtt_ms"] < 2 * DELAY_MS, before
    print(f"\nvia C: metric {sel['metric']}, ping {before['rtt_ms']:.2f} ms; "
          f"B alternative {alt[0]['metric']} ({ruled[b.node_id]})")


def reroute_to_b(net: Diamond, how: str) -> None:
    a, b, c, d = net.a, net.b, net.c, net.d
    t0 = time.monotonic()
    net.fail_c(how)
    new = wait_for(lambda: via(a, d, b), REROUTE_BUDGET, "A's route to D to move to B",
                   interval=0.01)
    reroute = time.monotonic() - t0
    wait_for(lambda: via(d, a, b), REROUTE_BUDGET, "D's route to A to move to B", interval=0.01)
    back = time.monotonic() - t0
    print(f"{how}: reroute A->D via B after {reroute * 1000:.0f} ms (D->A {back * 1000:.0f} ms, "
          f"budget {REROUTE_BUDGET * 1000:.0f} ms), metric {new['metric']}")
    if how == "freeze":
        # Only the probers saw it: A suspects the silent link 2.5 probe intervals after
        # its last ack (at most about one interval before the freeze) and routes around
        # it then, before declaring it dead at 4 intervals.
        assert reroute >= 1.5 * PROBE
    assert new["metric"] > SLOW_METRIC, new  # it crosses the slow link now
    # A suspect link's routes stay listed (unselected) until the link is declared dead.
    wait_for(lambda: not any(r["next_hop"] == c.node_id for r in routes_to(a, d)),
             4 * PROBE + 2.0, "A to forget its routes via C once the link is dead")
    after = ping_ok(a, d)
    assert after["hops"] == 2 and after["rtt_ms"] >= 2 * DELAY_MS, after
    send_ok(a, d, "around the dead corner")
    print(f"ping via B: {after['rtt_ms']:.2f} ms")


def route_back_to_c(net: Diamond, how: str) -> None:
    t1 = time.monotonic()
    net.restore_c(how)
    a, c, d = net.a, net.c, net.d
    wait_for(lambda: via(a, d, c), 15, "A's route to D to return to C", interval=0.02)
    print(f"route back via C {(time.monotonic() - t1) * 1000:.0f} ms after C's return began "
          f"(process start if killed, link, measurement and update)")
    assert via(a, d, c)["metric"] < SLOW_METRIC
    assert ping_ok(a, d)["rtt_ms"] > 0


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_diamond_prefers_the_fast_side_and_reroutes_when_it_fails(diamond, how):
    """``kill``: SIGKILL, C's sockets close at once (the peers see the link go down).
    ``freeze``: SIGSTOP, C's sockets stay open and silent, so only the probers can
    notice (suspect after 2.5 probe intervals, dead after 4); SIGCONT brings C back."""
    check_route_via_c(diamond)
    reroute_to_b(diamond, how)
    route_back_to_c(diamond, how)
