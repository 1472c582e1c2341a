"""The snapshots the data path reads: routes, keys and reach, each immutable.

The router, the overlay agent (which owns the sessions) and the contract holder each
build one of these from their own state and publish it by swapping one reference
(docs/datapath.md "Snapshots, not calls"). The data path's threads read them without
asking anyone. Building one is per change (a new FIB version, a handshake), never
per packet, so the builders may walk whole tables.

Keys are a node's /64 prefix: the first 8 bytes of its overlay address, the part of a
packet's destination the data path looks at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..identity import address_of
from ..routed import PREFIX_SIZE, prefix_of_node


def prefix_of_key(public_key: bytes) -> bytes:
    return address_of(public_key).packed[:PREFIX_SIZE]


@dataclass(frozen=True)
class DataRoutes:
    """From the router's FIB: where each destination /64 goes next, and whose it is."""

    next_hop: Mapping[bytes, bytes] = field(default_factory=dict)  # dst /64 -> next-hop node id
    key_of: Mapping[bytes, bytes] = field(default_factory=dict)    # dst /64 -> its Ed25519 key
    version: int = -1


def data_routes(fib: Mapping[bytes, bytes], public_keys: Mapping[bytes, bytes],
                version: int) -> DataRoutes:
    """From a ``routing.table.Fib`` ({dst node id: next hop} and its ``public_keys``)."""
    hops, keys = {}, {}
    for dst, hop in fib.items():
        p = prefix_of_node(dst)
        hops[p] = hop
        key = public_keys.get(dst)
        if key is not None:
            keys[p] = key
    return DataRoutes(hops, keys, version)


@dataclass(frozen=True)
class DataLinks:
    """From the link table: the authenticated links, both ways."""

    conn_of: Mapping[bytes, int] = field(default_factory=dict)   # neighbour node id -> conn id
    node_of: Mapping[int, bytes] = field(default_factory=dict)   # conn id -> neighbour node id


def data_links(peers: Iterable[tuple[bytes, int]]) -> DataLinks:
    """From ``(node_id, conn_id)`` of every authenticated link."""
    conn_of = dict(peers)
    return DataLinks(conn_of, {c: n for n, c in conn_of.items()})


@dataclass(frozen=True)
class DataKeys:
    """From the session keyring: who we can seal to, and what we can open.

    ``by_prefix[dst] = (current, next)``: the sealer uses ``next`` once it is confirmed
    (a frame under it opened here: the peer has it), else ``current``. ``by_index`` holds
    every live keypair by our receiver index (previous, current and next), and
    ``prefix_of`` each peer's /64 (a delivered packet's source must be in it).
    """

    by_prefix: Mapping[bytes, tuple] = field(default_factory=dict)
    by_index: Mapping[int, object] = field(default_factory=dict)
    prefix_of: Mapping[bytes, bytes] = field(default_factory=dict)
    version: int = -1


def data_keys(slots: Iterable[tuple[bytes, object, object, object]], version: int,
              prefix_cache: dict[bytes, bytes] | None = None) -> DataKeys:
    """From ``KeyRing.slots()``: ``(peer, previous, current, next)`` session keypairs,
    each carrying its data keypair in ``.data``. ``prefix_cache`` (peer key -> /64)
    saves a hash per peer per rebuild."""
    cache = prefix_cache if prefix_cache is not None else {}
    by_prefix: dict[bytes, tuple] = {}
    by_index: dict[int, object] = {}
    prefix_of: dict[bytes, bytes] = {}
    for peer, prev, cur, nxt in slots:
        p = cache.get(peer)
        if p is None:
            p = cache[peer] = prefix_of_key(peer)
        prefix_of[peer] = p
        for kp in (prev, cur, nxt):
            if kp is not None and kp.data is not None:
                by_index[kp.local_index] = kp.data
        current = cur.data if cur is not None else None
        upcoming = nxt.data if nxt is not None else None
        if current is not None or upcoming is not None:
            by_prefix[p] = (current, upcoming)
    return DataKeys(by_prefix, by_index, prefix_of, version)


@dataclass(frozen=True)
class DataReach:
    """From the contract: which /64s we may send IP packets to (``out``: we may open a
    flow to them), accept them from (``into``), and which are members at all (replies
    of a flow a member opened may go back to it, ``flows.ReplyFlows``). ``None``: no
    contract, an open network."""

    out: frozenset[bytes] | None = None
    into: frozenset[bytes] | None = None
    members: frozenset[bytes] | None = None
    version: int = -1

    def may_send(self, dst_prefix: bytes) -> bool:
        return self.out is None or dst_prefix in self.out

    def may_accept(self, src_prefix: bytes) -> bool:
        return self.into is None or src_prefix in self.into


def data_reach(members: Iterable[bytes], me: bytes,
               may_reach: Callable[[bytes, bytes], bool], version: int) -> DataReach:
    """For each member key: may we reach it, may it reach us (the contract's rules)."""
    out, into, all_ = set(), set(), set()
    for key in members:
        if key == me:
            continue
        p = prefix_of_key(key)
        all_.add(p)
        if may_reach(me, key):
            out.add(p)
        if may_reach(key, me):
            into.add(p)
    return DataReach(frozenset(out), frozenset(into), frozenset(all_), version)
