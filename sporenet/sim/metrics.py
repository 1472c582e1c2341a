"""Routing metrics against the truth: shortest paths, stretch, loops, reachability, timing.

Driven by plain callables: a router under test is seen only through
``next_hop(node, dst) -> node | None`` (what its FIB says at the moment of the
sample), so nothing here depends on the router's code.

- ``shortest_paths``: all-pairs Dijkstra over the true one-way latencies, as one tree
  per destination (the view a distance-vector router converges to). scipy's csgraph
  when it is installed, a heapq Dijkstra per destination otherwise.
- ``find_loops`` / ``sample_routing``: follow every forwarding chain, memoised per
  destination, so a sample costs O(nodes) ``next_hop`` calls per destination.
"""

from __future__ import annotations

import heapq
import math
from array import array
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .topology import Topology

NextHop = Callable[[int, int], "int | None"]
INF = math.inf


class ShortestPaths:
    """Per destination ``dst``: ``latency(u, dst)`` and ``next_hop(u, dst)`` on a shortest path."""

    def __init__(self, n: int, dist: Sequence[Sequence[float]], succ: Sequence[Sequence[int]]) -> None:
        self.n = n
        self._dist = dist  # _dist[dst][u]: latency u -> dst
        self._succ = succ  # _succ[dst][u]: next hop from u toward dst, -1 if none

    def latency(self, src: int, dst: int) -> float:
        return float(self._dist[dst][src])

    def matrix(self):
        """All latencies as a numpy array ``[dst, src]`` (inf: no path)."""
        import numpy as np

        return np.asarray(self._dist, dtype=np.float64)

    def next_hops(self):
        """All next hops as a numpy array ``[src, dst]`` (-1: none), ``fibmatrix``'s layout."""
        import numpy as np

        nh = np.asarray(self._succ, dtype=np.int32).T.copy()
        np.fill_diagonal(nh, -1)
        return nh

    def next_hop(self, node: int, dst: int) -> int | None:
        hop = int(self._succ[dst][node])
        return None if hop < 0 or node == dst else hop

    def path(self, src: int, dst: int) -> list[int] | None:
        return follow_path(self.next_hop, src, dst, self.n)


def _directed(topology: Topology, down_nodes: Iterable[int],
              down_links: Iterable[tuple[int, int]]) -> list[tuple[int, int, float]]:
    """(u, v, latency u->v) for every usable direction."""
    dead_nodes = set(down_nodes)
    dead_links = {(min(a, b), max(a, b)) for a, b in down_links}
    out = []
    for l in topology.links:
        if l.a in dead_nodes or l.b in dead_nodes or (min(l.a, l.b), max(l.a, l.b)) in dead_links:
            continue
        out += [(l.a, l.b, l.latency_ab), (l.b, l.a, l.latency_ba)]
    return out


def shortest_paths(topology: Topology, *, down_nodes: Iterable[int] = (),
                   down_links: Iterable[tuple[int, int]] = (),
                   use_scipy: bool | None = None) -> ShortestPaths:
    """All-pairs shortest latency paths, without the nodes and links that are down."""
    arcs = _directed(topology, down_nodes, down_links)
    n = topology.n
    if use_scipy is not False:
        try:
            return _scipy_paths(n, arcs)
        except ImportError:
            if use_scipy:
                raise
    # Reverse arcs: a Dijkstra from dst over v -> u edges gives latency u -> dst.
    into: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for u, v, w in arcs:
        into[v].append((u, w))
    dist, succ = [], []
    for dst in range(n):
        d, s = dijkstra_to(into, dst)
        dist.append(d)
        succ.append(s)
    return ShortestPaths(n, dist, succ)


def dijkstra_to(into: list[list[tuple[int, float]]], dst: int) -> tuple[array, array]:
    """Latency from every node to ``dst`` and each node's next hop; ``into[v]`` = [(u, w(u->v))]."""
    n = len(into)
    dist = array("d", [INF]) * n
    succ = array("l", [-1]) * n
    dist[dst] = 0.0
    heap = [(0.0, dst)]
    while heap:
        d, v = heapq.heappop(heap)
        if d > dist[v]:
            continue
        for u, w in into[v]:
            nd = d + w
            if nd < dist[u]:
                dist[u] = nd
                succ[u] = v
                heapq.heappush(heap, (nd, u))
    return dist, succ


def _scipy_paths(n: int, arcs: list[tuple[int, int, float]]) -> ShortestPaths:
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    # Transposed graph (v, u): predecessors from dst are next hops toward dst.
    rows = np.array([v for _, v, _ in arcs], dtype=np.int64)
    cols = np.array([u for u, _, _ in arcs], dtype=np.int64)
    data = np.array([w for _, _, w in arcs], dtype=np.float64)
    graph = csr_matrix((data, (rows, cols)), shape=(n, n))
    dist, pred = dijkstra(graph, directed=True, return_predecessors=True)
    pred[pred < 0] = -1  # scipy marks "none" with -9999
    return ShortestPaths(n, dist, pred)


def stretch(path_latency: float | None, best_latency: float) -> float:
    """Path latency over the best; 1.0 when both are zero, inf when there is no path."""
    if path_latency is None or math.isinf(path_latency):
        return INF
    if best_latency <= 0.0:
        return 1.0 if path_latency <= 0.0 else INF
    return path_latency / best_latency


def path_latency(topology: Topology, path: Sequence[int]) -> float | None:
    """Sum of one-way latencies along ``path``; None if a hop is not a link."""
    total = 0.0
    for u, v in zip(path, path[1:]):
        w = topology.latency(u, v)
        if w is None:
            return None
        total += w
    return total


def follow_path(next_hop: NextHop, src: int, dst: int, max_hops: int) -> list[int] | None:
    """The forwarding chain src..dst, or None if it dead-ends, loops or exceeds ``max_hops``."""
    path, seen = [src], {src}
    node = src
    while node != dst:
        if len(path) > max_hops:
            return None
        node = next_hop(node, dst)
        if node is None or node in seen:
            return None
        path.append(node)
        seen.add(node)
    return path


@dataclass(frozen=True, slots=True)
class Loop:
    dst: int
    cycle: tuple[int, ...]  # the nodes of the loop, rotated to start at the smallest


@dataclass(frozen=True, slots=True)
class DestinationWalk:
    """Where every node's chain toward ``dst`` ends: latency to ``dst`` (inf if it does not)."""

    dst: int
    latency: dict[int, float]
    loops: list[Loop]


_PENDING = -1.0  # marks a node on the chain being walked


def walk_destination(next_hop: NextHop, dst: int, nodes: Iterable[int],
                     hop_latency: Callable[[int, int], float | None] | None = None) -> DestinationWalk:
    """Follow every node's chain toward ``dst``, each node visited once.

    ``hop_latency(u, v)`` gives a hop's latency (None: not a link, so the chain is
    broken there); without it every hop costs 1 (latency = hop count).
    """
    result: dict[int, float] = {dst: 0.0}
    loops: list[Loop] = []
    for start in nodes:
        if start in result:
            continue
        chain: list[int] = []
        weights: list[float] = []  # weights[i]: latency chain[i] -> its next hop
        position: dict[int, int] = {}
        node, tail = start, INF
        while True:
            if node in result and result[node] != _PENDING:
                tail = result[node]
                break
            if node in position:  # a loop: the chain came back to itself
                cycle = chain[position[node]:]
                low = cycle.index(min(cycle))
                loops.append(Loop(dst, tuple(cycle[low:] + cycle[:low])))
                break
            position[node] = len(chain)
            chain.append(node)
            result[node] = _PENDING
            nxt = next_hop(node, dst)
            if nxt is None:
                break
            w = 1.0 if hop_latency is None else hop_latency(node, nxt)
            if w is None:
                break
            weights.append(w)
            node = nxt
        # Unwind: each node's latency is its hop plus the rest of the chain.
        for i in range(len(chain) - 1, -1, -1):
            if math.isinf(tail):
                result[chain[i]] = INF
                continue
            tail += weights[i]
            result[chain[i]] = tail
    return DestinationWalk(dst, result, loops)


def find_loops(next_hop: NextHop, nodes: Iterable[int],
               destinations: Iterable[int] | None = None) -> list[Loop]:
    """Every forwarding loop: chains toward each destination that revisit a node."""
    nodes = list(nodes)
    loops: list[Loop] = []
    for dst in (nodes if destinations is None else destinations):
        loops += walk_destination(next_hop, dst, nodes).loops
    return loops


@dataclass(frozen=True, slots=True)
class RoutingSample:
    """One look at every FIB at time ``t``."""

    t: float
    pairs: int  # (src, dst) pairs with a true path
    reachable: int  # of those, pairs whose chain reaches dst
    loops: int
    stretch: list[float]  # one per reachable pair

    @property
    def reachability(self) -> float:
        return self.reachable / self.pairs if self.pairs else 1.0


def sample_routing(t: float, next_hop: NextHop, topology: Topology, truth: ShortestPaths, *,
                   nodes: Sequence[int] | None = None,
                   destinations: Sequence[int] | None = None) -> RoutingSample:
    """Reachability, stretch and loops over all (src, dst) pairs of ``nodes`` x ``destinations``.

    ``truth`` should be computed for the failures in force at ``t`` (pairs it cannot
    connect are not counted).
    """
    nodes = list(range(topology.n)) if nodes is None else list(nodes)
    dsts = nodes if destinations is None else list(destinations)
    pairs = reachable = loops = 0
    stretches: list[float] = []
    for dst in dsts:
        walk = walk_destination(next_hop, dst, nodes, topology.latency)
        loops += len(walk.loops)
        for src in nodes:
            best = truth.latency(src, dst)
            if src == dst or math.isinf(best):
                continue
            pairs += 1
            got = walk.latency[src]
            if not math.isinf(got):
                reachable += 1
                stretches.append(stretch(got, best))
    return RoutingSample(t, pairs, reachable, loops, stretches)


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
    """Linear-interpolated percentiles as ``{"p50": ..}``; None for no values."""
    data = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{q:g}"
        if not data:
            out[key] = None
            continue
        pos = (len(data) - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, len(data) - 1)
        out[key] = data[lo] + (data[hi] - data[lo]) * (pos - lo)
    return out


def settle_time(timeline: Sequence[tuple[float, float]], after: float, *,
                threshold: float = 1.0) -> float | None:
    """Seconds from ``after`` until a (time, reachability) timeline reaches ``threshold``
    and stays there to its end; None if it never does."""
    settled: float | None = None
    for t, value in timeline:
        if t < after:
            continue
        if value >= threshold:
            settled = t if settled is None else settled
        else:
            settled = None
    return None if settled is None else settled - after


@dataclass(frozen=True, slots=True)
class LocalitySample:
    """Same-region pairs joined inside their region, and how many of their chains leave it."""

    pairs: int
    left_region: int  # chains that reach dst but pass through another region
    unreachable: int


def region_locality(next_hop: NextHop, topology: Topology, *,
                    nodes: Sequence[int] | None = None) -> LocalitySample:
    """DESIGN.md §5 locality: for pairs of one region with a path inside the region,
    count chains that leave the region (anchors §5 goal: zero)."""
    alive = set(range(topology.n) if nodes is None else nodes)
    region = [p.region for p in topology.places]
    comp = _region_components(topology, alive)
    pairs = left = unreachable = 0
    for dst in sorted(alive):
        if region[dst] is None:
            continue
        home = region[dst]
        members = [u for u in sorted(alive) if region[u] == home]
        walk = walk_destination(next_hop, dst, members,
                                lambda u, v: None if topology.link(u, v) is None
                                else (0.0 if region[v] == home else 1.0))
        for src in members:
            if src == dst or comp[src] != comp[dst]:
                continue
            pairs += 1
            got = walk.latency[src]
            unreachable += math.isinf(got)
            left += 0.0 < got < INF
    return LocalitySample(pairs, left, unreachable)


def _region_components(topology: Topology, alive: set[int]) -> list[int]:
    """A component label per node, over the links whose ends share a region and are alive."""
    label = list(range(topology.n))

    def find(x: int) -> int:
        while label[x] != x:
            label[x] = label[label[x]]
            x = label[x]
        return x

    for l in topology.links:
        pa, pb = topology.places[l.a].region, topology.places[l.b].region
        if pa is not None and pa == pb and l.a in alive and l.b in alive:
            label[find(l.a)] = find(l.b)
    return [find(i) for i in range(topology.n)]
