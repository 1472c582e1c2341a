"""The examples against a real node, not a bare bundle.

Node ``a`` is a ``sporenet up`` process started with ``--config examples/node.toml``
(its ``[[agents]]`` lists ``inproc_agent:PeerCounter``; ``PYTHONPATH`` makes it
importable); node ``b`` links to it, so the real link and prober agents publish
``PeerUp`` and ``LinkMeasured``. The in-process agent must count the real peer, and
``examples/external_agent.py``, a third process on ``a``'s bus, must see the real
notices and get its own replies onto that bus.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from sporenet.local_mesh import LocalMesh, wait_for
from sporenet.protocols.notices import PeerUp
from sporenet.transports.bus import BusClient, load_endpoints
from sporenet.transports.bus_codec import RawNotice

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEADLINE = 20.0
FAST_PROBES = ("--probe-interval", "0.2")

sys.path.insert(0, str(EXAMPLES))
from inproc_agent import PeerCount  # noqa: E402  (registers example.peer_count here too)


@pytest.fixture
def mesh():
    base = Path(tempfile.mkdtemp(prefix="sn-exn-", dir="/tmp"))  # short: ipc paths are limited
    m = LocalMesh(base, extra_args=FAST_PROBES)
    try:
        yield m
    finally:
        m.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node_a(mesh):
    """``a`` runs the example config; its bus is ready once ``node.json`` exists."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))}
    return mesh.start_node("a", extra_args=("--config", str(EXAMPLES / "node.toml")), env=env)


@pytest.fixture
def bus(node_a):
    client = BusClient(load_endpoints(node_a.run_dir))
    try:
        yield client
    finally:
        client.close()


def collect(client: BusClient, done, what: str) -> list:
    """Notices from ``client`` until ``done(seen)`` holds; fails after ``DEADLINE``."""
    seen: list = []

    def step():
        notice = client.recv(0.1)
        if notice is not None:
            seen.append(notice)
        return done(seen)

    wait_for(step, DEADLINE, what, interval=0)
    return seen


def counted_b(b_id: bytes):
    """``done`` for ``collect``: the counter has counted ``b`` up and measured."""
    def done(seen):
        ups = [n for n in seen if isinstance(n, PeerUp)]
        counts = [n for n in seen if isinstance(n, PeerCount)]
        return (any(u.node_id == b_id for u in ups)
                and any(c.peers_up == 1 and c.measurements >= 1 for c in counts))
    return done


def test_inproc_agent_from_config_counts_a_real_peer(mesh, node_a, bus):
    assert node_a.api.status()["agents"]["peer-counter"] == "running"
    bus.subscribe(PeerCount.TOPIC, PeerUp.TOPIC)
    bus.sync()

    b = mesh.start_node("b", peers=[node_a.endpoint])
    b_id = bytes.fromhex(b.node_id)
    seen = collect(bus, counted_b(b_id), "a's peer-counter to count b")

    counts = [n for n in seen if isinstance(n, PeerCount)]
    assert counts[0] == PeerCount(1, 0, 0.0, "change")  # a real PeerUp was its first input
    measured = next(c for c in counts if c.measurements >= 1)
    assert measured.peers_up == 1 and 0 < measured.last_rtt_ms < 1000

    # The same, as `sporenet bus tap` shows it to a script.
    tap = subprocess.run([sys.executable, "-m", "sporenet.cli", "bus", "tap", "--run-dir",
                          str(node_a.run_dir), "--topic", PeerCount.TOPIC, "--json", "--count", "1"],
                         capture_output=True, text=True, timeout=DEADLINE)
    assert tap.returncode == 0, tap.stderr
    line = json.loads(tap.stdout.splitlines()[0])
    assert line["topic"] == PeerCount.TOPIC and line["fields"]["peers_up"] == 1
    assert node_a.alive() and b.alive()


def test_external_agent_on_a_real_node_bus(mesh, node_a, bus):
    bus.subscribe("external.")
    bus.sync()
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "external_agent.py"),
                             "--run-dir", str(node_a.run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: lines[:1] == ["ready\n"] or proc.poll() is not None, DEADLINE,
                 "the external agent to be ready")
        assert lines[:1] == ["ready\n"], proc.stderr.read()

        b = mesh.start_node("b", peers=[node_a.endpoint])

        def saw(topic: str, *parts: str) -> bool:
            return any(ln.split()[1:2] == [topic] and all(p in ln for p in parts)
                       for ln in list(lines))

        wait_for(lambda: saw("link.peer_up", f"node_id={b.node_id}")
                 and saw("prober.link_measured", f"node_id={b.node_id}")
                 and saw("example.peer_count", "peers_up=1"),
                 DEADLINE, f"the external agent to see b come up and be measured:\n{lines}")

        # Its replies reach other clients of the same bus (as RawNotice: no class here).
        replies = collect(bus, lambda seen: {"link.peer_up", "prober.link_measured",
                                             "example.peer_count"}
                          <= {r.fields["topic"] for r in seen}, "the external agent's replies")
        assert all(isinstance(r, RawNotice) and r.topic == "external.seen" for r in replies)
        assert {r.fields["pid"] for r in replies} == {proc.pid}

        proc.send_signal(signal.SIGINT)  # ^C: a clean stop
        assert proc.wait(DEADLINE) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(DEADLINE)
        proc.stdout.close()
        proc.stderr.close()
    assert node_a.alive() and b.alive()
