"""Where a node enforces its network contract: one named point per place (docs/contracts.md).

Every point reads the same snapshot, the ``ContractHolder``'s current version (one
reference, swapped by the contract agent when it adopts a version), so a new version
is in force at every point of the node the moment it is adopted. Each point is a
callable handed to the agent that owns the place (``Enforcement.link()`` to the link
agent, ...); asking for it marks the point active, and every refusal is counted on
it. ``Enforcement.snapshot()`` is what ``GET /v1/status`` and ``sporenet status``
show: the version in force and, per point, whether it is active, what it refuses and
how many times it did.

| point | asked | refuses |
|---|---|---|
| ``link`` | after a peer's hello proof verifies | a key that is not a current member |
| ``route`` | on every route update | a route whose origin is not a current member |
| ``session`` | on every handshake initiation to us | an initiator that may not reach us |
| ``send`` | before our secured send to a peer | a destination we may not reach |
| ``tun_out`` | each packet leaving the TUN | a destination we may not open flows to (replies pass) |
| ``tun_in`` | each packet before the TUN | a source that may not reach us |

The TUN points run on the data path's threads over its ``DataReach`` snapshot (built by
the tun agent from the same holder); their refusals are the engine's counters
``refused_out`` and ``refused_in``, read here through ``counts``.

Each point is called from the one thread of the agent it was handed to, so its counter
has one writer; readers (the API thread) see a plain int.
"""

from __future__ import annotations

from typing import Any, Callable

from .contract import ContractHolder

POINTS = {
    "link": "a peer key that is not a current member (its link is closed)",
    "route": "a route update whose origin is not a current member (not installed)",
    "session": "a handshake from an initiator the rules do not let reach us",
    "send": "a secured send to a destination the rules do not let us reach",
    "tun_out": "an IP packet from our TUN to a destination the rules do not let us reach "
               "(replies of its own flows pass)",
    "tun_in": "an IP packet for our TUN from a source the rules do not let reach us",
}


class EnforcementPoint:
    """One place of enforcement: a check that counts what it refuses."""

    __slots__ = ("name", "refuses", "refused", "_check")

    def __init__(self, name: str, check: Callable[..., bool]) -> None:
        self.name, self.refuses, self.refused = name, POINTS[name], 0
        self._check = check

    def __call__(self, *args: Any) -> bool:
        ok = self._check(*args)
        if not ok:
            self.refused += 1
        return ok

    def row(self) -> dict[str, Any]:
        return {"active": True, "refuses": self.refuses, "refused": self.refused}


class Enforcement:
    """The node's enforcement points over one ``ContractHolder``."""

    def __init__(self, holder: ContractHolder, public_key: bytes) -> None:
        self.holder, self._me = holder, public_key
        self._points: dict[str, EnforcementPoint] = {}
        self._tun_counts: Callable[[], dict[str, int]] | None = None

    def _point(self, name: str, check: Callable[..., bool]) -> EnforcementPoint:
        point = self._points[name] = EnforcementPoint(name, check)
        return point

    def link(self) -> EnforcementPoint:
        """``(public_key, now) -> bool`` for ``LinkTable(admit=...)``."""
        return self._point("link", self.holder.admits)

    def route(self) -> EnforcementPoint:
        """``(origin_pub, now) -> bool`` for ``Router(admit=...)``."""
        return self._point("route", self.holder.admits)

    def session(self) -> EnforcementPoint:
        """``(initiator_key) -> bool`` for ``SessionManager(accept=...)``."""
        me = self._me
        return self._point("session", lambda key: self.holder.may_reach(key, me))

    def send(self) -> EnforcementPoint:
        """``(src_key, dst_key) -> bool`` for ``Overlay(reach=...)``."""
        return self._point("send", self.holder.may_reach)

    def tun(self, counts: Callable[[], dict[str, int]]) -> None:
        """The two TUN points; ``counts()`` gives the data path's counters."""
        self._tun_counts = counts

    def snapshot(self) -> dict[str, Any]:
        c = self.holder.value
        points = {name: (self._points[name].row() if name in self._points else
                         {"active": False, "refuses": refuses, "refused": 0})
                  for name, refuses in POINTS.items()}
        if self._tun_counts is not None:
            got = self._tun_counts()
            for name, key in (("tun_out", "refused_out"), ("tun_in", "refused_in")):
                points[name] = {"active": True, "refuses": POINTS[name],
                                "refused": int(got.get(key, 0))}
        return {"network": None if c is None else c.network,
                "version": None if c is None else c.version, "points": points}
