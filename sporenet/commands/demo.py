"""``sporenet demo``: a routed mesh on loopback, no root, no config; exits 0 on success.

Seven real ``sporenet up`` processes, linked so that the fewest-hops path is not the
fastest one (userspace delay proxies slow two links; this kernel has no netem)::

    alpha ─ bravo ─ charlie ─ delta ─ golf      fast: 4 hops, no delay
    alpha ─(+40 ms RTT)─ echo ─ delta ─ golf    detour: 3 hops
    alpha ─ sierra ─(+80 ms RTT)─ golf          fewest hops: 2, slowest

The demo waits for the routes to converge (alpha must pick the 4-hop path), pings
and sends a message across it, SIGKILLs the transit node bravo, measures how long
alpha's route takes to move, pings over the new path and prints a summary. Every
process and proxy is stopped, and the temporary directory removed, in a ``finally``.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sporenet.commands.demo_steps import DemoFailed, Steps
from sporenet.local_mesh import (
    LocalMesh,
    LocalNode,
    ping,
    selected_routes,
    send_message,
    trace,
    wait_for,
)
from sporenet.logs import configure_logging

SRC, DST, VICTIM = "alpha", "golf", "bravo"
# One-way proxy delays (a link's RTT grows by twice that), far above loopback RTTs (~1-5
# ms per link, even on a loaded machine) so the choice of path never depends on noise.
SLOW_MS, DETOUR_MS = 40, 20
LINKS = (  # (dialer, listener, one-way delay ms); listeners start first
    ("charlie", "bravo", 0), ("charlie", "delta", 0), ("echo", "delta", 0),
    ("golf", "delta", 0), ("golf", "sierra", SLOW_MS),
    ("alpha", "bravo", 0), ("alpha", "echo", DETOUR_MS), ("alpha", "sierra", 0),
)
FAST = ["alpha", "bravo", "charlie", "delta", "golf"]
DETOUR = ["alpha", "echo", "delta", "golf"]
FEWEST_HOPS = ["alpha", "sierra", "golf"]
PROBE_INTERVAL = 0.25
START_TIMEOUT = 30.0  # per node, for its node.json
TIMEOUT = 30.0        # for each state a step waits for


def _arrow(path: list[str] | None) -> str:
    return " → ".join(path) if path else "(no path)"


def _peer_cost(mesh: LocalMesh, name: str, peer: str) -> float:
    rows = mesh.nodes[name].api.peers()["peers"]
    return next((p["cost"] or 0.0 for p in rows if p["node_id"] == mesh.nodes[peer].node_id), 0.0)


def _converged(mesh: LocalMesh) -> bool:
    """Every node routes to every other, the slow links are measured as slow, alpha knows
    three ways to golf, and alpha and golf route to each other over the fast path."""
    ids = {n.node_id for n in mesh.nodes.values()}
    if any(not ids - {n.node_id} <= set(selected_routes(n)) for n in mesh.nodes.values()):
        return False
    if any(d and _peer_cost(mesh, a, b) < 2 * d for a, b, d in LINKS):
        return False
    to_dst = [r for r in mesh.nodes[SRC].api.get("/v1/routes")["routes"]
              if r["destination"] == mesh.nodes[DST].node_id]
    return (len(to_dst) >= 3 and trace(mesh, SRC, DST) == FAST
            and trace(mesh, DST, SRC) == FAST[::-1])


def _routes_table(mesh: LocalMesh) -> Table:
    table = Table(title=f"{SRC}'s routing table", title_justify="left")
    for col in ("destination", "next hop", "metric", "path (each hop's selected route)"):
        table.add_column(col, justify="right" if col == "metric" else "left")
    rows = sorted(selected_routes(mesh.nodes[SRC]).items(), key=lambda kv: kv[1]["metric"])
    for dest_id, r in rows:
        dest = mesh.name_of(dest_id)
        table.add_row(dest, mesh.name_of(r["next_hop"]), str(r["metric"]),
                      _arrow(trace(mesh, SRC, dest)))
    return table


class Demo:
    """The steps, in order; each prints what it shows and returns its summary line.

    ``figures`` collects what tests check: hops, RTTs, paths and reroute times.
    """

    def __init__(self, console: Console, base: Path) -> None:
        self.console = console
        self.mesh = LocalMesh(base, extra_args=("--probe-interval", str(PROBE_INTERVAL)))
        self.figures: dict[str, Any] = {}
        n = len({name for link in LINKS for name in link[:2]})
        self.steps = ((f"start {n} nodes", self.start), ("routes converge", self.converge),
                      (f"ping {SRC} → {DST}", self.ping_before),
                      (f"message {SRC} → {DST}", self.message), (f"SIGKILL {VICTIM}", self.kill),
                      (f"{SRC} reroutes", self.reroute),
                      (f"ping {SRC} → {DST} again", self.ping_after))

    def node(self, name: str) -> LocalNode:
        return self.mesh.nodes[name]

    def start(self) -> str:
        self.mesh.start_topology(LINKS, timeout=START_TIMEOUT)
        for name, n in self.mesh.nodes.items():
            self.console.print(f"  {name:8} {n.node_id[:8]}  {n.endpoint:22}  api {n.info['api']}")
        return f"{len(self.mesh.nodes)} nodes, {len(self.mesh.proxies)} delay proxies"

    def converge(self) -> str:
        mesh = self.mesh
        wait_for(lambda: _converged(mesh), TIMEOUT, lambda: f"the routes to converge ({SRC} → "
                 f"{DST} via {_arrow(trace(mesh, SRC, DST))}, expected {_arrow(FAST)})",
                 interval=0.1)
        self.console.print(_routes_table(mesh))
        why = self.node(SRC).api.get("/v1/explain", destination=self.node(DST).node_id)
        sel, say = why["selected"], self.console.print
        say(f"  sporenet explain {DST} (on {SRC}): via {mesh.name_of(sel['next_hop'])}, "
            f"metric {sel['metric']}, selected")
        for alt in why["alternatives"]:
            say(f"    via {mesh.name_of(alt['next_hop']):8} metric {alt['metric']:>5}: "
                f"{alt['ruled_out']}")
        say(f"  fewest hops: {_arrow(FEWEST_HOPS)}, but sierra–golf adds {2 * SLOW_MS} ms RTT")
        self.figures["path_before"] = FAST
        n = len(mesh.nodes)
        return (f"{n * (n - 1)} routes; {SRC} → {DST}: {len(FAST) - 1} fast hops, "
                f"not {len(FEWEST_HOPS) - 1} slow")

    def _ping(self) -> dict[str, Any]:
        def answered() -> dict[str, Any] | None:
            res = ping(self.node(SRC), self.node(DST).node_id)
            return res if res["state"] == "ok" else None

        res = wait_for(answered, TIMEOUT, f"a ping {SRC} → {DST} to be answered")
        self.console.print(f"  reply from {DST}: rtt {res['rtt_ms']:.2f} ms, {res['hops']} hops")
        if res["hops"] < 3:
            raise DemoFailed(f"the ping crossed {res['hops']} hops, expected at least 3")
        return res

    def ping_before(self) -> str:
        res = self._ping()
        self.figures.update(hops_before=res["hops"], rtt_before_ms=res["rtt_ms"])
        return f"{res['hops']} hops, {res['rtt_ms']:.2f} ms"

    def message(self) -> str:
        src, dst, text = self.node(SRC), self.node(DST), f"hello {DST}, from {SRC}"
        t0 = time.monotonic()
        res = send_message(src, dst.info["address"], "demo", text)
        if res["state"] != "delivered":
            raise DemoFailed(f"message not delivered: {res.get('reason', res['state'])}")
        acked = time.monotonic() - t0
        got = wait_for(lambda: dst.api.get("/v1/messages", topic="demo")["messages"], TIMEOUT,
                       f"{DST} to hand out the message")[0]
        if got.get("data") != text or got["from"] != src.info["address"]:
            raise DemoFailed(f"{DST} received {got!r}, expected {text!r} from {SRC}")
        self.console.print(f"  {DST} received {got['data']!r} on topic {got['topic']!r}\n"
                           f"    from {got['from']} ({SRC}'s address)", markup=False)
        return f"delivered, acked in {acked * 1000:.0f} ms"

    def kill(self) -> str:
        self.figures["killed_at"] = time.monotonic()
        self.mesh.stop_node(VICTIM, sig=signal.SIGKILL)
        return f"{VICTIM} (pid {self.node(VICTIM).process.pid}) killed"

    def reroute(self) -> str:
        mesh, f = self.mesh, self.figures
        victim, dst = self.node(VICTIM).node_id, self.node(DST).node_id

        def moved() -> bool:
            route = selected_routes(self.node(SRC)).get(dst)
            return route is not None and route["next_hop"] != victim

        wait_for(moved, TIMEOUT, f"{SRC}'s route to {DST} to leave {VICTIM}", interval=0.01)
        f["reroute_s"] = time.monotonic() - f["killed_at"]
        wait_for(lambda: trace(mesh, SRC, DST) == DETOUR and trace(mesh, DST, SRC) == DETOUR[::-1],
                 TIMEOUT, lambda: f"{SRC} and {DST} to route to each other over {_arrow(DETOUR)} "
                 f"(now {_arrow(trace(mesh, SRC, DST))} and {_arrow(trace(mesh, DST, SRC))})",
                 interval=0.02)
        f["settled_s"], f["path_after"] = time.monotonic() - f["killed_at"], DETOUR
        self.console.print(f"  {SRC}'s route to {DST} left {VICTIM} {f['reroute_s']:.2f} s after "
                           f"the kill\n  both directions on {_arrow(DETOUR)} after "
                           f"{f['settled_s']:.2f} s")
        return (f"moved in {f['reroute_s']:.2f} s; settled via {DETOUR[1]} in "
                f"{f['settled_s']:.2f} s")

    def ping_after(self) -> str:
        res = self._ping()
        restored = time.monotonic() - self.figures["killed_at"]
        self.figures.update(hops_after=res["hops"], rtt_after_ms=res["rtt_ms"], restored_s=restored)
        return f"{res['hops']} hops, {res['rtt_ms']:.2f} ms, {restored:.2f} s after the kill"


def run_demo(console: Console, base: Path) -> dict[str, Any]:
    """Run every step; return the figures (for tests). Raises ``DemoFailed`` naming the
    step that failed. Every node and proxy is stopped before it returns or raises."""
    demo, steps = Demo(console, base), Steps(console)
    t0 = time.monotonic()
    console.print(f"[bold]sporenet demo[/bold]: a routed mesh on loopback, run dirs under {base}")
    try:
        for title, fn in demo.steps:
            steps.run(title, fn)
    finally:
        demo.mesh.close()
        console.print()
        console.print(steps.table())
    f = demo.figures
    f["total_s"] = time.monotonic() - t0
    console.print(f"[green]demo passed[/green]: {len(steps.rows)} steps in {f['total_s']:.1f} s; "
                  f"rerouted in {f['reroute_s']:.2f} s; pings crossed {f['hops_before']} then "
                  f"{f['hops_after']} hops")
    return f


@click.command("demo")
@click.option("--keep", is_flag=True, help="keep the run directories (logs, node.json) afterwards")
@click.option("--tun", is_flag=True, help="instead: 3 nodes with TUN devices in sn- network "
              "namespaces, ICMPv6 and a TCP transfer across the middle one (root)")
def command(keep: bool, tun: bool) -> None:
    """Run a routed 7-node mesh on loopback: lowest latency wins over fewest hops, a
    transit node dies, traffic reroutes. No root needed; a few seconds.

    With --tun (root): three nodes in network namespaces carry ICMPv6 echoes and a TCP
    transfer between their overlay addresses across a transit node, then clean up."""
    configure_logging("warning", "console")  # the proxies' info lines would clutter the screen
    console = Console(highlight=False)
    base = Path(tempfile.mkdtemp(prefix="sporenet-demo-"))
    try:
        if tun:
            from sporenet.commands.demo_tun import (
                run_tun_demo,  # loaded only with --tun
            )
            run_tun_demo(console, base)
        else:
            run_demo(console, base)
    except DemoFailed as e:
        hint = f"node logs in {base}" if keep else "rerun with --keep to keep the node logs"
        raise click.ClickException(f"demo failed at {e} ({hint})") from None
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            console.print(f"run directories kept in {base}")
