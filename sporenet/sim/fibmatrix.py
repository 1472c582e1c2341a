"""Every FIB at once as a next-hop matrix, and every forwarding chain followed in numpy.

Why: following N^2 chains hop by hop in Python costs seconds per sample at 1,000
nodes. Here a sample is ``NH[u, d]`` (u's next hop toward d, -1 if none) and all
chains are followed together by pointer doubling: after step k, ``P[u, d]`` is where
u's chain toward d is after 2^k hops, with sums (latency), ORs (flags) and minima
(cycle ids) carried along. ceil(log2(n + 1)) steps reach every chain's end.

Conventions: destinations are absorbing (``P[d, d] = d``); a missing route, a hop
over a link that is not up, or a hop from a node that is down goes to a sink row
``n``. After the last step a chain ended at ``d`` (reached), at the sink (dead end)
or on a cycle (a forwarding loop). Destinations are processed in column blocks so
the working arrays stay small at 3,000 nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

BLOCK = 512  # destination columns per pass: 3,001 x 512 x 8 bytes = 12 MB per array


class FibCapture:
    """Builds ``NH`` from routers' ``fib()`` snapshots; a node's row is rebuilt only when
    its snapshot changed (FIBs are immutable and versioned), so idle samples are cheap."""

    def __init__(self, node_ids: Sequence[bytes]) -> None:
        self.n = len(node_ids)
        self.index = {nid: i for i, nid in enumerate(node_ids)}
        self._cache: dict[int, tuple[object, int, np.ndarray]] = {}

    def add(self, node_id: bytes) -> None:
        """A node that joined later (its index is the next one)."""
        self.index[node_id] = self.n
        self.n += 1
        self._cache.clear()

    def row(self, i: int, fib) -> np.ndarray:
        cached = self._cache.get(i)
        version = getattr(fib, "version", None)
        if cached is not None and cached[0] is fib and cached[1] == version:
            return cached[2]
        row = np.full(self.n, -1, dtype=np.int32)
        get = self.index.get
        if len(fib):
            pairs = np.array([(get(d, -1), get(h, -1)) for d, h in fib.items()], dtype=np.int32)
            pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]
            row[pairs[:, 0]] = pairs[:, 1]
        self._cache[i] = (fib, version, row)
        return row

    def matrix(self, fibs: Iterable) -> np.ndarray:
        """``NH`` (n, n) int32 from one FIB per node, in index order."""
        return np.stack([self.row(i, fib) for i, fib in enumerate(fibs)])


class LinkLookup:
    """The links that are up, as sorted keys ``u * n + v`` for vectorised lookups."""

    def __init__(self, n: int, arcs: Iterable[tuple[int, int, float]]) -> None:
        arcs = list(arcs)
        self.n = n
        keys = np.array([u * n + v for u, v, _ in arcs], dtype=np.int64)
        lat = np.array([w for _, _, w in arcs], dtype=np.float64)
        order = np.argsort(keys)
        self.keys, self.lat = keys[order], lat[order]

    def find(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(is an up link, its latency) for each hop u -> v."""
        key = u.astype(np.int64) * self.n + v
        if not len(self.keys):
            return np.zeros(key.shape, bool), np.zeros(key.shape)
        pos = np.clip(np.searchsorted(self.keys, key), 0, len(self.keys) - 1)
        ok = self.keys[pos] == key
        return ok, np.where(ok, self.lat[pos], 0.0)


@dataclass(slots=True)
class ChainResult:
    """Per (src, dst) of the destination columns ``dsts``; arrays are (n, len(dsts))."""

    dsts: np.ndarray
    reached: np.ndarray  # bool: the chain ends at dst
    looped: np.ndarray  # bool: the chain ends on a cycle
    latency: np.ndarray  # float: sum of one-way latencies (valid where reached)
    flagged: np.ndarray | None  # bool: some hop had flag set (valid where reached)
    loops: list[tuple[int, int]]  # (dst, smallest node on the cycle), one per distinct loop


def follow(nh: np.ndarray, links: LinkLookup, *, down: Iterable[int] = (),
           hop_flag: np.ndarray | None = None, dsts: Sequence[int] | None = None) -> ChainResult:
    """Follow every chain of ``nh`` toward ``dsts`` (default all).

    ``hop_flag`` (n, n) bool marks hops u -> v to watch (a lossy link, a hop out of the
    region): ``flagged`` says whether a chain crossed one.
    """
    n = nh.shape[0]
    dsts = np.arange(n) if dsts is None else np.asarray(dsts, dtype=np.int64)
    dead = np.zeros(n + 1, bool)
    dead[list(down)] = True
    parts = [_follow_block(nh, links, dead, hop_flag, dsts[i:i + BLOCK])
             for i in range(0, max(len(dsts), 1), BLOCK) if len(dsts[i:i + BLOCK])]
    if not parts:
        empty = np.zeros((n, 0))
        return ChainResult(dsts, empty.astype(bool), empty.astype(bool), empty, None, [])
    cat = lambda k: np.concatenate([getattr(p, k) for p in parts], axis=1)  # noqa: E731
    return ChainResult(dsts, cat("reached"), cat("looped"), cat("latency"),
                       None if hop_flag is None else cat("flagged"),
                       [lp for p in parts for lp in p.loops])


def _follow_block(nh: np.ndarray, links: LinkLookup, dead: np.ndarray,
                  hop_flag: np.ndarray | None, dsts: np.ndarray) -> ChainResult:
    n = nh.shape[0]
    sink = n
    cols = np.arange(len(dsts))
    src = np.arange(n)[:, None]
    hop = nh[:, dsts].astype(np.int64)  # (n, m)
    ok, lat = links.find(np.broadcast_to(src, hop.shape), np.where(hop < 0, 0, hop))
    ok &= hop >= 0
    ok &= ~dead[:n][:, None] & ~dead[np.where(hop < 0, sink, hop)]
    p = np.where(ok, hop, sink)
    p[dsts, cols] = dsts  # the destination is absorbing (its own "hop" is itself)
    w = np.where(ok, lat, 0.0)
    w[dsts, cols] = 0.0
    f = None
    if hop_flag is not None:
        f = ok & hop_flag[np.broadcast_to(src, hop.shape), np.where(ok, hop, 0)]
        f[dsts, cols] = False
        f = np.vstack([f, np.zeros((1, len(dsts)), bool)])
    p = np.vstack([p, np.full((1, len(dsts)), sink)])
    w = np.vstack([w, np.zeros((1, len(dsts)))])
    low = np.broadcast_to(np.arange(n + 1)[:, None], p.shape).copy()
    for _ in range(max(1, int(np.ceil(np.log2(n + 1))))):
        w = w + np.take_along_axis(w, p, axis=0)
        if f is not None:
            f = f | np.take_along_axis(f, p, axis=0)
        low = np.minimum(low, np.take_along_axis(low, p, axis=0))
        p = np.take_along_axis(p, p, axis=0)
    end = p[:n]
    reached = end == dsts[None, :]
    looped = ~reached & (end != sink)
    loops: set[tuple[int, int]] = set()
    if looped.any():
        # ``low`` at a node on the cycle spans 2^steps >= n hops: the whole cycle.
        rows, cs = np.nonzero(looped)
        ids = low[end[rows, cs], cs]
        loops = {(int(dsts[c]), int(i)) for c, i in zip(cs, ids)}
    return ChainResult(dsts, reached, looped, w[:n], None if f is None else f[:n], sorted(loops))
