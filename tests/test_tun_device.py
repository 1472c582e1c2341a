"""The TUN device (sporenet/transports/tun.py) in a real network namespace: configured
as the node needs it, packets read with their virtio_net_hdr, an ICMPv6 error written
back reaches the sending socket, the device goes on close, a stale persistent device
is cleaned and a live one refused.

Needs root and /dev/net/tun (CI runs as root); each test makes its own ``sn-tun-...``
namespace and deletes it in a ``finally``. The device work runs in a child process
started with ``ip netns exec``, so this process never changes namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None,
    reason="needs root, /dev/net/tun and iproute2 (network namespaces and a TUN device)")


@pytest.fixture
def netns():
    name = f"sn-tun-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run_in(ns: str, script: str, timeout: float = 30) -> dict:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(script)],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


DEVICE = """
import errno, json, os, select, socket, subprocess
from sporenet.transports.tun import TunDevice
from sporenet.protocols.datapath import vnet, icmp6

def ip_json(*args):
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout)

t = TunDevice.open("sn0", "600:1:2:3::1", mtu=1400)
addrs = [(a["local"], a["prefixlen"]) for i in ip_json("-6", "addr", "show", "dev", "sn0")
         for a in i["addr_info"] if a.get("scope") == "global"]
routes = [r["dst"] for r in ip_json("-6", "route", "show", "dev", "sn0")]
mtu = ip_json("link", "show", "sn0")[0]["mtu"]
gso = ip_json("-d", "link", "show", "sn0")[0].get("gso_max_size")

s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
# "no route" is a soft error: a UDP socket hears it only with IPV6_RECVERR (Linux)
s.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25), 1)
s.connect(("601::5", 9))
s.send(b"sporenet-marker")
got = None
while got is None:
    assert select.select([t], [], [], 5)[0], "no packet on the TUN"
    hdr, pkt = vnet.parse(t.read())
    if pkt[6] == 17:                       # our UDP datagram (skip router solicitations)
        got = (hdr, bytes(pkt))
hdr, pkt = got
src, dst = icmp6.ipv6_addresses(pkt)
# Answer it as the node does when it has no route: the kernel must accept the ICMPv6
# (length, checksum) and hand the error to the connected socket.
t.write(vnet.PLAIN.encode() + icmp6.destination_unreachable(bytes.fromhex("06" + "00" * 14 + "01"), pkt))
s.settimeout(5)
try:
    s.recv(100)
    error = None
except OSError as e:
    error = errno.errorcode.get(e.errno)
name, offload = t.name, t.offload
t.close()
print(json.dumps({"addrs": addrs, "routes": routes, "mtu": mtu, "gso": gso, "flags": hdr.flags,
                  "src": src.hex(), "dst": dst.hex(), "marker": pkt.endswith(b"sporenet-marker"),
                  "error": error, "offload": offload, "gone": not os.path.exists(f"/sys/class/net/{name}")}))
"""


def test_device_is_configured_reads_packets_and_goes_on_close(netns):
    got = run_in(netns, DEVICE)
    assert ["600:1:2:3::1", 64] in got["addrs"]
    assert "600::/7" in got["routes"]
    assert got["mtu"] == 1400
    assert got["gso"] == 62_000  # a sealed superpacket fits one UDP_SEGMENT send
    assert got["dst"] == "0601" + "00" * 13 + "05" and got["marker"]
    assert got["src"] == "0600000100020003" + "00" * 7 + "01"
    assert got["error"] in ("ENETUNREACH", "EHOSTUNREACH"), got   # our ICMPv6 was taken
    assert got["offload"] is True   # this kernel has TSO for TUN; the fallback is tested below
    assert got["gone"]


STALE = """
import json, subprocess
from sporenet.transports.tun import TunDevice, TunUnavailable
subprocess.run(["ip", "tuntap", "add", "mode", "tun", "name", "sn0"], check=True)
with TunDevice.open("sn0", "600:1:2:3::1") as t:
    reopened = t.name
    try:                              # held by us now: a second node must not take it
        TunDevice.open("sn0", "600:1:2:3::2")
        refused = None
    except TunUnavailable as e:
        refused = str(e)
print(json.dumps({"reopened": reopened, "refused": refused}))
"""


def test_a_stale_persistent_device_is_replaced_and_a_live_one_refused(netns):
    got = run_in(netns, STALE)
    assert got["reopened"] == "sn0"
    assert got["refused"] and "in use by another process" in got["refused"]


FALLBACK = """
import json
from sporenet.transports import tun
tun.TUN_F_TSO6 = 0x1000            # an unknown bit: the kernel refuses, as an old one would
t = tun.TunDevice.open("sn0", "600:1:2:3::1")
print(json.dumps({"offload": t.offload}))
t.close()
"""


def test_offloads_refused_still_give_a_working_device(netns):
    assert run_in(netns, FALLBACK) == {"offload": False}


def test_preflight_names_what_is_missing(monkeypatch):
    from sporenet.transports import tun
    monkeypatch.setattr(tun, "TUN_PATH", "/dev/net/no-such-tun")
    with pytest.raises(tun.TunUnavailable, match="--no-tun"):
        tun.tun_preflight()
    monkeypatch.setattr(tun, "TUN_PATH", "/dev/net/tun")
    monkeypatch.setattr(tun, "has_capability", lambda bit: False)
    with pytest.raises(tun.TunUnavailable, match="CAP_NET_ADMIN"):
        tun.tun_preflight()
