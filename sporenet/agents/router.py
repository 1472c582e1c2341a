"""The router agent: drives ``protocols.routing.router.Router`` from link notices.

Neighbours come from ``PeerUp``/``PeerDown``, link costs from the prober's
``LinkMeasured``, routing frames (0x10-0x1f) from ``link.table.rx``; updates and requests
leave as ``LinkFrameOut``. The forwarding snapshot is ``Router.fib()``, an immutable
mapping swapped by reference, which the data path will read without asking.
Options: ``identity``, ``region``, ``update_interval`` (seconds), ``admit`` (optional
``(public_key, now) -> bool``, the network contract: updates of other origins are
dropped; on ``ContractChanged`` destinations no longer admitted are purged), ``plane``
(optional ``transports.datapath.DataPlane``: each new FIB version is also published
there as the data path's ``DataRoutes``, keyed by destination /64).
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable

from sporenet.protocols import wire
from sporenet.protocols.datapath.tables import data_routes
from sporenet.protocols.errors import DecodeError
from sporenet.protocols.notices import LinkFrameIn, LinkFrameOut, LinkMeasured, PeerDown, PeerUp
from sporenet.protocols.routing.table import (FrameFromNeighbour, LinkCostChanged, NeighbourDown,
                                            NeighbourUp, SendToNeighbour)
from sporenet.protocols.routing.router import Router
from sporenet.agents.contract import ContractChanged

from .base import ProtocolAgent

_ROUTING_TYPES = range(0x10, 0x20)  # docs/development.md, frame type allocation


class FibHolder:
    """The forwarding snapshot, published by swapping one reference (DESIGN.md §2):
    the router agent writes ``value``, readers take it without asking anyone."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = None


class GetRoutes:
    """``ask`` it (from a non-actor thread): ``{"routes": [...], "seqno": n, "counters": {...}}``."""


class ExplainRoute:
    """``ask`` it: ``Router.explain`` for one destination node id."""

    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id


class RouterAgent(ProtocolAgent):
    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkMeasured.TOPIC, LinkFrameIn.TOPIC,
              ContractChanged.TOPIC)

    def make_protocol(self) -> Router:
        kw: dict[str, Any] = {}
        if self.options.get("admit") is not None:
            kw["admit"] = self.options["admit"]
        if "update_interval" in self.options:
            kw["update_interval"] = float(self.options["update_interval"])
        return Router(self.options["identity"], rng=random.Random(os.urandom(16)),
                      now=self.clock.now(), region=self.options.get("region", ""), **kw)

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        return {**super().dispatch_table(), SendToNeighbour: self._send}

    def execute(self, actions: list) -> None:
        # The snapshots first, then the actions: the overlay reads the holder when our
        # RoutesChanged reaches it, so a notice sent before the swap would leave it on the
        # old table until some later notice (seen on a loaded host as a handshake with
        # "no_route" to a peer the router had a route to).
        if self.protocol is not None:
            fib = self.protocol.fib()
            holder = self.options.get("fib_holder")
            if holder is not None:
                holder.value = fib
            plane = self.options.get("plane")
            # by identity: Router.fib() returns a new object only after a change, and a
            # restarted router counts versions from 0 again
            if plane is not None and getattr(self, "_fib_seen", None) is not fib:
                self._fib_seen = fib
                plane.routes.value = data_routes(fib, fib.public_keys, fib.version)
        super().execute(actions)

    def on_receive(self, message: Any) -> Any:
        match message:
            case GetRoutes():
                r: Router = self.protocol
                return {"routes": r.routes(self.clock.now()), "seqno": r.seqno,
                        "counters": dict(r.counters)}
            case ExplainRoute(node_id=nid):
                return self.protocol.explain(nid)
        return super().on_receive(message)

    def on_bus(self, notice: Any) -> None:
        match notice:
            case PeerUp(node_id=nid, public_key=pub):
                self.feed(NeighbourUp(nid, pub))
            case PeerDown(node_id=nid):
                self.feed(NeighbourDown(nid))
            case LinkMeasured(node_id=nid, cost=cost):
                self.feed(LinkCostChanged(nid, cost))
            case ContractChanged():
                self.execute(self.protocol.purge(self.clock.now()))
                self._rearm()
            case LinkFrameIn(node_id=nid, frame=frame) if len(frame) > 1 and frame[1] in _ROUTING_TYPES:
                try:
                    msg = wire.decode_frame(frame)
                except DecodeError as e:
                    self.log.warning("bad_routing_frame", peer=nid[:4].hex(), error=str(e))
                    return
                self.feed(FrameFromNeighbour(nid, msg))

    def _send(self, a: SendToNeighbour) -> None:
        self.publish(LinkFrameOut(a.node_id, wire.encode_frame(a.msg)))
