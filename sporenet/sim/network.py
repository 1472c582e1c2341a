"""A seeded model of the underlay: nodes, directed links with latency, jitter and loss.

Driven by ``deliver(src, dst, data)`` and ``close(src, dst)`` from ``SimNode``s;
arrivals run on the ``VirtualClock``. Invariants:
- Every random draw comes from the model's own ``rng``, in event order: same seed,
  same run.
- Each direction of a link is FIFO, like the stream carriers (TCP) it stands for:
  jitter delays a frame but never lets it overtake the one sent before it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from sporenet.protocols.errors import LocalProtocolError

from .clock import VirtualClock

FrameHandler = Callable[[int, bytes], None]
CloseHandler = Callable[[int], None]


@dataclass(slots=True)
class LinkModel:
    """One direction of a link. ``latency`` one way, in seconds."""

    latency: float
    loss: float = 0.0
    jitter: float = 0.0  # extra delay, uniform in [0, jitter * latency]
    last_arrival: float = 0.0


@dataclass(slots=True)
class NetworkStats:
    frames_sent: int = 0
    frames_dropped: int = 0
    bytes_sent: int = 0


class NetworkModel:
    def __init__(self, clock: VirtualClock, rng: random.Random) -> None:
        self.clock = clock
        self._rng = rng
        self._nodes: dict[int, tuple[FrameHandler, CloseHandler]] = {}
        self._links: dict[tuple[int, int], LinkModel] = {}
        self.stats = NetworkStats()

    def add_node(self, node: int, on_frame: FrameHandler, on_closed: CloseHandler) -> None:
        if node in self._nodes:
            raise LocalProtocolError(f"node {node} added twice")
        self._nodes[node] = (on_frame, on_closed)

    def add_link(self, a: int, b: int, latency_ab: float, latency_ba: float | None = None, *,
                 loss: float = 0.0, jitter: float = 0.0) -> None:
        back = latency_ab if latency_ba is None else latency_ba
        self._links[(a, b)] = LinkModel(latency_ab, loss, jitter)
        self._links[(b, a)] = LinkModel(back, loss, jitter)

    def link(self, a: int, b: int) -> LinkModel | None:
        return self._links.get((a, b))

    def set_loss(self, a: int, b: int, loss: float) -> None:
        self._links[(a, b)].loss = self._links[(b, a)].loss = loss

    def round_trip(self, a: int, b: int) -> float:
        """The model's round-trip latency without jitter."""
        return self._links[(a, b)].latency + self._links[(b, a)].latency

    def deliver(self, src: int, dst: int, data: bytes) -> bool:
        """Schedule ``data``'s arrival at ``dst``; False if the model dropped it."""
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(data)
        arrival = self._arrival(src, dst, lossy=True)
        if arrival is None:
            self.stats.frames_dropped += 1
            return False
        on_frame = self._nodes[dst][0]
        self.clock.call_at(arrival, lambda: on_frame(src, data))
        return True

    def close(self, src: int, dst: int) -> None:
        """``src`` closed its carrier to ``dst``: ``dst`` learns it after the latency."""
        arrival = self._arrival(src, dst, lossy=False)
        if arrival is not None:
            on_closed = self._nodes[dst][1]
            self.clock.call_at(arrival, lambda: on_closed(src))

    def _arrival(self, src: int, dst: int, *, lossy: bool) -> float | None:
        link = self._links.get((src, dst))
        if link is None or dst not in self._nodes:
            return None
        if link.loss >= 1.0:  # a partition: not even a carrier close gets through
            return None
        if lossy and link.loss > 0.0 and self._rng.random() < link.loss:
            return None
        delay = link.latency
        if link.jitter > 0.0:
            delay += link.jitter * link.latency * self._rng.random()
        link.last_arrival = max(self.clock.now + delay, link.last_arrival)  # FIFO
        return link.last_arrival


Edge = tuple[int, int, float, float]  # a, b, latency a->b, latency b->a (seconds)


def random_topology(n: int, avg_degree: float, rng: random.Random, *,
                    min_latency: float = 0.005, max_latency: float = 0.150) -> list[Edge]:
    """A connected random graph of ``n`` nodes with about ``avg_degree`` links per node.

    A random tree first (node i links to a random earlier node), so the graph is
    connected; then random extra links up to ``n * avg_degree / 2``. Each link gets
    a base one-way latency uniform in [min, max], each direction within +-10% of it
    (underlay paths are often a little asymmetric).
    """
    if n < 1:
        return []
    pairs: list[tuple[int, int]] = [(rng.randrange(i), i) for i in range(1, n)]
    seen = set(pairs)
    target = min(round(n * avg_degree / 2), n * (n - 1) // 2)
    while len(pairs) < target:
        a, b = rng.randrange(n), rng.randrange(n)
        key = (min(a, b), max(a, b))
        if a != b and key not in seen:
            seen.add(key)
            pairs.append(key)
    edges = []
    for a, b in pairs:
        base = rng.uniform(min_latency, max_latency)
        edges.append((a, b, base * rng.uniform(0.9, 1.1), base * rng.uniform(0.9, 1.1)))
    return edges


def is_connected(n: int, edges: list[Edge]) -> bool:
    adjacent: dict[int, list[int]] = {i: [] for i in range(n)}
    for a, b, _, _ in edges:
        adjacent[a].append(b)
        adjacent[b].append(a)
    seen, stack = {0}, [0]
    while stack:
        for nxt in adjacent[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return len(seen) == n or n == 0
