"""Routing scenarios on variant networks: lossy links (``lossy``) and region tags (``regions``).

They need links or router tags that the shared network of ``routing_scenarios`` does
not have, so each builds and converges its own network from the config and seed.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable

import numpy as np

from .fibmatrix import follow
from .metrics import _region_components, shortest_paths
from .routing_scenarios import (Config, _build, _common, _pair_flag, _stats, _topology,
                                converge_until)
from .topology import Topology


def lossy(cfg: Config) -> dict[str, object]:
    """Eligible flows: the shortest path crosses a lossy link and a loss-free path
    within +20 % latency exists. Avoided: the chosen chain crosses no lossy link."""
    started = time.monotonic()
    rng = random.Random(cfg.seed)
    base = _topology(cfg, rng)
    k = round(cfg.lossy_fraction * len(base.links))
    bad = set(random.Random(cfg.seed + 2).sample(range(len(base.links)), k))
    topology = Topology(base.name, base.places, [dataclasses.replace(l, loss=cfg.loss) if i in bad else l
                                                 for i, l in enumerate(base.links)])
    lossy_pairs = [(topology.links[i].a, topology.links[i].b) for i in sorted(bad)]
    sim = _build(cfg, topology, rng)
    conv, _ = converge_until(sim, cfg)
    n = topology.n
    flag = _pair_flag(n, lossy_pairs)
    truth = sim.truth()
    best = truth.matrix().T
    free = shortest_paths(topology, down_links=lossy_pairs).matrix().T
    best_lossy = follow(truth.next_hops(), sim.links(), hop_flag=flag).flagged
    off = ~np.eye(n, dtype=bool)
    eligible = off & best_lossy & (free <= 1.2 * best)
    no_alt = off & best_lossy & ~(free <= 1.2 * best)
    samples = []
    end = sim.clock.now + cfg.lossy_settle_s
    while sim.clock.now < end:
        sim.clock.run_until(min(end, sim.clock.now + max(cfg.lossy_settle_s / 4, cfg.sample_every)))
        res = sim.follow(hop_flag=flag)
        avoided = res.reached & ~res.flagged
        samples.append({"t": sim.clock.now,
                        "eligible_avoided": float(avoided[eligible].mean()) if eligible.any() else None,
                        "no_alternative_avoided": float(avoided[no_alt].mean()) if no_alt.any() else None,
                        "all_pairs_on_lossy": float((res.reached & res.flagged)[off].mean())})
    directed = {p for ab in lossy_pairs for p in (ab, ab[::-1])}
    measured = [m for x in sim.nodes for nid, m in x.measured.items()
                if (x.index, x.peer_index.get(nid, -1)) in directed]
    clean = [m for x in sim.nodes for m in x.measured.values()]
    return {"convergence_s": conv, "lossy_links": k, "links": len(topology.links), "loss": cfg.loss,
            "eligible_flows": int(eligible.sum()), "no_alternative_flows": int(no_alt.sum()),
            "avoided_fraction": samples[-1]["eligible_avoided"] if samples else None,
            "samples": samples,
            "lossy_link_loss_estimate": _stats(m.loss for m in measured),
            "lossy_link_cost_inflation": _stats(m.cost / (m.rtt_ms + 1.0) for m in measured),
            "all_link_cost_inflation": _stats(m.cost / (m.rtt_ms + 1.0) for m in clean),
            **_common(sim, started)}


def regions(cfg: Config) -> dict[str, object]:
    """Every router tagged with its place's region (continents of ``geo``). A flow of
    two nodes of one region with a path inside it must stay inside: every hop checked."""
    started = time.monotonic()
    rng = random.Random(cfg.seed)
    topology = _topology(cfg, rng)
    sim = _build(cfg, topology, rng, regions=True)
    conv, _ = converge_until(sim, cfg)
    sim.clock.run_until(sim.clock.now + 2 * cfg.update_interval)
    n = topology.n
    reg = np.array([p.region or "" for p in topology.places])
    comp = np.array(_region_components(topology, set(range(n))))
    cross = reg[:, None] != reg[None, :]  # a hop u -> v between regions
    res = sim.follow(hop_flag=cross)
    flows = (~cross) & (comp[:, None] == comp[None, :]) & ~np.eye(n, dtype=bool) & (reg[:, None] != "")
    left = flows & res.reached & res.flagged
    best = sim.truth().matrix().T
    with np.errstate(divide="ignore", invalid="ignore"):
        st = (res.latency / best)[flows & res.reached & ~res.flagged]
    return {"convergence_s": conv, "regions": {r: int((reg == r).sum()) for r in sorted(set(reg))},
            "in_region_flows": int(flows.sum()), "left_region": int(left.sum()),
            "unreachable": int((flows & ~res.reached).sum()),
            "left_examples": [[int(s), int(d)] for s, d in zip(*np.nonzero(left))][:10],
            "in_region_stretch": _stats(st[np.isfinite(st)]) if st.size else {},
            **_common(sim, started)}


OWN: dict[str, Callable[[Config], dict[str, object]]] = {"lossy": lossy, "regions": regions}
