"""The contract at the TUN (issue [4/7], enforcement points ``tun_out`` and ``tun_in``),
on real nodes with real TUNs in ``sn-`` namespaces: a (group app) and b (group db) under
the rule app -> db.

- a pings b: allowed out at a, in at b, and b's echo replies go back as replies of a's
  flow (b may not open flows to a);
- b pings a: refused where it leaves b's TUN (``refused_out``), nothing reaches a;
- a packet from a's TUN to an address of no member is refused at a's ``tun_out``;
- b revoked (a new version without it, posted at a): a's flow to b stops within 1 s.

Root only (CI runs as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from sporenet.contract_file import to_json, write_contract
from sporenet.keyfile import load_key_file
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols.identity import Identity
from sporenet.tun_lab import TunLab

from sporenet.tun_probes import ping, routed

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None,
    reason="needs root, /dev/net/tun and iproute2 (network namespaces and TUN devices)")]

OWNER = Identity(bytes([44]) * 32)
REVOKE_BOUND = 1.0  # s

# ping every 20 ms for ``seconds``; print the time.time() of each reply
STREAM = """
import json, socket, struct, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setblocking(False)
replies, end, i = [], time.time() + float(sys.argv[2]), 0
print(json.dumps({"started": True}), flush=True)
while time.time() < end:
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, 777, i & 0xFFFF) + b"s" * 32, (sys.argv[1], 0)); i += 1
    t = time.time() + 0.02
    while time.time() < t:
        try:
            d, _ = s.recvfrom(2048)
            if d[0] == 129:
                replies.append(time.time())
        except BlockingIOError:
            time.sleep(0.002)
print(json.dumps({"sent": i, "replies": replies}), flush=True)
"""


@pytest.fixture
def lab(tmp_path):
    with TunLab(tmp_path, ("a", "b"), extra_args=("--probe-interval", "0.2")) as lab:
        lab.build()
        keys = {n: load_key_file(lab.nodes[n].key_file).public_key for n in "ab"}
        c = ct.new_contract("lab", [OWNER.public_key], 1, rules=[("app", "db")])
        c = ct.add_member(c, keys["a"], "a", groups=("app",))
        c = ct.add_member(c, keys["b"], "b", groups=("db",))
        c = ct.sign(c, OWNER)
        write_contract(tmp_path / "lab.json", c)
        lab.extra_args += ("--contract", str(tmp_path / "lab.json"))
        lab.contract, lab.keys = c, keys
        lab.start_all()
        yield lab


def counters(lab, node) -> dict:
    return lab.get(node, "/v1/datapath")["counters"]


def test_the_tun_points_refuse_what_the_rules_forbid_and_a_revocation_stops_the_flow(lab):
    a, b = lab.nodes["a"], lab.nodes["b"]
    lab.wait_for(lambda: routed(lab, a, b) and routed(lab, b, a), 30, "a and b to route")
    status = lab.get(a, "/v1/status")["contract"]["points"]
    assert status["tun_out"]["active"] and status["tun_in"]["active"], status

    # app -> db: a's pings answered (b's replies pass as replies of a's flow)
    first = ping(lab, a, b)
    assert first["ok"] >= 4, (first, counters(lab, a), counters(lab, b))
    # db -> app: refused as it leaves b's TUN
    before = counters(lab, b).get("refused_out", 0)
    assert ping(lab, b, a, 3)["ok"] == 0
    assert counters(lab, b).get("refused_out", 0) >= before + 3
    assert counters(lab, a).get("refused_in", 0) == 0  # nothing got as far as a
    assert lab.get(b, "/v1/status")["contract"]["points"]["tun_out"]["refused"] >= 3

    # an address of no member: refused at a's tun_out
    before = counters(lab, a).get("refused_out", 0)
    stranger = type("N", (), {"address": "6aa:1:2:3::1"})
    assert ping(lab, a, stranger, 1)["ok"] == 0
    assert counters(lab, a).get("refused_out", 0) >= before + 1

    # revoke b while a pings it every 20 ms: the replies stop within 1 s of the post
    stream = subprocess.Popen(["ip", "netns", "exec", a.ns, sys.executable, "-c", STREAM,
                               b.address, "4"], stdout=subprocess.PIPE, text=True)
    assert json.loads(stream.stdout.readline())["started"]
    time.sleep(1.0)  # replies flowing before the revocation
    v2 = ct.sign(ct.remove_member(lab.contract, lab.keys["b"]), OWNER, previous=lab.contract)
    posted = time.time()
    out = lab.post(a, "/v1/contract", to_json(v2))
    assert out.get("version") == 2, out
    got = json.loads(stream.communicate(timeout=30)[0].splitlines()[-1])
    before_post = [t for t in got["replies"] if t < posted]
    after_post = [t for t in got["replies"] if t >= posted]
    assert len(before_post) >= 10, got  # the flow worked before
    last = max(after_post, default=posted)
    assert last - posted < REVOKE_BOUND, (last - posted, len(after_post))
