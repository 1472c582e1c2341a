"""Link prober: RTT, jitter and loss of every peer link, and the link cost routing uses.

Driven by ``handle(event, now)`` with ``LinkAdded`` / ``LinkRemoved`` (from PeerUp /
PeerDown) and ``FrameFromPeer`` (Probe / ProbeAck frames the link table delivered),
and by ``on_timer(now)`` at ``next_deadline()``. Emits ``SendToPeer``,
``Publish(LinkMeasured)`` and ``DeclareDead``.

How a link is measured (DESIGN.md §3 "Link probing"):
- One ``Probe(seq)`` every ``interval`` seconds, each gap jittered by +-10% from the
  caller's ``rng`` so that nodes started together do not probe in lockstep. The
  first probe goes out at once, so a new link has a cost within one round trip.
- RTT is smoothed as in RFC 6298 §2 (alpha 1/8, beta 1/4): ``srtt`` is the RTT,
  ``rttvar`` (the mean deviation) is reported as jitter.
- A probe not acked within ``probe_timeout`` counts as lost; its ack, if it comes
  later, is ignored (it would bias the RTT with a stale sample). ``loss`` is the lost
  fraction of the last ``window`` resolved probes.
- A link whose last valid ack is ``dead_after`` seconds old is declared dead, at
  exactly that moment: the bound on detection is ``dead_after`` after the link went
  silent. Then the prober forgets the link; the node closes it (PeerDown follows).
- A link silent for ``suspect_after`` (2.5 intervals: one lost probe leaves a gap of
  about 2) is *suspect*: one ``LinkMeasured(suspect=True)`` with ``SUSPECT_COST`` so
  routing moves to any alternative at once, long before the link is declared dead;
  the next ack restores its cost. After a silent cut traffic is rerouted within 2.5
  intervals instead of 4, while two lost probes in a row (0.04 % at 2 % loss) cost
  only a short detour.
- One ``LinkMeasured`` per resolved probe (ack or timeout), so at most about one
  per interval per link, and none before the first RTT sample.

Defaults: ``interval`` 1 s (one 6-byte probe and ack a second per link is negligible
next to data); ``probe_timeout`` 2 intervals (tolerates RTTs up to 2 s, far above
any terrestrial path); ``dead_after`` 4 intervals after the last ack, i.e. about 3
missed probe intervals: two probes lost in a row (0.25% of probes at 5% loss) leave
a gap of at most 3.3 intervals between acks and must not kill a link, three in a row
at ordinary loss rates are rare; ``window`` 256 probes (about 4 minutes): loss of
a few percent is a property of a path, and a short window cannot see it (with 20
probes, a link losing 2 % shows 0 % two times in three); a burst still shows at once
(10 lost probes in a row are 4 %, cost +40 %).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from .. import wire
from ..base import Action, Event, Publish
from ..errors import LocalProtocolError
from .messages import Probe, ProbeAck
from ..notices import LinkMeasured

ALPHA = 1 / 8  # RFC 6298 §2.3
BETA = 1 / 4
HOP_COST_MS = 1.0
LOSS_PENALTY_MS = 1000.0  # 1 % loss costs like 10 ms of latency
SUSPECT_COST = 60_000.0  # a minute: worse than any real path, still finite
MAX_LOSS = 0.9
_SEQ_MASK = 0xFFFF_FFFF


def link_cost(rtt_ms: float, loss: float) -> float:
    """The cost of one link: latency in ms, plus a fixed price for loss.

    ``(rtt_ms + HOP_COST_MS) / (1 - loss) ** 2 + LOSS_PENALTY_MS * loss``, loss capped
    at 0.9. ETX (De Couto et al.) divides by ``1 - loss`` for the expected
    transmissions, which makes 2 % loss worth 2 % of a link's latency; but TCP
    throughput over a whole path falls as ``1 / (RTT * sqrt(loss))`` (Mathis et al.),
    so what loss costs does not depend on how short the lossy link is. A price
    proportional to the link's own RTT (tried: x1.25 at 2 %) left 59 % of simulated
    flows on a lossy link although a clean path within +20 % existed; the additive
    term (2 % loss, seen by the prober as ~4 % since a probe or its ack may be lost,
    costs ~40 ms) makes 97 % of them avoid it (bench/README.md, "Routing simulator").
    ``HOP_COST_MS`` keeps LAN links (RTT near 0) from being free, so among equally
    fast paths the one with fewer hops wins. Strictly increasing in ``rtt_ms`` and,
    below the cap, in ``loss``.
    """
    lost = min(max(loss, 0.0), MAX_LOSS)
    kept = 1.0 - lost
    return (max(rtt_ms, 0.0) + HOP_COST_MS) / (kept * kept) + LOSS_PENALTY_MS * lost


@dataclass(frozen=True, slots=True)
class LinkAdded(Event):
    node_id: bytes


@dataclass(frozen=True, slots=True)
class LinkRemoved(Event):
    node_id: bytes


@dataclass(frozen=True, slots=True)
class FrameFromPeer(Event):
    """A Probe or ProbeAck from an authenticated peer (other frames are ignored)."""

    node_id: bytes
    msg: wire.Message


@dataclass(frozen=True, slots=True)
class SendToPeer(Action):
    node_id: bytes
    msg: wire.Message


@dataclass(frozen=True, slots=True)
class DeclareDead(Action):
    """The link answered nothing for ``dead_after`` seconds: the node should close it."""

    node_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class LinkStats:
    """A snapshot of one link, times in seconds."""

    node_id: bytes
    srtt: float | None
    rttvar: float
    loss: float
    samples: int
    cost: float | None


@dataclass(slots=True)
class _Link:
    seq: int  # the next probe's sequence number
    next_probe: float
    last_heard: float  # last valid ack, or when the link was added
    outstanding: dict[int, float] = field(default_factory=dict)  # seq -> sent at, in send order
    outcomes: deque[bool] = field(default_factory=deque)  # True = lost
    srtt: float | None = None
    rttvar: float = 0.0
    samples: int = 0
    suspect: bool = False

    def loss(self) -> float:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else 0.0


class Prober:
    """Probes every peer link; see the module docstring."""

    def __init__(self, *, rng: random.Random, interval: float = 1.0, window: int = 256,
                 probe_timeout: float | None = None, dead_after: float | None = None,
                 suspect_after: float | None = None) -> None:
        if interval <= 0 or window < 1:
            raise LocalProtocolError("interval must be > 0 and window >= 1")
        self._rng = rng
        self.interval = interval
        self.window = window
        self.probe_timeout = 2 * interval if probe_timeout is None else probe_timeout
        self.dead_after = 4 * interval if dead_after is None else dead_after
        self.suspect_after = 2.5 * interval if suspect_after is None else suspect_after
        self._links: dict[bytes, _Link] = {}
        # next_deadline() is asked after every event a node handles (routing frames
        # included: 9 % of a 1,000-node simulation), but only handle() and on_timer()
        # change what it depends on: it is cached until one of them runs.
        self._deadline: float | None = None
        self._deadline_stale = True
        self._counters = {"probes_sent": 0, "acks_sent": 0, "late_acks": 0, "stray_acks": 0,
                         "declared_dead": 0, "suspected": 0}

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def links(self) -> list[bytes]:
        return list(self._links)

    def stats(self, node_id: bytes) -> LinkStats | None:
        link = self._links.get(node_id)
        if link is None:
            return None
        cost = None if link.srtt is None else link_cost(link.srtt * 1000, link.loss())
        return LinkStats(node_id, link.srtt, link.rttvar, link.loss(), link.samples, cost)

    def handle(self, event: Event, now: float) -> list[Action]:
        match event:
            case FrameFromPeer(node_id=nid, msg=Probe(seq=seq)):
                # Answer at once, even for a link not (yet) added: the ack is stateless.
                self._counters["acks_sent"] += 1
                return [SendToPeer(nid, ProbeAck(seq))]
        self._deadline_stale = True  # anything else may change the links
        match event:
            case FrameFromPeer(node_id=nid, msg=ProbeAck(seq=seq)):
                return self._on_ack(nid, seq, now)
            case FrameFromPeer():
                return []
            case LinkAdded(node_id=nid):
                if nid in self._links:
                    return []
                link = _Link(seq=self._rng.getrandbits(32), next_probe=now, last_heard=now)
                link.outcomes = deque(maxlen=self.window)
                self._links[nid] = link
                return self._probe(nid, link, now)
            case LinkRemoved(node_id=nid):
                self._links.pop(nid, None)
                return []
        raise LocalProtocolError(f"Prober cannot handle {type(event).__name__}")

    def next_deadline(self) -> float | None:
        if not self._deadline_stale:
            return self._deadline
        best: float | None = None
        for link in self._links.values():
            t = min(link.next_probe, link.last_heard + self.dead_after)
            if not link.suspect and link.srtt is not None:
                t = min(t, link.last_heard + self.suspect_after)
            if link.outstanding:
                t = min(t, next(iter(link.outstanding.values())) + self.probe_timeout)
            best = t if best is None or t < best else best
        self._deadline, self._deadline_stale = best, False
        return best

    def on_timer(self, now: float) -> list[Action]:
        self._deadline_stale = True
        actions: list[Action] = []
        for nid, link in list(self._links.items()):
            if link.last_heard + self.dead_after <= now:  # same sum as next_deadline
                del self._links[nid]
                self._counters["declared_dead"] += 1
                actions.append(DeclareDead(nid, f"no probe ack for {self.dead_after:g} s"))
                continue
            became_suspect = (not link.suspect and link.srtt is not None
                              and link.last_heard + self.suspect_after <= now)
            if became_suspect:
                link.suspect = True
                self._counters["suspected"] += 1
            if (self._expire(link, now) and link.srtt is not None) or became_suspect:
                actions.append(Publish(self._measured(nid, link)))
            if link.next_probe <= now:
                actions += self._probe(nid, link, now)
        return actions

    def _probe(self, nid: bytes, link: _Link, now: float) -> list[Action]:
        seq = link.seq
        link.seq = (seq + 1) & _SEQ_MASK
        link.outstanding[seq] = now
        link.next_probe = now + self.interval * self._rng.uniform(0.9, 1.1)
        self._counters["probes_sent"] += 1
        return [SendToPeer(nid, Probe(seq))]

    def _expire(self, link: _Link, now: float) -> bool:
        """Count probes past their timeout as lost; True if any was."""
        expired = [s for s, sent in link.outstanding.items() if sent + self.probe_timeout <= now]
        for seq in expired:
            del link.outstanding[seq]
            link.outcomes.append(True)
        return bool(expired)

    def _on_ack(self, nid: bytes, seq: int, now: float) -> list[Action]:
        link = self._links.get(nid)
        if link is None:
            self._counters["stray_acks"] += 1
            return []
        sent = link.outstanding.get(seq)
        if sent is None or sent + self.probe_timeout <= now:
            self._counters["late_acks"] += 1  # expired (or about to be): stays counted lost
            return []
        del link.outstanding[seq]
        self._sample(link, now - sent)
        link.outcomes.append(False)
        link.last_heard, link.suspect = now, False
        return [Publish(self._measured(nid, link))]

    @staticmethod
    def _sample(link: _Link, rtt: float) -> None:
        """RFC 6298 §2.2-2.3: the first sample seeds srtt; later ones move it by 1/8."""
        if link.srtt is None:
            link.srtt, link.rttvar = rtt, rtt / 2
        else:
            link.rttvar = (1 - BETA) * link.rttvar + BETA * abs(link.srtt - rtt)
            link.srtt = (1 - ALPHA) * link.srtt + ALPHA * rtt
        link.samples += 1

    def _measured(self, nid: bytes, link: _Link) -> LinkMeasured:
        assert link.srtt is not None
        rtt_ms, loss = link.srtt * 1000, link.loss()
        cost = SUSPECT_COST if link.suspect else link_cost(rtt_ms, loss)
        return LinkMeasured(nid, rtt_ms, link.rttvar * 1000, loss, cost, link.samples,
                            link.suspect)
