"""What runs inside a ``TunLab`` namespace to use the overlay as a program would: an
ICMPv6 echo and a TCP transfer between overlay addresses, each a short Python script run
with ``ip netns exec`` (no ping6 or iperf3 needed). ``sporenet demo --tun`` and the TUN
tests share them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

from sporenet.tun_lab import LabNode, TunLab

PING = """
import socket, struct, sys, time, json
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(1.0)
ok, rtts = 0, []
for i in range(int(sys.argv[2])):
    t = time.monotonic()
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, 4242, i) + b"p" * 56, (sys.argv[1], 0))
    try:
        while True:
            d, _ = s.recvfrom(2048)
            if d[0] == 129 and struct.unpack("!HH", d[4:8]) == (4242, i):
                ok += 1; rtts.append((time.monotonic() - t) * 1000); break
    except socket.timeout:
        pass
print(json.dumps({"ok": ok, "rtts": rtts}))
"""

SINK = """
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET6)
s.bind((sys.argv[1], 5001)); s.listen(); s.settimeout(60)
print(json.dumps({"listening": True}), flush=True)
c, _ = s.accept(); c.settimeout(60)
h, n = hashlib.sha256(), 0
while (d := c.recv(1 << 20)):
    h.update(d); n += len(d)
print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
"""

SEND = """
import socket, sys, time
data = sys.stdin.buffer.read()
for _ in range(50):
    try:
        s = socket.create_connection((sys.argv[1], 5001), timeout=30); break
    except OSError:
        time.sleep(0.2)
s.sendall(data)
s.close()
"""


def in_ns(node: LabNode, code: str, *args: str, **kw: Any) -> subprocess.Popen:
    """Python ``code`` in the node's namespace, its stdout and stderr piped."""
    return subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def line_of(proc: subprocess.Popen) -> dict:
    """The next JSON line a script printed (AssertionError with its stderr if none)."""
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"no output; stderr: {proc.stderr.read()[-2000:]}")
    return json.loads(line)


def ping(lab: TunLab, src: LabNode, dst: LabNode, count: int = 5) -> dict:
    """ICMPv6 echo from ``src`` to ``dst``'s overlay address: ``{"ok": n, "rtts": [ms]}``."""
    return json.loads(lab.run(src, PING, dst.address, str(count)))


def routed(lab: TunLab, src: LabNode, dst: LabNode) -> bool:
    """``src`` has selected a route to ``dst``."""
    got = lab.get(src, "/v1/routes") or {}
    return any(r.get("address") == dst.address and r.get("selected")
               for r in got.get("routes", []))


def transfer(src: LabNode, dst: LabNode, data: bytes, timeout: float = 120.0) -> dict:
    """``data`` over TCP from ``src`` to ``dst``'s overlay address (port 5001):
    ``{"bytes", "sha256"}`` as the receiver counted them, and ``"sent_sha256"``."""
    sink = in_ns(dst, SINK, dst.address, text=True)
    try:
        if not line_of(sink).get("listening"):
            raise AssertionError("the receiver did not listen")
        sender = in_ns(src, SEND, dst.address, stdin=subprocess.PIPE)
        _, err = sender.communicate(data, timeout=timeout)
        if sender.returncode != 0:
            raise AssertionError(f"the sender failed: {err.decode(errors='replace')[-2000:]}")
        got = line_of(sink)
        sink.wait(timeout=10)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return {**got, "sent_sha256": hashlib.sha256(data).hexdigest()}
