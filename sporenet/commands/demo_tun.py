"""``sporenet demo --tun``: IP between overlay addresses across a transit node (root).

Three real ``sporenet up`` processes with their TUN devices, each in its own ``sn-``
network namespace, on a line joined by veths (``sporenet.tun_lab``)::

    alpha ─ bravo ─ charlie        alpha and charlie share no underlay: bravo forwards

The demo waits for the routes, sends ICMPv6 echoes from alpha to bravo and to charlie
between their overlay addresses, carries a TCP transfer from alpha to charlie and compares
its SHA-256 at both ends, shows that bravo forwarded the transfer without opening it (its
data path delivered nothing of it), then stops the nodes and deletes the namespaces, in a
``finally``, and checks that none is left.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from sporenet.commands.demo_steps import DemoFailed, Steps
from sporenet.transports.tun import (
    CAP_NET_ADMIN,
    CAP_SYS_ADMIN,
    TunUnavailable,
    has_capability,
    tun_preflight,
)
from sporenet.tun_lab import TunLab
from sporenet.tun_probes import ping, routed, transfer

NAMES = ("alpha", "bravo", "charlie")
SIZE = 20 * 1024 * 1024
TIMEOUT = 30.0


def preflight() -> None:
    """Raise ``DemoFailed`` naming what this machine lacks for the TUN demo."""
    if not (has_capability(CAP_NET_ADMIN) and has_capability(CAP_SYS_ADMIN)):
        raise DemoFailed("the TUN demo makes network namespaces and TUN devices: run it as "
                         "root (sudo sporenet demo --tun); `sporenet demo` needs no root")
    if shutil.which("ip") is None:
        raise DemoFailed("the TUN demo needs iproute2's `ip` (apt-get install iproute2)")
    try:
        tun_preflight()
    except TunUnavailable as e:
        raise DemoFailed(str(e)) from None


def _step(fn: Callable[..., str]) -> Callable[..., str]:
    """A failed wait or probe inside a step is the step's failure, with its reason."""
    @functools.wraps(fn)
    def run(*args: Any) -> str:
        try:
            return fn(*args)
        except (AssertionError, RuntimeError, subprocess.SubprocessError) as e:
            raise DemoFailed(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return run


class TunDemo:
    def __init__(self, console: Console, base: Path) -> None:
        self.console = console
        self.lab = TunLab(base, NAMES, extra_args=("--probe-interval", "0.25"))
        self.figures: dict[str, Any] = {}
        self.steps = [
            ("build namespaces and start 3 nodes with TUNs", self.start),
            ("routes alpha ↔ charlie via bravo", self.converge),
            ("ICMPv6 echo between overlay addresses", self.pings),
            (f"TCP transfer of {SIZE >> 20} MB alpha → charlie", self.transfer),
            ("bravo forwarded without opening", self.transit),
        ]

    def node(self, name: str):
        return self.lab.nodes[name]

    @_step
    def start(self) -> str:
        self.lab.build().start_all(TIMEOUT)
        for name in NAMES:
            n = self.node(name)
            self.console.print(f"  {name:8} {n.ns:18} underlay {n.underlay:12} overlay {n.address}")
        return f"{len(NAMES)} nodes up, namespaces {self.node(NAMES[0]).ns[:-len(NAMES[0])]}*"

    @_step
    def converge(self) -> str:
        a, c = self.node("alpha"), self.node("charlie")
        t0 = time.monotonic()
        self.lab.wait_for(lambda: routed(self.lab, a, c) and routed(self.lab, c, a), TIMEOUT,
                          "alpha and charlie to route to each other via bravo")
        return f"routed both ways in {time.monotonic() - t0:.2f} s"

    @_step
    def pings(self) -> str:
        a = self.node("alpha")
        out = []
        for name in ("bravo", "charlie"):
            dst = self.node(name)
            got = self.lab.wait_for(lambda dst=dst: (r := ping(self.lab, a, dst, 5))["ok"] >= 4 and r,
                                    TIMEOUT, f"alpha's echoes to {name} ({dst.address})")
            rtts = sorted(got["rtts"])
            med = rtts[len(rtts) // 2]
            self.figures[f"ping_{name}_ms"] = med
            self.console.print(f"  alpha → {name} {dst.address}: {got['ok']}/5 replies, "
                               f"median {med:.2f} ms")
            out.append(f"{name} {got['ok']}/5, {med:.2f} ms")
        return "; ".join(out)

    @_step
    def transfer(self) -> str:
        a, c = self.node("alpha"), self.node("charlie")
        data = os.urandom(SIZE)
        t0 = time.monotonic()
        got = transfer(a, c, data)
        secs = time.monotonic() - t0
        if got["bytes"] != len(data) or got["sha256"] != got["sent_sha256"]:
            raise DemoFailed(f"charlie got {got['bytes']} bytes with SHA-256 {got['sha256'][:16]}…, "
                             f"alpha sent {len(data)} with {got['sent_sha256'][:16]}…")
        mbit = len(data) * 8 / secs / 1e6
        self.figures.update(transfer_s=secs, transfer_mbit_s=mbit)
        self.console.print(f"  {len(data):,} bytes in {secs:.2f} s ({mbit:.0f} Mbit/s including "
                           f"the scripts' start-up); SHA-256 equal at both ends "
                           f"({got['sha256'][:16]}…)")
        return f"byte for byte, {mbit:.0f} Mbit/s"

    @_step
    def transit(self) -> str:
        counters = (self.lab.get(self.node("bravo"), "/v1/datapath") or {}).get("counters", {})
        fwd, delivered = counters.get("forwarded", 0), counters.get("packets_in", 0)
        self.figures.update(bravo_forwarded=fwd, bravo_delivered=delivered)
        if fwd < 100 or delivered > 50:
            raise DemoFailed(f"bravo's data path forwarded {fwd} and delivered {delivered} packets")
        self.console.print(f"  bravo's data path: {fwd:,} superpackets forwarded as ciphertext, "
                           f"{delivered} delivered to its own TUN (the echoes to bravo)")
        return f"{fwd:,} forwarded, {delivered} delivered to bravo itself"


def run_tun_demo(console: Console, base: Path) -> dict[str, Any]:
    """Run every step; return the figures. Raises ``DemoFailed`` naming the failed step.
    Every node is stopped and every namespace deleted before it returns or raises."""
    preflight()
    demo, steps = TunDemo(console, base), Steps(console)
    t0 = time.monotonic()
    console.print("[bold]sporenet demo --tun[/bold]: IP across a transit node, in network "
                  f"namespaces; run dirs under {base}")
    try:
        for title, fn in demo.steps:
            steps.run(title, fn)
    finally:
        demo.lab.close()
        left = [n.ns for n in demo.lab.nodes.values()
                if n.ns in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout]
        console.print()
        console.print(steps.table())
    if left:
        raise DemoFailed(f"namespaces left behind: {', '.join(left)}")
    f = demo.figures
    f["total_s"] = time.monotonic() - t0
    console.print(f"[green]demo passed[/green]: {len(steps.rows)} steps in {f['total_s']:.1f} s; "
                  "namespaces and TUNs removed")
    return f
