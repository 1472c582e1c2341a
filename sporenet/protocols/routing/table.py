"""Router inputs, outputs and table entries (see ``routing/router.py`` for the rules).

Events: ``NeighbourUp``, ``NeighbourDown``, ``LinkCostChanged``, ``FrameFromNeighbour``.
Actions: ``SendToNeighbour``, ``Publish(RoutesChanged)``.
Also the feasibility condition (RFC 8966 §3.5.1) and the ``Fib`` snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from .. import wire
from ..base import Action, Event
from ..notices import Notice
from .messages import INFINITY, seqno_newer


@dataclass(frozen=True, slots=True)
class NeighbourUp(Event):
    """An authenticated link to ``node_id`` (from PeerUp)."""

    node_id: bytes
    public_key: bytes


@dataclass(frozen=True, slots=True)
class NeighbourDown(Event):
    node_id: bytes


@dataclass(frozen=True, slots=True)
class LinkCostChanged(Event):
    """The prober's ``LinkMeasured.cost`` for the link to ``node_id``."""

    node_id: bytes
    cost: float


@dataclass(frozen=True, slots=True)
class FrameFromNeighbour(Event):
    """A routing frame (0x10-0x1f) from an authenticated neighbour; others are ignored."""

    node_id: bytes
    msg: wire.Message


@dataclass(frozen=True, slots=True)
class SendToNeighbour(Action):
    node_id: bytes
    msg: wire.Message


@dataclass(frozen=True, slots=True)
class RoutesChanged(Notice):
    """The forwarding table changed; ``version`` is the new ``Router.fib().version``.

    ``added``/``removed``/``changed`` are destination node ids whose next hop appeared,
    went away or moved to another neighbour.
    """

    TOPIC: ClassVar[str] = "router.routes_changed"
    version: int
    reachable: int
    added: tuple[bytes, ...] = ()
    removed: tuple[bytes, ...] = ()
    changed: tuple[bytes, ...] = ()


def feasible(source: tuple[int, int] | None, seqno: int, metric: int) -> bool:
    """RFC 8966 §3.5.1: may an update ``(seqno, metric)`` be used, given the source entry
    ``(seqno, feasibility distance)``? Yes if it is a retraction, if there is no source
    entry, if its seqno is newer (mod 2^16), or if the seqno is equal and the metric is
    strictly below the feasibility distance."""
    if metric == INFINITY or source is None:
        return True
    s_seqno, fd = source
    return seqno_newer(seqno, s_seqno) or (seqno == s_seqno and metric < fd)


def metric_plus(advertised: int, cost: int) -> int:
    """Metric through a link: infinity stays infinity, otherwise capped below it."""
    if advertised >= INFINITY:
        return INFINITY
    return min(advertised + cost, INFINITY - 1)


class Fib(Mapping[bytes, bytes]):
    """Immutable snapshot {destination node id: next-hop node id} with a ``version``.

    ``public_keys`` maps each destination's node id to its Ed25519 public key (the
    route's signed ``origin_pub``): the overlay opens end-to-end sessions with it.
    """

    __slots__ = ("_d", "version", "public_keys")

    def __init__(self, d: dict[bytes, bytes], version: int,
                 public_keys: Mapping[bytes, bytes] | None = None) -> None:
        self._d = dict(d)
        self.version = version
        self.public_keys: Mapping[bytes, bytes] = dict(public_keys or {})

    def __getitem__(self, key: bytes) -> bytes:
        return self._d[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Fib(version={self.version}, routes={len(self._d)})"


@dataclass(slots=True)
class Route:
    """What one neighbour last told us about one origin.

    A router holds one per (destination, neighbour): N x degree of them, the bulk of
    its memory (a 3,000-node network is 15,000 per node), so nothing here is derived
    or duplicated: expiry is scheduled per destination, not per route.
    """

    neighbour: bytes
    seqno: int
    advertised: int  # the neighbour's metric; INFINITY = retracted
    metric: int  # advertised + our link cost
    region: str
    crossed: bool  # as received: some node up to the neighbour left the origin's region
    signature: bytes
    updated: float
    expires: float
    expired: bool = False

    @property
    def usable(self) -> bool:
        return not self.expired and self.metric < INFINITY


@dataclass(slots=True)
class Destination:
    """One origin: its routes by neighbour and what we selected and advertised.

    ``origin`` is the router's dict key object itself, so every other structure that
    names this destination (expiry heap, source table, FIB) shares those bytes.
    ``last_reason`` is a template with ``{}`` for ``last_by`` (a neighbour id), formatted
    only when shown: the router records one per selection change, and formatting each
    would cost time on the hot path and a string per destination.
    """

    origin_pub: bytes
    origin: bytes
    routes: dict[bytes, Route] = field(default_factory=dict)
    selected: bytes | None = None
    advertised: tuple[int, int] | None = None  # (seqno, metric) we last sent
    last_change: float = 0.0
    last_reason: str = ""
    last_by: bytes | None = None
    last_request: float = float("-inf")
    last_requested: int | None = None  # the seqno we asked for then
    heap_at: float | None = None  # when the expiry heap next looks at this destination

    def reason(self) -> str:
        return (self.last_reason.format(self.last_by[:4].hex()) if self.last_by is not None
                else self.last_reason)
