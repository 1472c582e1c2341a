"""The data path engine end to end on real devices (issue [4/7]): two network
namespaces joined by a veth, a TUN in each, ``bench/dp_pair.py`` (TUN + data path +
TCP link carrier, test keys from a shared seed) in each.

A 50 MB TCP transfer between the two overlay addresses:
- arrives byte for byte (SHA-256 compared);
- the link carries no plaintext of it: a packet capture on the underlay veth (an
  AF_PACKET socket) never sees the marker the data is full of;
- survives a flood of malformed frames, unknown receiver indices, replays and
  forgeries thrown at the receiver during it, each dropped and counted.
On stop, the TUN device is gone.

Root only (CI runs as root); namespaces are ``sn-dp-*`` and are deleted in a
``finally``, with every process started in them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None,
    reason="needs root, /dev/net/tun and iproute2 (network namespaces and TUN devices)")]

ROOT = Path(__file__).resolve().parent.parent
PAIR = ROOT / "bench" / "dp_pair.py"
A_ADDR, B_ADDR = "600:0:0:a::1", "600:0:0:b::1"
A_UNDER, B_UNDER = "10.201.0.1", "10.201.0.2"
PORT = 7000
MARKER = b"SPORENET-PLAINTEXT-MARKER-"
SIZE = 50 * 1024 * 1024


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def in_ns(ns: str, code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def read_json_line(proc: subprocess.Popen, timeout: float) -> dict:
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                return json.loads(line)
    raise AssertionError(f"no JSON line within {timeout}s; stderr: {proc.stderr.read()[-2000:] if proc.poll() is not None else '(running)'}")


@pytest.fixture
def pair():
    tag = secrets.token_hex(2)
    a, b = f"sn-dp-{tag}-a", f"sn-dp-{tag}-b"
    procs: list[subprocess.Popen] = []
    made: list[str] = []
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        va, vb = f"sn-dp{tag}a", f"sn-dp{tag}b"
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        for ns, dev, addr in ((a, va, A_UNDER), (b, vb, B_UNDER)):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        seed = secrets.token_hex(16)
        common = [sys.executable, str(PAIR), "--seed", seed]
        pb = subprocess.Popen(["ip", "netns", "exec", b, *common, "--role", "b", "--address", B_ADDR,
                               "--peer-address", A_ADDR, "--listen", f"tcp://{B_UNDER}:{PORT}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(pb)
        pa = subprocess.Popen(["ip", "netns", "exec", a, *common, "--role", "a", "--address", A_ADDR,
                               "--peer-address", B_ADDR, "--dial", f"tcp://{B_UNDER}:{PORT}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(pa)
        for p in (pa, pb):
            assert read_json_line(p, 30)["ready"]
        yield {"a": a, "b": b, "veth_b": vb, "seed": seed, "pa": pa, "pb": pb, "procs": procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


SINK = f"""
import hashlib, json, socket
s = socket.socket(socket.AF_INET6)
s.bind(("{B_ADDR}", 5001)); s.listen(); s.settimeout(30)
print(json.dumps({{"listening": True}}), flush=True)
c, _ = s.accept(); c.settimeout(60)
h, n = hashlib.sha256(), 0
while (d := c.recv(1 << 20)):
    h.update(d); n += len(d)
print(json.dumps({{"bytes": n, "sha256": h.hexdigest()}}), flush=True)
"""

CAPTURE = """
import json, signal, socket, select, time, sys
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
print(json.dumps({"capturing": True}), flush=True)
seen = found = 0
tail = b""
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end and not stop:
    if select.select([s], [], [], 0.2)[0]:
        pkt = s.recv(1 << 17)
        seen += len(pkt)
        found += (tail + pkt).count(MARKER)
        tail = pkt[-len(MARKER):]
print(json.dumps({"captured": seen, "marker_hits": found}), flush=True)
"""


def bad_frames(seed: str) -> list[bytes]:
    """What an attacker on a link throws at the receiver: built with the test keys, so
    replays and forgeries are otherwise perfect frames."""
    from sporenet.protocols.datapath import keys
    from sporenet.protocols.datapath.keys import DataKeypair
    ka, kb = (hashlib.sha256(bytes.fromhex(seed) + s).digest() for s in (b"a", b"b"))
    kp = DataKeypair(local_index=1, remote_index=2, send_key=ka, recv_key=kb, peer=b"x",
                     now=time.monotonic())
    src, dst = socket.inet_pton(socket.AF_INET6, A_ADDR), socket.inet_pton(socket.AF_INET6, B_ADDR)
    replay = keys.routed_ip_frame(src, dst, 64, kp.seal(b"\x00" * 10 + b"\x60" + bytes(60), 0))
    forged = bytearray(replay)
    forged[-1] ^= 1
    unknown = bytearray(replay)
    unknown[keys.ROUTED_HEADER + 2:keys.ROUTED_HEADER + 6] = struct.pack("!I", 999)
    short = replay[:keys.ROUTED_HEADER + 10]
    return [replay, bytes(forged), bytes(unknown), short]


def test_fifty_megabytes_cross_encrypted_and_survive_bad_frames(pair):
    from sporenet.protocols.link.framing import encode_length_prefixed
    capture_src = CAPTURE.replace("MARKER", repr(MARKER))
    cap = subprocess.Popen(["ip", "netns", "exec", pair["b"], sys.executable, "-c", capture_src,
                            pair["veth_b"], "90"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    pair["procs"].append(cap)
    assert read_json_line(cap, 10)["capturing"]
    sink = in_ns(pair["b"], SINK)
    pair["procs"].append(sink)
    assert read_json_line(sink, 10)["listening"]

    data = (MARKER + os.urandom(38)) * (SIZE // 64)
    digest = hashlib.sha256(data).hexdigest()
    # the flooder: a connection to B's link port sending bad frames the whole time
    frames = b"".join(encode_length_prefixed(f) for f in bad_frames(pair["seed"]))
    flood = in_ns(pair["a"], f"""
import socket, time
s = socket.create_connection(("{B_UNDER}", {PORT}))
end = time.monotonic() + 6
n = 0
while time.monotonic() < end:
    s.sendall({frames!r} * 50); n += 200
    time.sleep(0.01)
print('{{"sent": %d}}' % n, flush=True)
""")
    pair["procs"].append(flood)
    sender = subprocess.Popen(["ip", "netns", "exec", pair["a"], sys.executable, "-c", textwrap.dedent(f"""
import socket, sys
data = sys.stdin.buffer.read()
s = socket.create_connection(("{B_ADDR}", 5001), timeout=30)
s.sendall(data)
s.close()
""")], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    pair["procs"].append(sender)
    sender.communicate(data, timeout=120)
    assert sender.returncode == 0
    got = read_json_line(sink, 60)
    assert got == {"bytes": len(data), "sha256": digest}
    assert read_json_line(flood, 30)["sent"] > 0

    for p in (pair["pa"], pair["pb"]):
        p.send_signal(signal.SIGTERM)
    counters_b = read_json_line(pair["pb"], 15)["counters"]
    read_json_line(pair["pa"], 15)
    assert counters_b["bytes_in"] >= len(data)
    for reason in ("replayed", "forged", "unknown_index", "malformed"):
        assert counters_b.get(reason, 0) > 0, (reason, counters_b)

    cap.send_signal(signal.SIGTERM)  # ``ip netns exec`` execs: this pid is the capture
    captured = read_json_line(cap, 60)
    assert captured["captured"] > len(data), captured   # we did see the transfer go by
    assert captured["marker_hits"] == 0, captured       # and none of it in the clear

    for p in (pair["pa"], pair["pb"]):
        p.wait(timeout=10)
    for ns in (pair["a"], pair["b"]):
        gone = subprocess.run(["ip", "-n", ns, "link", "show", "sn-tun0"], capture_output=True)
        assert gone.returncode != 0, f"TUN still there in {ns}"
