"""Real nodes linked over the UDP carrier: pings and messages over udp:// links, and
loss-aware routing between real processes. Over TCP a lost probe is retransmitted and
the prober sees only delay; over UDP probes are datagrams, so a lossy link shows its
loss and the router takes the clean two-hop path around it."""

from __future__ import annotations

import random
import socket
import time

import pytest

from sporenet.local_mesh import LocalMesh, ping, selected_routes, send_message, wait_for
from sporenet.transports.loss_proxy import LossProxy

pytestmark = pytest.mark.slow
UDP = ("--listen", "udp://127.0.0.1:0", "--probe-interval", "0.1")


def udp_endpoint(node) -> str:
    return next(e for e in node.info["listen"] if e.startswith("udp://"))


def peer_row(node, other) -> dict | None:
    return next((p for p in node.api.get("/v1/peers")["peers"]
                 if p["node_id"] == other.node_id), None)


def test_two_nodes_link_ping_and_message_over_udp(mesh):
    b = mesh.start_node("b", extra_args=UDP)
    a = mesh.start_node("a", peers=[udp_endpoint(b)], extra_args=UDP)
    wait_for(lambda: (row := peer_row(a, b)) and row["samples"] >= 20, 30,
             "a's link to b over udp:// with 20 probe samples")
    row = peer_row(a, b)
    assert row["endpoint"].startswith("udp://") and row["loss"] == 0.0, row
    assert ping(a, b.node_id)["state"] == "ok"
    assert send_message(a, b.node_id, "t", "over datagrams")["state"] == "delivered"


def test_a_node_routes_around_a_lossy_udp_link(tmp_path):
    # probes every 0.1 s, but a link is dead only after 2 s without an answer: at ~19 %
    # probe loss the default 4 intervals are lost in a row often enough to flap the
    # link and restart its samples
    conf = tmp_path / "node.toml"
    conf.write_text("[prober]\ninterval = 0.1\ndead_after = 2.0\n")
    args = ("--listen", "udp://127.0.0.1:0", "--config", str(conf))
    with LocalMesh(tmp_path / "mesh") as mesh:
        _route_around(mesh, args)


def _route_around(mesh: LocalMesh, args: tuple[str, ...]) -> None:
    a = mesh.start_node("a", extra_args=args)
    b = mesh.start_node("b", peers=[udp_endpoint(a)], extra_args=args)
    # c's direct link to a loses 10 % each way (a probe or its ack: ~19 %)
    proxy = LossProxy(udp_endpoint(a), loss=0.1, seed=5)
    mesh.proxies.append(proxy)
    lossy = proxy.start()
    c = mesh.start_node("c", peers=[udp_endpoint(b), lossy], extra_args=args)
    # 150 samples: the loss estimate (~19 %) is then well clear of the 8 % asserted
    # below (after 30 it once read 6 %)
    wait_for(lambda: (row := peer_row(a, c)) and row["samples"] >= 150, 40,
             lambda: f"a's direct link to c to have 150 probe samples: {peer_row(a, c)}")

    def around() -> bool:
        route = selected_routes(a).get(c.node_id)
        return route is not None and route["next_hop"] == b.node_id
    wait_for(around, 30, lambda: f"a to route to c via b; a's routes: {selected_routes(a)}")
    direct, clean = peer_row(a, c), peer_row(a, b)
    assert direct is not None and direct["loss"] > 0.08, direct
    assert clean["loss"] < 0.05, clean
    assert selected_routes(c)[a.node_id]["next_hop"] == b.node_id
    assert proxy.counts["dropped"] > 0
    # the lossy link is still up (its hellos and control frames are retransmitted) and
    # traffic to c takes the clean path
    assert peer_row(c, a) is not None
    assert send_message(a, c.node_id, "t", "around the loss")["state"] == "delivered"


def test_a_datagram_flood_is_bounded_and_the_node_keeps_routing(mesh):
    """20,000 datagrams at b's udp port from one socket (connects with fresh tokens, data
    for tokens b never gave, garbage): b keeps at most its pre-hello limit, logs a few
    lines, answers with fewer bytes than it got, and still pings its real peer."""
    b = mesh.start_node("b", extra_args=UDP)
    a = mesh.start_node("a", peers=[udp_endpoint(b)], extra_args=UDP)
    wait_for(lambda: ping(a, b.node_id)["state"] == "ok", 20, "a to ping b over udp")
    lines0 = len(b.log_path.read_text().splitlines())
    host, port = udp_endpoint(b).removeprefix("udp://").rsplit(":", 1)
    rng = random.Random(9)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent = got = 0
    try:
        for i in range(20_000):
            kind = i % 4
            if kind == 0:  # a CONNECT with a fresh token: each one a would-be connection
                pkt = bytes([1]) + rng.randbytes(4) + bytes([1]) + bytes(26)
            elif kind == 1:  # DATA for a token b never gave
                pkt = bytes([3]) + rng.randbytes(4) + rng.randbytes(60)
            else:
                pkt = rng.randbytes(rng.randrange(1, 120))
            try:
                sent += sock.sendto(pkt, (host, int(port)))
            except BlockingIOError:
                pass
            if i % 500 == 0:
                pings_ok = ping(a, b.node_id)["state"] == "ok"
                assert pings_ok, "b stopped answering a during the flood"
                got += _drain(sock)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            got += _drain(sock)
            time.sleep(0.05)
    finally:
        sock.close()
    # the counters reach the API with the link table's next change (its hello timeouts)
    counters = wait_for(lambda: (c := b.api.status()["counters"]).get("pending_evicted") and c,
                        15, lambda: f"b's counters to show evictions: {b.api.status()['counters']}")
    assert counters["pending_hello"] <= 256, counters
    assert got < sent, (got, sent)  # no reflection gain
    assert ping(a, b.node_id)["state"] == "ok"
    assert b.alive()
    grown = len(b.log_path.read_text().splitlines()) - lines0
    assert grown < 200, f"b's log grew by {grown} lines"


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            n += len(sock.recv(65535))
        except (BlockingIOError, ConnectionRefusedError):
            return n
