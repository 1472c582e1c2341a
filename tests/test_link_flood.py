"""A connection flood against a real node at a 1,024 fd limit (issue [4/7, first part],
item 2): 3,000 connections held open without a hello for 8 s from one source, plus
slowloris senders trickling one byte a second from another.

Real processes on loopback: nodes A and B (``sporenet up``), the attacker
``bench/conn_flood.py`` as its own process. A's limit is set from outside, as an
operator would with ``prlimit --pid PID --nofile=1024:1024``. Read off /proc: A's CPU
(utime + stime) and its descriptors; A's log is its stdout file.

During the flood A's CPU stays below half a core, its log grows by fewer than 500
lines, and A keeps routing pings to B. After it, A's descriptors return to their
baseline and a new peer C links to A within 15 s. ``bench/README.md`` "Connection
flood" has the figures of a run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sporenet.local_mesh import LocalMesh, ping, wait_for

pytestmark = pytest.mark.slow

FLOOD = Path(__file__).resolve().parent.parent / "bench" / "conn_flood.py"
CONNECTIONS, HOLD, SLOWLORIS = 3000, 8.0, 8
FD_LIMIT = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def log_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def peer_ids(node) -> set[str]:
    return {p["node_id"] for p in node.api.peers()["peers"]}


def test_connection_flood_at_1024_fds(tmp_path):
    if not hasattr(resource, "prlimit"):
        pytest.skip("resource.prlimit (Linux) is needed to set the node's fd limit")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < CONNECTIONS + 100:
        pytest.skip(f"the attacker needs {CONNECTIONS + 100} descriptors; hard limit is lower")
    mesh = LocalMesh(tmp_path, extra_args=("--probe-interval", "0.5"))
    try:
        a = mesh.start_node("a")
        b = mesh.start_node("b", peers=[a.endpoint])
        pid = a.process.pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        wait_for(lambda: ping(a, b.node_id)["state"] == "ok", 20, "a to ping b")
        baseline_fds = fd_count(pid)
        lines0, cpu0, t0 = log_lines(a.log_path), cpu_seconds(pid), time.monotonic()

        attacker = subprocess.Popen(
            [sys.executable, str(FLOOD), a.endpoint, "--connections", str(CONNECTIONS),
             "--hold", str(HOLD), "--source", "127.0.0.2", "--slowloris", str(SLOWLORIS),
             "--slow-source", "127.0.0.3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pings: list[dict] = []
        peak_fds = [0]
        try:
            while attacker.poll() is None:
                pings.append(ping(a, b.node_id, timeout=2.0))
                peak_fds[0] = max(peak_fds[0], fd_count(pid))
                threading.Event().wait(0.5)  # one ping every half second, whatever answers
            out, err = attacker.communicate(timeout=30)
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.wait()
        elapsed = time.monotonic() - t0
        cpu = (cpu_seconds(pid) - cpu0) / elapsed
        grown = log_lines(a.log_path) - lines0
        assert attacker.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        counters = a.api.status()["counters"]

        assert a.alive(), a.log_tail()
        assert report["opened"] >= CONNECTIONS * 0.95, report
        assert counters["pending_evicted"] > 0, counters   # the limit did the work
        assert cpu < 0.5, f"A used {cpu:.2f} cores during the flood"
        assert grown < 500, f"A's log grew by {grown} lines during the flood"
        failed = [p for p in pings if p["state"] != "ok"]
        assert len(pings) >= 8 and not failed, f"{len(failed)}/{len(pings)} pings failed: {failed[:3]}"

        # After: descriptors back to the baseline (lingering closes end within 2 s)...
        wait_for(lambda: fd_count(pid) <= baseline_fds, 15,
                 lambda: f"A's fds back to {baseline_fds} (now {fd_count(pid)})")
        # ... and a new peer links within 15 s.
        t_c = time.monotonic()
        c = mesh.start_node("c", peers=[a.endpoint])
        wait_for(lambda: c.node_id in peer_ids(a) and a.node_id in peer_ids(c), 15, "c to link to a")
        c_linked = time.monotonic() - t_c
        print(json.dumps({"held": report["opened"], "closed_by_node": report["closed_by_node"],
                          "slow_reconnects": report["slow_reconnects"], "cpu_cores": round(cpu, 3),
                          "log_lines": grown, "pings_ok": len(pings), "peak_fds": peak_fds[0],
                          "baseline_fds": baseline_fds, "pending_evicted": counters["pending_evicted"],
                          "handshake_timeouts": counters["handshake_timeouts"],
                          "accept_paused": counters["accept_paused"],
                          "accepted_at_a": counters["inbound_accepted"],
                          "c_linked_s": round(c_linked, 2)}))
    finally:
        mesh.close()
