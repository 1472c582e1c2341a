"""Real nodes on a line A-B-C: messages between A and C ride an end-to-end session.

B's bus carries every link frame it receives and sends (``link.table.rx`` / ``link.table.tx``), so a
subscriber on B's bus sees all the bytes that cross B; the payload is never among them.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading

import pytest

from sporenet.local_mesh import selected_routes as selected, wait_for
from sporenet.protocols import wire
from sporenet.protocols.notices import LinkFrameIn, LinkFrameOut
from sporenet.protocols.routed import Proto, Routed
from sporenet.transports.bus import BusClient, load_endpoints

pytestmark = pytest.mark.slow

SECRET = "zebra-quartz-7391: the payload B must never see in clear"
ANSWER = "mango-violet-2846: and the reply neither"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sporenet.cli", *args], capture_output=True,
                          text=True, timeout=60)


def sessions(node) -> list[dict]:
    out = cli("sessions", "--api", node.info["api"], "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)["sessions"]


class Tap:
    """Every link frame through a node, read off its bus in a thread; the notices of any
    ``extra_topics`` go to ``notices``, in order."""

    def __init__(self, run_dir, *extra_topics: str) -> None:
        self.client = BusClient(load_endpoints(run_dir))
        self.client.subscribe(LinkFrameIn.TOPIC, LinkFrameOut.TOPIC, *extra_topics)
        self.client.sync()
        self.frames: list[bytes] = []
        self.notices: list[object] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            notice = self.client.recv(timeout=0.1)
            if isinstance(notice, (LinkFrameIn, LinkFrameOut)):
                self.frames.append(bytes(notice.frame))
            elif notice is not None:
                self.notices.append(notice)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def routed(self) -> list[Routed]:
        out = []
        for f in list(self.frames):
            if len(f) > 1 and f[1] == Routed.TYPE:
                out.append(wire.decode_frame(f))
        return out


def test_message_rides_a_session_the_transit_cannot_read(mesh):
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    c = mesh.start_node("c", peers=[b.endpoint])
    wait_for(lambda: c.node_id in selected(a) and a.node_id in selected(c), 60,
             "A and C to learn routes to each other")
    tap = Tap(b.run_dir)
    try:
        out = cli("send", "--api", a.info["api"], "--to", c.info["address"], "--topic", "e2e",
                  SECRET)
        assert out.returncode == 0, out.stdout + out.stderr
        got = cli("recv", "--api", c.info["api"], "--topic", "e2e", "--wait", "10", "--json")
        [msg] = [json.loads(line) for line in got.stdout.splitlines() if line.strip()]
        assert msg["data"] == SECRET and msg["from"] == a.info["address"]

        out = cli("send", "--api", c.info["api"], "--to", msg["from"], "--topic", "e2e",
                  "--reply-to", str(msg["msg_id"]), ANSWER)
        assert out.returncode == 0, out.stdout + out.stderr
        back = cli("recv", "--api", a.info["api"], "--topic", "e2e", "--wait", "10", "--json")
        [rep] = [json.loads(line) for line in back.stdout.splitlines() if line.strip()]
        assert rep["data"] == ANSWER and rep["from"] == c.info["address"]

        def both_pq() -> bool:
            rows = {n.name: sessions(n) for n in (a, c)}
            return all(len(r) == 1 and r[0]["pq"] and r[0]["bytes_in"] > 0
                       and r[0]["bytes_out"] > 0 for r in rows.values())
        wait_for(both_pq, 20, lambda: f"one PQ session each on A and C: "
                                      f"{sessions(a)} / {sessions(c)}")
        [row_a], [row_c] = sessions(a), sessions(c)
        assert row_a["address"] == c.info["address"] and row_c["address"] == a.info["address"]
        # named by node id, as status, peers and routes name nodes; the key beside it
        assert row_a["peer"] == c.node_id and row_c["peer"] == a.node_id
        assert len(row_a["peer_key"]) == 64 and row_a["peer_key"] != row_a["peer"]
        assert row_a["state"] == row_c["state"] == "established"
        assert row_a["bytes_out"] >= len(SECRET) and row_c["bytes_out"] >= len(ANSWER)
        assert sessions(b) == []  # the transit holds no session with A or C
        counters = a.api.get("/v1/sessions")["counters"]
        assert counters["handshakes"] >= 2 and not counters.get("cleartext_dropped")
        text = cli("sessions", "--api", a.info["api"])
        assert text.returncode == 0 and c.info["address"] in text.stdout
        assert c.node_id[:16] in text.stdout
    finally:
        tap.close()

    routed = tap.routed()
    ends = {a.info["address"], c.info["address"]}
    e2e = [p for p in routed
           if {str(ipaddress.IPv6Address(p.src)), str(ipaddress.IPv6Address(p.dst))} == ends]
    # B saw the conversation (handshakes and data frames, both ways) ...
    assert {p.proto for p in e2e} >= {Proto.SESSION_HANDSHAKE, Proto.E2E_DATA}, \
        sorted({p.proto for p in routed})
    assert {p.proto for p in e2e} <= {Proto.SESSION_HANDSHAKE, Proto.E2E_DATA}
    # ... and never a byte of either payload in clear, in any frame it carried.
    for needle in (SECRET.encode(), ANSWER.encode(), SECRET[:12].encode(),
                   ANSWER[:12].encode()):
        assert not any(needle in f for f in tap.frames)


def test_messages_get_through_again_after_the_receiver_restarts(mesh):
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    c = mesh.start_node("c", peers=[b.endpoint])
    wait_for(lambda: c.node_id in selected(a), 60, "A to learn a route to C")
    out = cli("send", "--api", a.info["api"], "--to", c.info["address"], "first")
    assert out.returncode == 0, out.stdout + out.stderr
    before = a.api.get("/v1/sessions")["counters"].get("handshakes", 0)
    assert mesh.stop_node("c") == 0
    c = mesh.start_node("c", peers=[b.endpoint])  # same key: A's session keys are stale
    wait_for(lambda: c.node_id in selected(a) and a.node_id in selected(c), 60,
             "routes between A and the restarted C")
    out = cli("send", "--api", a.info["api"], "--to", c.info["address"], "--timeout", "40",
              "second")
    assert out.returncode == 0, out.stdout + out.stderr
    got = cli("recv", "--api", c.info["api"], "--json")
    assert [json.loads(line)["data"] for line in got.stdout.splitlines()] == ["second"]
    # A has new keys with the restarted C: its no-answer rule fired, or C's own
    # handshake (C has nothing for A either) won the race.
    counters = a.api.get("/v1/sessions")["counters"]
    assert counters.get("no_answer_rekey", 0) >= 1 or counters.get("handshakes", 0) > before
