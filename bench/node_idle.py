"""A sporenet node at idle, and the overlay RTT by ping interval (root).

    python bench/node_idle.py [--idle 10] [--pings 50]

Two real nodes with their TUNs in ``sn-`` namespaces (``sporenet.tun_lab``): the time
from starting them to the first echo reply between their overlay addresses, each node's
VmRSS after ``--idle`` seconds with nothing to carry, then ``ping`` at several intervals.
The RTT falls as pings come closer together: at wide intervals every thread on the way
wakes from sleep (bench/README.md "Data path against other overlays"). Prints Markdown.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sporenet.tun_lab import TunLab

INTERVALS = ("0.2", "0.05", "0.01", "0.002")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ping(ns: str, address: str, count: int, interval: str) -> list[float]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i",
                          interval, "-W", "1", address], capture_output=True, text=True).stdout
    return [float(x) for x in re.findall(r"time=([\d.]+)", out)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=10.0, help="seconds idle before RSS is read")
    ap.add_argument("--pings", type=int, default=50, help="pings per interval")
    args = ap.parse_args(argv)
    if shutil.which("ping") is None:
        ap.error("needs ping: apt-get install iputils-ping (bench/throughput installs it)")
    with tempfile.TemporaryDirectory(prefix="sn-idle-") as d, TunLab(Path(d), ("a", "b")) as lab:
        lab.build()
        t0 = time.monotonic()
        lab.start("b"), lab.start("a")
        a, b = lab.nodes["a"], lab.nodes["b"]
        lab.wait_for(lambda: ping(a.ns, b.address, 1, "0.2"), 60, "a first echo reply from b",
                     interval=0.02)
        first = time.monotonic() - t0
        time.sleep(args.idle)  # the figure is what an idle node holds: nothing to wait for
        rss = {n.name: rss_mib(n.pid) for n in (a, b)}
        print(f"Start of both nodes to the first echo reply: {first:.2f} s "
              "(includes Python start-up and the TUN's creation).\n")
        print(f"| node | VmRSS after {args.idle:.0f} s idle, MiB |\n|---|--:|")
        for name, mib in rss.items():
            print(f"| {name} | {mib:.1f} |")
        print("\n| ping interval s | RTT median ms | min | max |\n|--:|--:|--:|--:|")
        for iv in INTERVALS:
            rtts = ping(a.ns, b.address, args.pings, iv)
            if rtts:
                print(f"| {iv} | {statistics.median(rtts):.3f} | {min(rtts):.3f} | {max(rtts):.3f} |")
            else:
                print(f"| {iv} | no reply | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
