"""Notices: the typed messages agents put on the node bus.

A notice is a frozen dataclass subclassing ``Notice`` with a ``TOPIC`` (dotted,
``area.event``). Subclassing registers it, so the bus can decode it by topic; a
custom agent declares its own notices the same way. Fields must be plain data
(bytes, str, int, float, bool, None, tuples/lists/dicts of those) so they
serialise with msgpack and any language can read them off the bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .errors import LocalProtocolError

_NOTICES: dict[str, type[Notice]] = {}


class Notice:
    """Base of bus messages. Subclasses set ``TOPIC`` and are frozen dataclasses."""

    TOPIC: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        topic = cls.__dict__.get("TOPIC", "")
        if not topic:
            return  # an abstract intermediate class
        if topic in _NOTICES and _NOTICES[topic].__qualname__ != cls.__qualname__:
            raise LocalProtocolError(f"bus topic {topic!r} already used by {_NOTICES[topic].__name__}")
        _NOTICES[topic] = cls


def notice_class(topic: str) -> type[Notice] | None:
    """The notice class registered for ``topic``, or None."""
    return _NOTICES.get(topic)


def notice_topics() -> list[str]:
    return sorted(_NOTICES)


@dataclass(frozen=True, slots=True)
class PeerUp(Notice):
    """A link to a peer finished its signed hello; the peer proved its key."""

    TOPIC: ClassVar[str] = "link.peer_up"
    node_id: bytes
    public_key: bytes
    address: str
    endpoint: str  # the remote's carrier endpoint, e.g. "tcp://127.0.0.1:7001"
    outbound: bool
    name: str = ""


@dataclass(frozen=True, slots=True)
class PeerDown(Notice):
    """A link to a peer is gone (closed, broken, or declared dead by the prober)."""

    TOPIC: ClassVar[str] = "link.peer_down"
    node_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class LinkMeasured(Notice):
    """The prober's current view of one link. ``cost`` is what routing adds up."""

    TOPIC: ClassVar[str] = "prober.link_measured"
    node_id: bytes
    rtt_ms: float
    jitter_ms: float
    loss: float  # fraction of the last window's probes that got no ack, 0..1
    cost: float
    samples: int
    suspect: bool = False  # silent for ``suspect_after``: cost is SUSPECT_COST until an ack


@dataclass(frozen=True, slots=True)
class AgentStateChanged(Notice):
    """The bundle's view of one agent: starting, running, restarting, failed, stopped."""

    TOPIC: ClassVar[str] = "node.agent_state"
    agent: str
    state: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LinkFrameIn(Notice):
    """A control frame from an authenticated peer, for the agent that speaks its type.

    ``rx_time`` is the receiving node's monotonic clock when the frame came off the
    carrier, so a prober on the same node measures RTT without the bus hop.
    Data frames never travel here (DESIGN.md §2: packets never cross the bus).
    """

    TOPIC: ClassVar[str] = "link.rx"
    node_id: bytes
    frame: bytes
    rx_time: float


@dataclass(frozen=True, slots=True)
class LinkFrameOut(Notice):
    """Ask the link agent to send a control frame to a peer.

    ``sent_at`` (the sender's monotonic clock, 0 if unknown) lets the link agent
    subtract the bus hop from a probe's round trip.
    """

    TOPIC: ClassVar[str] = "link.tx"
    node_id: bytes
    frame: bytes
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LinkDead(Notice):
    """The prober saw no answer for too long: the link agent closes the link."""

    TOPIC: ClassVar[str] = "prober.link_dead"
    node_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class LinkListening(Notice):
    """The link agent's bound listen endpoints (real ports, after port 0)."""

    TOPIC: ClassVar[str] = "link.listening"
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LinkCounters(Notice):
    """Link-level drop and refusal counters (malformed frames, bad hellos, ...)."""

    TOPIC: ClassVar[str] = "link.counters"
    counters: dict
