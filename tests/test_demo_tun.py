"""`sporenet demo --tun` (root): three nodes in sn- namespaces carry ICMPv6 and a TCP
transfer between overlay addresses across the middle one, and leave nothing behind;
without root it says in one line what it needs and what runs instead."""

import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip") is not None


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("sn-")}


@pytest.mark.skipif(not ROOT, reason="needs root, /dev/net/tun and iproute2 (namespaces, TUNs)")
def test_tun_demo_carries_ip_across_a_transit_node_and_cleans_up():
    before = namespaces()
    out = subprocess.run([sys.executable, "-P", "-m", "sporenet.cli", "demo", "--tun"],
                         capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, COLUMNS="160"))
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "FAIL" not in text and text.count("PASS") == 5, text
    assert re.search(r"alpha → charlie \S+: [45]/5 replies", text), text
    assert "SHA-256 equal at both ends" in text, text
    m = re.search(r"bravo's data path: ([\d,]+) superpackets forwarded", text)
    assert m and int(m[1].replace(",", "")) >= 100, text
    assert "Traceback" not in text
    assert namespaces() == before, "the demo left namespaces behind"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to drop its capabilities with setpriv")
def test_tun_demo_without_root_says_what_it_needs():
    # Root without capabilities is what the demo sees under a plain user: it may read the
    # interpreter's files (a uid change would not, with /root at 0700) but not make namespaces.
    out = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                          sys.executable, "-P", "-m", "sporenet.cli", "demo", "--tun"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "run it as root" in out.stderr and "`sporenet demo` needs no root" in out.stderr, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
