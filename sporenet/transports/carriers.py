"""Several carriers behind one ``carrier.Carrier``: the link agent's view of them.

A node links over ``tcp://`` and ``udp://`` endpoints at once; the link table above
knows connections only by id, and ids are unique across carriers (``new_conn_id``),
so this class routes each call by the endpoint's scheme (``listen``, ``dial``) or by
the connection id (everything else), which it learns from the ``Connected`` events it
passes through. A carrier is made on first use, so a node that names no ``udp://``
endpoint runs no UDP thread.

``send_datagram`` goes to carriers that have it (UDP) and returns False for the
rest, so a caller can fall back to ``send``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from sporenet.protocols.errors import LocalProtocolError

from .carrier import (
    Carrier,
    CarrierStats,
    Connected,
    DialFailed,
    Disconnected,
    EventCallback,
    split_endpoint,
)
from .errors import TransportClosed

CarrierFactory = Callable[[EventCallback], Carrier]


class Carriers:
    """``factories`` maps a scheme (``"tcp"``) to a function making its carrier from an
    event callback. Thread-safe like every carrier."""

    scheme = "any"

    def __init__(self, on_event: EventCallback, factories: dict[str, CarrierFactory]) -> None:
        if not factories:
            raise LocalProtocolError("Carriers needs at least one carrier factory")
        self._on_event = on_event
        self._factories = dict(factories)
        self._lock = threading.Lock()
        self._made: dict[str, Carrier] = {}
        self._owner: dict[int, Carrier] = {}  # conn id -> its carrier
        self._stopped = False
        self.max_frame = 0  # the smallest of the carriers made so far

    def carrier(self, scheme: str) -> Carrier | None:
        """The carrier for ``scheme``, made now if it was not yet; None if unknown."""
        with self._lock:
            if self._stopped:
                raise TransportClosed("carriers are shut down")
            made = self._made.get(scheme)
            if made is None and scheme in self._factories:
                made = self._made[scheme] = self._factories[scheme](self._events_of(scheme))
                self.max_frame = min(c.max_frame for c in self._made.values())
            return made

    def _events_of(self, scheme: str) -> EventCallback:
        def on_event(event: object) -> None:  # on that carrier's thread
            if isinstance(event, Connected):
                with self._lock:
                    self._owner[event.conn_id] = self._made[scheme]
            elif isinstance(event, Disconnected):
                with self._lock:
                    self._owner.pop(event.conn_id, None)
            self._on_event(event)
        return on_event

    def _scheme_of(self, endpoint: str) -> str:
        try:
            return split_endpoint(endpoint)[0]
        except ValueError:
            return ""

    def listen(self, endpoint: str) -> str:
        scheme = self._scheme_of(endpoint)
        carrier = self.carrier(scheme)
        if carrier is None:
            raise LocalProtocolError(f"endpoint {endpoint!r}: no carrier for {scheme or 'it'}; "
                                     f"use one of {', '.join(s + '://' for s in self._factories)}")
        return carrier.listen(endpoint)

    def dial(self, endpoint: str) -> None:
        carrier = self.carrier(self._scheme_of(endpoint))
        if carrier is None:
            self._on_event(DialFailed(endpoint, "no carrier for this endpoint's scheme "
                                      f"(have {', '.join(s + '://' for s in self._factories)})"))
            return
        carrier.dial(endpoint)

    def _of(self, conn_id: int) -> Carrier | None:
        # every send of the data path comes here: a dict read is atomic, so no lock
        # (writers hold it, against each other)
        return self._owner.get(conn_id)

    def send(self, conn_id: int, frame: bytes) -> bool:
        carrier = self._of(conn_id)
        if carrier is None:
            raise TransportClosed(f"no open connection {conn_id}")
        return carrier.send(conn_id, frame)

    def send_bulk(self, conn_id: int, frame: bytes) -> bool:
        """IP data: chunked datagrams on a carrier that has them (UDP), else ``send``."""
        carrier = self._of(conn_id)
        if carrier is None:
            raise TransportClosed(f"no open connection {conn_id}")
        bulk = getattr(carrier, "send_bulk", None)
        return bulk(conn_id, frame) if bulk is not None else carrier.send(conn_id, frame)

    def send_datagram(self, conn_id: int, frame: bytes) -> bool:
        carrier = self._of(conn_id)
        send = getattr(carrier, "send_datagram", None)
        return bool(send is not None and send(conn_id, frame))

    def close(self, conn_id: int, reason: str = "closed") -> None:
        carrier = self._of(conn_id)
        if carrier is not None:
            carrier.close(conn_id, reason)

    def pause_reading(self, conn_id: int) -> None:
        carrier = self._of(conn_id)
        if carrier is not None:
            carrier.pause_reading(conn_id)

    def resume_reading(self, conn_id: int) -> None:
        carrier = self._of(conn_id)
        if carrier is not None:
            carrier.resume_reading(conn_id)

    def confirm(self, conn_id: int) -> None:
        carrier = self._of(conn_id)
        if carrier is not None:
            carrier.confirm(conn_id)

    def counters(self) -> dict[str, int]:
        """The datagram carriers' own counts (repairs, losses, ...), by scheme:
        ``{"udp_chunks_repaired": 3, ...}``; non-zero ones only."""
        with self._lock:
            made = list(self._made.items())
        out: dict[str, int] = {}
        for scheme, carrier in made:
            own = getattr(carrier, "counters", None)
            if own is not None:
                out.update((f"{scheme}_{k}", v) for k, v in own().items() if v)
        return out

    def stats(self) -> CarrierStats:
        with self._lock:
            made = list(self._made.values())
        conns: dict = {}
        totals: Counter[str] = Counter()
        for carrier in made:
            st = carrier.stats()
            conns.update(st.conns)
            for name in CarrierStats.__dataclass_fields__:
                if name != "conns":
                    totals[name] += getattr(st, name)
        return CarrierStats(conns=conns, **totals)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            made = list(self._made.values())
        for carrier in made:
            carrier.shutdown()
