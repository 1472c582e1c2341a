"""Operator views of the router: ``routes()`` rows and ``explain(dst)``.

A mixin of ``Router`` (it reads the router's table); feeds ``sporenet explain``.
``explain`` names, for every alternative to the selected route, the rule that ruled
it out: "expired", "retracted", "unmeasured" (the prober has not yet reported the
link), "infeasible", "locality", "hysteresis" (better metric, but not by the
hysteresis margin) or "worse metric".
"""

from __future__ import annotations

from typing import Any

from ..identity import address_of
from .table import Destination, Route
from .messages import INFINITY


class RouteViews:
    _dests: dict[bytes, Destination]
    _measured: set[bytes]
    _now: float

    def _feasible(self, origin: bytes, r: Route) -> bool:
        raise NotImplementedError

    def _tier(self, r: Route) -> int:
        raise NotImplementedError

    def routes(self, now: float | None = None) -> list[dict[str, Any]]:
        now = self._now if now is None else now
        rows = []
        for origin, dest in self._dests.items():
            for nb, r in dest.routes.items():
                rows.append({"destination": origin.hex(),
                             "address": str(address_of(dest.origin_pub)),
                             "next_hop": nb.hex(), "metric": r.metric, "seqno": r.seqno,
                             "age": now - r.updated, "region": r.region, "crossed": r.crossed,
                             "feasible": self._feasible(origin, r),
                             "selected": dest.selected == nb})
        return rows

    def explain(self, dst: bytes) -> dict[str, Any]:
        dest = self._dests.get(dst)
        out: dict[str, Any] = {"destination": dst.hex(), "selected": None, "alternatives": [],
                               "last_change": None, "reason": None}
        if dest is None:
            out["reason"] = "no route"
            return out
        out["last_change"], out["reason"] = dest.last_change, dest.reason()
        sel = dest.routes.get(dest.selected) if dest.selected else None
        if sel is not None:
            out["selected"] = self._row(sel)
            # Kept although infeasible: its metric rose past our feasibility distance
            # (router.py); it is left only for a feasible route clearly better.
            out["selected"]["feasible"] = self._feasible(dst, sel)
        for nb, r in dest.routes.items():
            if r is sel:
                continue
            row = self._row(r)
            row["ruled_out"] = self._ruled_out(dst, r, sel)
            out["alternatives"].append(row)
        return out

    def _row(self, r: Route) -> dict[str, Any]:
        return {"next_hop": r.neighbour.hex(), "metric": r.metric, "seqno": r.seqno,
                "region": r.region, "crossed": r.crossed}

    def _ruled_out(self, origin: bytes, r: Route, sel: Route | None) -> str:
        if r.expired:
            return "expired"
        if r.metric >= INFINITY:
            return "retracted"
        if r.neighbour not in self._measured:
            return "unmeasured"
        if not self._feasible(origin, r):
            return "infeasible"
        if sel is not None and self._tier(r) > self._tier(sel):
            return "locality"
        if sel is not None and r.metric < sel.metric:
            return "hysteresis"
        return "worse metric"
