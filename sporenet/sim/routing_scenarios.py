"""The routing issue's figures as named scenarios, each a JSON-able dict.

``converge`` (cold start: convergence time, stretch), ``churn`` (10 % node churn and
link flaps: loops at every sample), ``cut`` (silent cuts of used links, one at a time:
reroute time from the cut and from its detection), ``join`` (a node arrives after
convergence: time until every node routes to it), ``lossy`` (2 % loss on some links:
how many flows avoid them when a loss-free path within +20 % exists), ``regions``
(region tags: same-region flows that leave their region), ``idle`` (control bytes
per node and per peer per minute once converged). ``routing_run.run_scenarios`` runs a list.

A cold start of 1,000 nodes is most of a run's cost (every route crosses every
link at least once), so ``converge``, ``idle``, ``join``, ``cut`` and ``churn`` share
one network, in that order (churn last: it leaves the network in disarray); its last
node starts down and is the one that joins. ``lossy`` and ``regions`` need other
links or tags and build their own. Same config and scenario list, same report.
Raw series (timelines, per-event times) are under keys ending in ``_series``.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .metrics import percentiles, shortest_paths
from .routing import RoutingSim, build_routing_sim, make_topology
from .topology import Topology, TopologyEvent

log = logging.getLogger(__name__)  # progress of long runs (the CLI shows INFO)
SCENARIOS = ("converge", "idle", "join", "cut", "churn", "lossy", "regions")


@dataclass(frozen=True, slots=True)
class Config:
    topology: str = "geo"
    nodes: int = 100
    seed: int = 1
    avg_degree: float = 5.0
    probe_interval: float = 1.0  # the prober's default
    update_interval: float = 4.0  # the router's default: idle traffic as deployed
    sample_every: float = 1.0  # between full FIB samples
    max_converge_s: float = 120.0  # give up waiting for convergence after this
    churn: float = 0.10  # fraction of nodes down once (churn scenario)
    flaps: float = 0.10  # fraction of links flapping (churn scenario)
    churn_window_s: float = 60.0
    cuts: int = 10  # silent link cuts, one at a time
    poll_s: float = 0.1  # time resolution of reroute and join measurements
    loss: float = 0.02
    lossy_fraction: float = 0.15
    lossy_settle_s: float = 40.0  # after convergence: the loss window fills (20 probes)
    idle_window_s: float = 60.0


def _stats(values) -> dict[str, float | None]:
    vals = [float(v) for v in values]
    out = percentiles(vals, (50, 90, 99))
    out["max"] = max(vals) if vals else None
    out["mean"] = sum(vals) / len(vals) if vals else None
    out["count"] = len(vals)
    return out


def _topology(cfg: Config, rng: random.Random) -> Topology:
    return make_topology(cfg.topology, cfg.nodes, rng, avg_degree=cfg.avg_degree)


def _build(cfg: Config, topology: Topology, rng: random.Random, **kw) -> RoutingSim:
    return build_routing_sim(topology, rng, probe_interval=cfg.probe_interval,
                             update_interval=cfg.update_interval, **kw)


def converge_until(sim: RoutingSim, cfg: Config, *, stable: int = 3) -> tuple[float | None, list]:
    """Sample every ``sample_every`` until ``stable`` samples in a row have every live
    pair reachable; (the first of those times, [(t, reachability, loops)])."""
    timeline: list[tuple[float, float, int]] = []
    run = 0
    start = sim.clock.now
    while sim.clock.now - start < cfg.max_converge_s:
        sim.clock.run_until(sim.clock.now + cfg.sample_every)
        s = sim.sample()
        timeline.append((s.t, s.reachability, s.loops))
        log.info("t=%.1f reachability %.4f loops %d", s.t, s.reachability, s.loops)
        run = run + 1 if s.reachability >= 1.0 else 0
        if run >= stable:
            return timeline[-stable][0] - start, timeline
    return None, timeline


class Context:
    """The shared network of the base scenarios, built and converged on first use."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._sim: RoutingSim | None = None
        self.convergence_s: float | None = None
        self.timeline: list = []
        self.build_wall_s = 0.0

    @property
    def sim(self) -> RoutingSim:
        if self._sim is None:
            started = time.monotonic()
            rng = random.Random(self.cfg.seed)
            topology = _topology(self.cfg, rng)
            self.rng = rng
            self._sim = _build(self.cfg, topology, rng, late=[topology.n - 1])
            self.convergence_s, self.timeline = converge_until(self._sim, self.cfg)
            self.build_wall_s = time.monotonic() - started
        return self._sim


def _common(sim: RoutingSim, started: float) -> dict[str, object]:
    return {"wall_s": round(time.monotonic() - started, 2), "simulated_s": round(sim.clock.now, 3),
            "events": sim.clock.events_run, "frames_sent": sim.network.stats.frames_sent,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def converge(ctx: Context) -> dict[str, object]:
    """Cold start of every node but the joiner; stretch once converged and settled."""
    sim, cfg = ctx.sim, ctx.cfg  # builds and converges the shared network on first use
    started = time.monotonic()
    # A few more update intervals: stretch once the link costs have settled.
    sim.clock.run_until(sim.clock.now + 3 * cfg.update_interval)
    last = sim.sample()
    st = np.array(last.stretch)
    return {"convergence_s": ctx.convergence_s, "reachability": last.reachability,
            "pairs": last.pairs, "loops_total": sum(x[2] for x in ctx.timeline) + last.loops,
            "stretch": _stats(st) if len(st) else {},
            "stretch_le_1_05": float((st <= 1.05).mean()) if len(st) else None,
            "links": len(sim.topology.links), "avg_degree": sim.topology.avg_degree,
            "timeline_series": [list(x) for x in ctx.timeline],
            "stretch_cdf_series": np.quantile(st, np.linspace(0, 1, 201)).tolist() if len(st) else [],
            "build_and_converge_wall_s": round(ctx.build_wall_s, 2),
            **_common(sim, started - ctx.build_wall_s)}


def churn(ctx: Context) -> dict[str, object]:
    """``churn`` of the nodes go down once (back after 5-30 s) and ``flaps`` of the links
    flap, over ``churn_window_s``; every FIB sampled each ``sample_every`` for loops."""
    started = time.monotonic()
    sim, cfg = ctx.sim, ctx.cfg
    t0 = sim.clock.now
    sim.schedule_failures(random.Random(cfg.seed + 3), churn=cfg.churn, flaps=cfg.flaps,
                          start=t0, window=cfg.churn_window_s)
    samples = []
    while sim.clock.now < t0 + cfg.churn_window_s + 20.0:  # and 20 s to recover
        sim.clock.run_until(sim.clock.now + cfg.sample_every)
        samples.append(sim.sample())
        log.info("churn t=%.1f reachability %.4f loops %d", samples[-1].t,
                 samples[-1].reachability, samples[-1].loops)
    loops = [s.loops for s in samples]
    kinds: dict[str, int] = {}
    for e in sim.events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    return {"failures_from_s": t0, "failure_events": kinds, "samples": len(loops),
            "loops_total": sum(loops), "samples_with_loops": sum(1 for x in loops if x),
            "max_loops": max(loops, default=0),
            "reachability_min": min((s.reachability for s in samples), default=None),
            "reachability_end": samples[-1].reachability if samples else None,
            "timeline_series": [[s.t, s.reachability, s.loops] for s in samples],
            "failures_series": [e.at for e in sim.events if e.kind in ("node_down", "link_down")],
            **_common(sim, started)}


def _used_links(sim: RoutingSim, rng: random.Random, count: int) -> list[tuple[int, int]]:
    """Links on forwarding chains of random pairs, excluding bridges (no alternative)."""
    nh = sim.nh()
    n = sim.topology.n
    adj = sim.topology.neighbours()
    chosen: list[tuple[int, int]] = []
    for _ in range(50 * count):
        if len(chosen) >= count:
            break
        src, dst = rng.randrange(n), rng.randrange(n)
        path, node = [src], src
        while node != dst and len(path) <= n and nh[node, dst] >= 0:
            node = int(nh[node, dst])
            path.append(node)
        if node != dst or len(path) < 2:
            continue
        k = rng.randrange(len(path) - 1)
        link = (min(path[k], path[k + 1]), max(path[k], path[k + 1]))
        a, b = link
        if link in chosen or len(adj[a]) < 2 or len(adj[b]) < 2:
            continue
        alt = shortest_paths(sim.topology, down_links=[link])
        if math.isinf(alt.latency(a, b)):
            continue  # a bridge: nothing to reroute to
        chosen.append(link)
    return chosen


def _pair_flag(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    flag = np.zeros((n, n), bool)
    for a, b in pairs:
        flag[a, b] = flag[b, a] = True
    return flag


def _suspects(node, peer: bytes) -> bool:
    """The node's prober holds the link to ``peer`` suspect, or has dropped it."""
    link = node.prober._links.get(peer)  # noqa: SLF001 - the sim's view of its own node
    return link is None or link.suspect


def cut(ctx: Context) -> dict[str, object]:
    """Per cut: t=0 the link goes silent (loss 1, no close); detection is the first end
    whose prober suspects it (or declares it dead); rerouted is the first poll at which every pair whose
    chain used the link reaches its destination without it."""
    started = time.monotonic()
    sim, cfg = ctx.sim, ctx.cfg
    topology = sim.topology
    sim.clock.run_until(sim.clock.now + 2 * cfg.update_interval)
    links = _used_links(sim, random.Random(cfg.seed + 1), cfg.cuts)
    n = topology.n
    ids = [x.identity.node_id for x in sim.nodes]
    per_cut, per_pair = [], []
    for a, b in links:
        flag = _pair_flag(n, [(a, b)])
        before = sim.follow(hop_flag=flag)
        affected = before.reached & before.flagged
        srcs, cols = np.nonzero(affected)
        dsts = before.dsts[np.unique(cols)]
        col_of = {int(d): i for i, d in enumerate(dsts)}
        t_cut = sim.clock.now
        sim.apply(TopologyEvent(t_cut, "link_down", a, b))
        done_at = np.full(len(srcs), np.nan)
        rerouted = noticed = None
        while sim.clock.now - t_cut < 30.0 * cfg.probe_interval:
            sim.clock.run_until(sim.clock.now + cfg.poll_s)
            if noticed is None and (_suspects(sim.nodes[a], ids[b]) or _suspects(sim.nodes[b], ids[a])):
                noticed = round(sim.clock.now - t_cut, 6)
            res = sim.follow(hop_flag=flag, dsts=dsts)
            c = np.array([col_of[int(before.dsts[x])] for x in cols], dtype=np.int64)
            ok = res.reached[srcs, c] & ~res.flagged[srcs, c]
            done_at[ok & np.isnan(done_at)] = round(sim.clock.now - t_cut, 6)
            if ok.all():
                rerouted = round(sim.clock.now - t_cut, 6)
                break
        # Rerouting may come before the link is declared dead (a suspect link's cost
        # rises first): run on until it is, to report both.
        dead_by = t_cut + sim.nodes[a].prober.dead_after + 2 * cfg.probe_interval
        downs: list[float] = []
        while True:
            downs = [t for t in (sim.nodes[a].down_at.get(ids[b]), sim.nodes[b].down_at.get(ids[a]))
                     if t is not None and t >= t_cut]
            if downs or sim.clock.now >= dead_by:
                break
            sim.clock.run_until(sim.clock.now + cfg.poll_s)
        detect = min(downs) - t_cut if downs else None
        if noticed is not None:  # the prober's suspicion (2.5 intervals) comes first
            detect = noticed if detect is None else min(detect, noticed)
        per_cut.append({"link": [a, b], "affected_pairs": int(len(srcs)), "rerouted_s": rerouted,
                        "detected_s": detect,
                        "after_detection_s": None if rerouted is None or detect is None
                        else rerouted - detect})
        per_pair += [float(x) for x in done_at if not np.isnan(x)]
        log.info("cut %d/%d %s: %s", len(per_cut), len(links), (a, b), per_cut[-1])
        sim.apply(TopologyEvent(sim.clock.now, "link_up", a, b))
        converge_until(sim, cfg)
        sim.clock.run_until(sim.clock.now + 2 * cfg.update_interval)
    rr = [c["rerouted_s"] for c in per_cut if c["rerouted_s"] is not None]
    after = [c["after_detection_s"] for c in per_cut if c["after_detection_s"] is not None]
    det = [c["detected_s"] for c in per_cut if c["detected_s"] is not None]
    bound = 3 * cfg.probe_interval
    return {"cuts": len(per_cut), "not_rerouted": len(per_cut) - len(rr),
            "probe_interval_s": cfg.probe_interval,
            "dead_after_s": sim.nodes[0].prober.dead_after,
            "reroute_s": _stats(rr), "detection_s": _stats(det), "after_detection_s": _stats(after),
            "within_3_probe_intervals": sum(1 for x in rr if x <= bound),
            "pair_reroute_s": _stats(per_pair),
            "per_cut": per_cut, "pair_reroute_series": per_pair, **_common(sim, started)}


def join(ctx: Context) -> dict[str, object]:
    """The shared network's last node starts down; now it comes up (its links dialled)."""
    started = time.monotonic()
    sim, cfg = ctx.sim, ctx.cfg
    topology = sim.topology
    j = topology.n - 1
    sim.clock.run_until(sim.clock.now + 2 * cfg.update_interval)
    t_join = sim.clock.now
    sim.apply(TopologyEvent(t_join, "node_up", j))
    jid = sim.nodes[j].identity.node_id
    others = [i for i in range(topology.n) if i != j]
    route_at = np.full(topology.n, np.nan)
    all_route = all_reach = reaches_all = None
    while sim.clock.now - t_join < 60.0 and (all_reach is None or reaches_all is None):
        sim.clock.run_until(sim.clock.now + cfg.poll_s)
        t = round(sim.clock.now - t_join, 6)
        has = np.array([jid in sim.nodes[i].router.fib() for i in others])
        idx = np.array(others)[has]
        route_at[idx[np.isnan(route_at[idx])]] = t
        if all_route is None and has.all():
            all_route = t
        if all_reach is None and has.all() and sim.follow(dsts=[j]).reached[others, 0].all():
            all_reach = t
        if reaches_all is None and len(sim.nodes[j].router.fib()) >= len(others):
            if sim.follow(dsts=others).reached[j].all():
                reaches_all = t
    got = route_at[others]
    return {"joined_at_s": t_join, "joiner_links": len(topology.neighbours()[j]),
            "all_have_route_s": all_route, "all_reach_s": all_reach, "joiner_reaches_all_s": reaches_all,
            "route_s": _stats(got[~np.isnan(got)]),
            "route_series": sorted(float(x) for x in got if not np.isnan(x)), **_common(sim, started)}


def idle(ctx: Context) -> dict[str, object]:
    """Control bytes each node sends in ``idle_window_s`` after convergence (all frames:
    probes, acks, routing), per minute, and divided by its number of peers."""
    started = time.monotonic()
    sim, cfg = ctx.sim, ctx.cfg
    topology = sim.topology
    sim.clock.run_until(sim.clock.now + 3 * cfg.update_interval)
    t0 = sim.clock.now
    all0, rt0 = sim.bytes_sent()
    sim.clock.run_until(t0 + cfg.idle_window_s)
    all1, rt1 = sim.bytes_sent()
    per_min = 60.0 / cfg.idle_window_s
    live = np.array(sim.alive())  # the joiner has not joined yet
    deg = np.array(topology.degrees(), dtype=np.float64)[live]
    total, routing = ((all1 - all0) * per_min)[live], ((rt1 - rt0) * per_min)[live]
    by_degree = {int(d): round(float(total[deg == d].mean()), 1) for d in sorted(set(deg.astype(int)))}
    return {"nodes": len(live), "window_s": cfg.idle_window_s, "avg_degree": topology.avg_degree,
            "bytes_per_node_per_min": _stats(total), "routing_bytes_per_node_per_min": _stats(routing),
            "bytes_per_peer_per_min": _stats(total / deg), "routing_bytes_per_peer_per_min": _stats(routing / deg),
            "bytes_per_node_per_min_by_degree": by_degree, **_common(sim, started)}


SHARED: dict[str, Callable[[Context], dict[str, object]]] = {
    "converge": converge, "idle": idle, "join": join, "cut": cut, "churn": churn}
