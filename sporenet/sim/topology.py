"""Topologies for routing scenarios, and timed churn and link-flap schedules.

A ``Topology`` is plain data: nodes ``0..n-1`` (each with an optional place on the
map and a region tag) and undirected links with a one-way latency per direction and
a loss rate. Generators: ``line``, ``ring``, ``grid``, ``geographic``. ``apply_to``
installs one into a ``NetworkModel``; ``schedule_events`` plays a churn or flap
schedule on a ``VirtualClock``.

Invariants: every random draw comes from the ``rng`` passed in, in a fixed order
(same seed, same topology, same schedule); events are ordered by (time, sequence).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

from sporenet.protocols.errors import LocalProtocolError

from . import geo
from .clock import VirtualClock
from .network import Edge, NetworkModel


@dataclass(frozen=True, slots=True)
class Place:
    lat: float | None = None
    lon: float | None = None
    region: str | None = None
    site: str | None = None  # the city a geographic node sits around


@dataclass(frozen=True, slots=True)
class Link:
    a: int
    b: int
    latency_ab: float  # seconds, one way
    latency_ba: float
    loss: float = 0.0

    def latency(self, src: int, dst: int) -> float:
        if (src, dst) == (self.a, self.b):
            return self.latency_ab
        if (src, dst) == (self.b, self.a):
            return self.latency_ba
        raise LocalProtocolError(f"link {self.a}-{self.b} does not join {src}->{dst}")


@dataclass(slots=True)
class Topology:
    name: str
    places: list[Place]
    links: list[Link]
    _index: dict[tuple[int, int], Link] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for link in self.links:
            if link.a == link.b or not (0 <= link.a < self.n and 0 <= link.b < self.n):
                raise LocalProtocolError(f"bad link {link.a}-{link.b} for {self.n} nodes")
            key = (min(link.a, link.b), max(link.a, link.b))
            if key in self._index:
                raise LocalProtocolError(f"link {key} twice")
            self._index[key] = link

    @property
    def n(self) -> int:
        return len(self.places)

    def link(self, a: int, b: int) -> Link | None:
        return self._index.get((min(a, b), max(a, b)))

    def latency(self, src: int, dst: int) -> float | None:
        """One-way latency of the direct link src->dst, None if there is none."""
        link = self.link(src, dst)
        return None if link is None else link.latency(src, dst)

    def neighbours(self) -> list[list[int]]:
        adj: list[list[int]] = [[] for _ in range(self.n)]
        for link in self.links:
            adj[link.a].append(link.b)
            adj[link.b].append(link.a)
        return adj

    def degrees(self) -> list[int]:
        return [len(x) for x in self.neighbours()]

    @property
    def avg_degree(self) -> float:
        return 2 * len(self.links) / self.n if self.n else 0.0

    def is_connected(self) -> bool:
        return len(_components(self.n, [(l.a, l.b) for l in self.links])) <= 1

    def edges(self) -> list[Edge]:
        """As ``network.random_topology`` returns them: (a, b, latency a->b, latency b->a)."""
        return [(l.a, l.b, l.latency_ab, l.latency_ba) for l in self.links]

    def regions(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, p in enumerate(self.places):
            if p.region is not None:
                out.setdefault(p.region, []).append(i)
        return out

    def apply_to(self, network: NetworkModel, *, jitter: float = 0.0) -> None:
        """Add every link (both directions) to ``network``; nodes are added by SimNodes."""
        for l in self.links:
            network.add_link(l.a, l.b, l.latency_ab, l.latency_ba, loss=l.loss, jitter=jitter)


# -- regular shapes --------------------------------------------------------------------


def _uniform(name: str, n: int, pairs: list[tuple[int, int]], latency: float, loss: float) -> Topology:
    return Topology(name, [Place() for _ in range(n)],
                    [Link(a, b, latency, latency, loss) for a, b in pairs])


def line(n: int, *, latency: float = 0.010, loss: float = 0.0) -> Topology:
    return _uniform(f"line{n}", n, [(i, i + 1) for i in range(n - 1)], latency, loss)


def ring(n: int, *, latency: float = 0.010, loss: float = 0.0) -> Topology:
    if n < 3:
        raise LocalProtocolError("a ring needs at least 3 nodes")
    return _uniform(f"ring{n}", n, [(i, (i + 1) % n) for i in range(n)], latency, loss)


def grid(w: int, h: int, *, latency: float = 0.010, loss: float = 0.0) -> Topology:
    """Node ``y * w + x``; links to the right and downward neighbours."""
    pairs = [(y * w + x, y * w + x + 1) for y in range(h) for x in range(w - 1)]
    pairs += [(y * w + x, (y + 1) * w + x) for y in range(h - 1) for x in range(w)]
    pairs.sort()
    return _uniform(f"grid{w}x{h}", w * h, pairs, latency, loss)


# -- nodes on the world map --------------------------------------------------------------


def geographic(n: int, avg_degree: float, rng: random.Random, *, long_fraction: float = 0.05,
               asymmetry: float = 0.05, spread_km: float = 150.0, loss: float = 0.0) -> Topology:
    """``n`` nodes clustered around world cities; links to near neighbours plus a few long ones.

    ``round(n * long_fraction)`` random long links first, then rounds in which every
    node (in index order) links to its next-nearest neighbour, until the links number
    ``n * avg_degree / 2``; then components, if any remain, are joined by their
    closest pair. Latency per ``geo.latency_for_km``, each direction within
    +-``asymmetry`` of it.
    """
    spots = geo.place_nodes(n, rng, spread_km=spread_km)
    places = [Place(lat, lon, region, site) for lat, lon, region, site in spots]
    vec = [geo.unit_vector(lat, lon) for lat, lon, _, _ in spots]
    target = min(round(n * avg_degree / 2), n * (n - 1) // 2)
    pairs: set[tuple[int, int]] = set()
    order: list[tuple[int, int]] = []

    def add(a: int, b: int) -> None:
        key = (min(a, b), max(a, b))
        if a != b and key not in pairs:
            pairs.add(key)
            order.append(key)

    for _ in range(min(round(n * long_fraction), target) if n > 1 else 0):
        add(rng.randrange(n), rng.randrange(n))
    depth = min(n - 1, int(3 * avg_degree) + 4)
    nearest = [_nearest(vec, i, depth) for i in range(n)]
    for rank in range(depth):
        for i in range(n):
            if len(order) >= target:
                break
            add(i, nearest[i][rank])
    for a, b in _bridges(n, vec, order):
        add(a, b)
    links = []
    for a, b in order:
        base = geo.latency_for_km(geo.great_circle_km(spots[a][0], spots[a][1], spots[b][0], spots[b][1]))
        links.append(Link(a, b, base * rng.uniform(1 - asymmetry, 1 + asymmetry),
                          base * rng.uniform(1 - asymmetry, 1 + asymmetry), loss))
    return Topology(f"geo{n}", places, links)


def _chord2(u: tuple[float, float, float], v: tuple[float, float, float]) -> float:
    return (u[0] - v[0]) ** 2 + (u[1] - v[1]) ** 2 + (u[2] - v[2]) ** 2


def _nearest(vec: list[tuple[float, float, float]], i: int, k: int) -> list[int]:
    u = vec[i]
    return heapq.nsmallest(k + 1, range(len(vec)), key=lambda j: (_chord2(u, vec[j]), j))[1:]


def _components(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: (len(g), g[0]))


def _bridges(n: int, vec: list[tuple[float, float, float]],
             pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Links joining the components: the smallest one to its closest outside node, repeatedly."""
    added: list[tuple[int, int]] = []
    comps = _components(n, pairs)
    while len(comps) > 1:
        inside = set(comps[0])
        best = min(((_chord2(vec[a], vec[b]), a, b) for a in comps[0]
                    for b in range(n) if b not in inside))
        added.append((best[1], best[2]))
        comps = _components(n, pairs + added)
    return added


# -- churn and flaps -----------------------------------------------------------------------

EventKind = Literal["node_down", "node_up", "link_down", "link_up"]


@dataclass(frozen=True, slots=True)
class TopologyEvent:
    at: float
    kind: EventKind
    a: int  # the node, or one end of the link
    b: int | None = None  # the link's other end


def _sorted(events: list[TopologyEvent]) -> list[TopologyEvent]:
    # (time, sequence): ties keep the order the schedule generated them in.
    return [e for _, _, e in sorted((e.at, i, e) for i, e in enumerate(events))]


def churn_schedule(topology: Topology, fraction: float, duration: float, rng: random.Random, *,
                   start: float = 0.0, downtime: tuple[float, float] = (5.0, 30.0)) -> list[TopologyEvent]:
    """``round(fraction * n)`` nodes each go down once in ``[start, start + duration)``
    and come back after a downtime uniform in ``downtime`` (if that is still in the window)."""
    chosen = sorted(rng.sample(range(topology.n), min(topology.n, round(fraction * topology.n))))
    events = []
    for node in chosen:
        down = start + rng.uniform(0.0, duration)
        events.append(TopologyEvent(down, "node_down", node))
        up = down + rng.uniform(*downtime)
        if up < start + duration:
            events.append(TopologyEvent(up, "node_up", node))
    return _sorted(events)


def flap_schedule(topology: Topology, fraction: float, duration: float, rng: random.Random, *,
                  start: float = 0.0, uptime: tuple[float, float] = (5.0, 20.0),
                  downtime: tuple[float, float] = (0.5, 5.0)) -> list[TopologyEvent]:
    """``round(fraction * links)`` links flap: up for ``uptime``, down for ``downtime``,
    repeatedly within ``[start, start + duration)``; each ends up (if the window allows)."""
    count = min(len(topology.links), round(fraction * len(topology.links)))
    chosen = sorted(rng.sample(range(len(topology.links)), count))
    events = []
    end = start + duration
    for index in chosen:
        link = topology.links[index]
        t = start + rng.uniform(0.0, uptime[1])
        while t < end:
            events.append(TopologyEvent(t, "link_down", link.a, link.b))
            t += rng.uniform(*downtime)
            if t >= end:
                break
            events.append(TopologyEvent(t, "link_up", link.a, link.b))
            t += rng.uniform(*uptime)
    return _sorted(events)


class FailureState:
    """Which nodes and links are down; applies events to a ``NetworkModel`` as silent cuts.

    A link is cut (loss 1.0 both ways: not even a carrier close gets through) while it
    is down or either end is down; otherwise it has its topology loss back.
    """

    def __init__(self, topology: Topology, network: NetworkModel | None = None) -> None:
        self.topology = topology
        self.network = network
        self.down_nodes: set[int] = set()
        self.down_links: set[tuple[int, int]] = set()
        self._adj = topology.neighbours()

    def is_cut(self, a: int, b: int) -> bool:
        return (a in self.down_nodes or b in self.down_nodes
                or (min(a, b), max(a, b)) in self.down_links)

    def apply(self, event: TopologyEvent) -> None:
        match event.kind:
            case "node_down":
                self.down_nodes.add(event.a)
            case "node_up":
                self.down_nodes.discard(event.a)
            case "link_down":
                self.down_links.add((min(event.a, event.b), max(event.a, event.b)))
            case "link_up":
                self.down_links.discard((min(event.a, event.b), max(event.a, event.b)))
        if self.network is None:
            return
        ends = [(event.a, x) for x in self._adj[event.a]] if event.b is None else [(event.a, event.b)]
        for a, b in ends:
            link = self.topology.link(a, b)
            assert link is not None
            self.network.set_loss(a, b, 1.0 if self.is_cut(a, b) else link.loss)


def schedule_events(clock: VirtualClock, events: list[TopologyEvent],
                    on_event: Callable[[TopologyEvent], None]) -> None:
    """Call ``on_event(event)`` at each event's time (ties in schedule order)."""
    for event in events:
        clock.call_at(event.at, lambda event=event: on_event(event))
