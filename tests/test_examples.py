"""The examples run: the in-process agent in a real bundle, the external one as a real process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sporenet.agents.bundle import AgentSpec, Bundle
from sporenet.protocols.notices import LinkMeasured, PeerUp
from sporenet.transports.bus_codec import RawNotice

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEADLINE = 10.0
NID = b"\x07" * 32

sys.path.insert(0, str(EXAMPLES))
from inproc_agent import CountingProtocol, PeerCount  # noqa: E402


@pytest.fixture
def run_dir():
    d = Path(tempfile.mkdtemp(prefix="sn-ex-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def node(run_dir):
    spec = AgentSpec("peer-counter", "inproc_agent:PeerCounter", options={"summary_every": 60.0})
    bundle = Bundle([spec], run_dir).start()
    client = bundle.bus.client()
    client.subscribe("example.", "external.")
    client.sync()
    yield bundle, client
    client.close()
    bundle.stop()


def recv(client, n):
    got, end = [], time.monotonic() + DEADLINE
    while len(got) < n and time.monotonic() < end:
        notice = client.recv(0.1)
        if notice is not None:
            got.append(notice)
    assert len(got) == n, f"wanted {n} notices, got {got}"
    return got


def test_counting_protocol_is_sans_io():
    p = CountingProtocol(summary_every=5.0)
    up = PeerUp(NID, b"k", "fd00::7", "tcp://h:1", True)
    assert [a.message for a in p.handle(up, now=100.0)] == [PeerCount(1, 0, 0.0, "change")]
    assert p.next_deadline() == 105.0
    assert [a.message for a in p.on_timer(105.0)] == [PeerCount(1, 0, 0.0, "summary")]


def test_inproc_agent_counts_and_publishes_its_own_notice(node):
    bundle, client = node
    client.publish(PeerUp(NID, b"k", "fd00::7", "tcp://h:1", True))
    client.publish(LinkMeasured(NID, 20.0, 1.0, 0.0, 20.0, 5))
    assert recv(client, 2) == [PeerCount(1, 0, 0.0, "change"), PeerCount(1, 1, 20.0, "change")]
    assert bundle.states() == {"peer-counter": "running"}


def test_inproc_example_script_runs():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "inproc_agent.py")], capture_output=True,
                          text=True, timeout=DEADLINE * 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reason='summary'" in proc.stdout


def test_external_agent_sees_the_bus_and_publishes_back(node, run_dir):
    bundle, client = node
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "external_agent.py"), "--run-dir",
                             str(run_dir), "--count", "4"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        client.publish(PeerUp(NID, b"k", "fd00::7", "tcp://h:1", True))
        first = recv(client, 3)  # the counter's answer and two external.seen, in some order
        client.publish(LinkMeasured(NID, 20.0, 1.0, 0.0, 20.0, 5))
        second = recv(client, 3)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # what the external process saw, in bus order
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["link.peer_up", "example.peer_count",
                                                  "prober.link_measured", "example.peer_count"]
    assert f"node_id={NID.hex()}" in lines[0] and "peers_up=1" in lines[1]
    assert "rtt_ms=20.0" in lines[2] and "measurements=1" in lines[3]
    # what came back from it: RawNotice (no class registered here for external.seen)
    replies = [n for n in first + second if isinstance(n, RawNotice)]
    assert [r.topic for r in replies] == ["external.seen"] * 4
    assert [r.fields["topic"] for r in replies] == ["link.peer_up", "example.peer_count",
                                                    "prober.link_measured", "example.peer_count"]
    assert [n for n in first + second if isinstance(n, PeerCount)] == [
        PeerCount(1, 0, 0.0, "change"), PeerCount(1, 1, 20.0, "change")]
    assert json.loads((run_dir / "bus.json").read_text())["pub"].startswith("ipc://")
