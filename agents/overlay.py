"""The overlay agent: forwards routed packets and runs the user's messages and pings.

Drives ``protocols.overlay.Overlay``. Routed frames (0x30-0x3f) arrive as
``link.rx`` and leave as ``LinkFrameOut``; the FIB is read from the router's
``FibHolder`` snapshot whenever routes change. Local users reach it through the
API agent, which ``ask``s it from the HTTP thread (never from an actor).
Options: ``identity``, ``fib_holder``, ``topics`` ({topic: [sender, ...] or None};
senders are canonical strings from ``sporenet.config.parse_senders``) and
``accept_unknown_topics`` (bool): the node config's ``[topics]`` and ``[messages]``,
applied with ``MessageEndpoint.allow`` whenever the protocol is made. ``SetTopic``
changes a rule at runtime (until the agent restarts: then the config's rules hold
again); ``GetTopics`` reports the rules and what they refused.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, ProtocolError
from sporenet.protocols.forwarding import RoutedReceived, SendToNeighbour, prefix_of_node
from sporenet.protocols.forwarding import Forwarder
from sporenet.protocols.messaging import (Address, DestinationUnreachable, MessageDelivered,
                                          MessageEndpoint, MessageFailed, MessageReceived,
                                          PingFailed, PingResult)
from sporenet.protocols.notices import LinkFrameIn, LinkFrameOut, PeerDown, PeerUp
from sporenet.protocols.overlay import Overlay
from sporenet.protocols.route_table import RoutesChanged

from .base import ProtocolAgent

_OVERLAY_TYPES = range(0x30, 0x40)
INBOX_SIZE = 1000
RESULTS_KEPT = 10_000      # states of sent messages and pings kept for GetResult (oldest go)
MAX_REFUSED_TOPICS = 256   # per-topic refusal counters kept (others count in the total only)


@dataclass(frozen=True)
class SendMessage:
    to: str
    topic: str
    data: bytes
    deadline: float = 30.0
    reply_to: int = 0       # the msg_id of a received message this answers; 0: none


@dataclass(frozen=True)
class StartPing:
    to: str
    timeout: float = 5.0


@dataclass(frozen=True)
class GetResult:
    """The state of a message or ping this node started: pending, delivered, ok, failed."""

    kind: str  # "message" or "ping"
    ident: int


@dataclass(frozen=True)
class TakeMessages:
    topic: str | None = None
    limit: int = 100


@dataclass(frozen=True)
class SetTopic:
    """Accept ``topic`` only from ``senders`` (canonical strings; ``()`` = nobody,
    None = anyone), or with ``reset`` drop its rule (it follows the default again)."""

    topic: str
    senders: tuple[str, ...] | None = None
    reset: bool = False


@dataclass(frozen=True)
class GetTopics:
    """``ask`` it: ``{"accept_unknown_topics", "refused_chunks", "topics": [{"topic",
    "rule", "senders", "refused_chunks", "last_refused_from"}]}``; a row without a
    ``rule`` is a topic that only appears because the default refused it."""


class _TopicEndpoint(MessageEndpoint):
    """The protocol's endpoint, counting refused chunks per topic too.

    ``MessageEndpoint`` counts refusals in total only (``counters["refused_sender"]``);
    its ``_accepts`` is the one place that sees the topic and the sender, so this
    wraps it. At most ``MAX_REFUSED_TOPICS`` topics are tracked: a sender cannot grow
    the table by inventing topics."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.refused: dict[str, list] = {}   # topic -> [chunks refused, last sender]

    def _accepts(self, topic: str, src: Address) -> bool:
        ok = super()._accepts(topic, src)
        if not ok:
            row = self.refused.get(topic)
            if row is None and len(self.refused) < MAX_REFUSED_TOPICS:
                row = self.refused[topic] = [0, ""]
            if row is not None:
                row[0] += 1
                row[1] = str(src)
        return ok


class OverlayAgent(ProtocolAgent):
    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkFrameIn.TOPIC, RoutesChanged.TOPIC)

    def make_protocol(self) -> Overlay:
        self._neighbours: dict[bytes, bytes] = {}
        self._inbox: deque[dict] = deque(maxlen=INBOX_SIZE)
        self._results: OrderedDict[tuple[str, int], dict] = OrderedDict()
        identity = self.options["identity"]
        endpoint = _TopicEndpoint(identity, rng=random.Random(os.urandom(16)),
                                  default_accept=bool(self.options.get("accept_unknown_topics",
                                                                       True)))
        self._rules: dict[str, tuple[str, ...] | None] = {}
        for topic, senders in dict(self.options.get("topics") or {}).items():
            self._allow(endpoint, topic, None if senders is None else tuple(senders))
        return Overlay(Forwarder(identity), endpoint)

    def _allow(self, endpoint: MessageEndpoint, topic: str,
               senders: tuple[str, ...] | None) -> None:
        endpoint.allow(topic, None if senders is None else [_sender(s) for s in senders])
        self._rules[topic] = senders

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        return {**super().dispatch_table(), SendToNeighbour: self._send,
                MessageReceived: self._received, MessageDelivered: self._delivered,
                MessageFailed: self._failed, PingResult: self._pong, PingFailed: self._ping_failed,
                DestinationUnreachable: lambda a: None}

    def on_bus(self, notice: Any) -> None:
        ov: Overlay = self.protocol
        match notice:
            case PeerUp(node_id=nid):
                self._neighbours[nid] = prefix_of_node(nid)
                ov.forwarder.set_neighbours(dict(self._neighbours))
            case PeerDown(node_id=nid):
                self._neighbours.pop(nid, None)
                ov.forwarder.set_neighbours(dict(self._neighbours))
            case RoutesChanged():
                self._refresh_fib()
            case LinkFrameIn(node_id=nid, frame=frame) if len(frame) > 1 and frame[1] in _OVERLAY_TYPES:
                try:
                    packet = wire.decode_frame(frame)
                except DecodeError:
                    ov.forwarder.counters["malformed"] += 1
                    return
                self._refresh_fib()
                self.feed(RoutedReceived(nid, packet))

    def _refresh_fib(self) -> None:
        fib = self.options["fib_holder"].value
        if fib is not None:
            self.protocol.set_fib(fib, getattr(fib, "version", None))

    def on_receive(self, message: Any) -> Any:
        match message:
            case SendMessage() | StartPing():
                return self._start(message)
            case GetResult(kind=kind, ident=ident):
                return self._results.get((kind, ident), {"state": "unknown"})
            case SetTopic():
                return self._set_topic(message)
            case GetTopics():
                return self._topics()
            case TakeMessages(topic=topic, limit=limit):
                taken = [m for m in self._inbox if topic is None or m["topic"] == topic][:limit]
                for m in taken:
                    self._inbox.remove(m)
                return taken
        return super().on_receive(message)

    def _start(self, cmd: SendMessage | StartPing) -> dict:
        """Runs in the actor; protocol refusals become an error for the API caller."""
        self._refresh_fib()
        now = self.clock.now()
        try:
            if isinstance(cmd, SendMessage):
                ident, actions = self.protocol.send(cmd.to, cmd.topic, cmd.data, now,
                                                    deadline=cmd.deadline, reply_to=cmd.reply_to)
                key = ("message", ident)
            else:
                ident, actions = self.protocol.ping(cmd.to, now, cmd.timeout)
                key = ("ping", ident)
        except (ProtocolError, ValueError) as e:
            return {"error": str(e)}
        self._result(key, {"state": "pending", "started": now})
        self.execute(actions)
        self._rearm()
        return {"id": ident}

    def _set_topic(self, cmd: SetTopic) -> dict:
        endpoint: _TopicEndpoint = self.protocol.endpoint
        try:
            if cmd.reset:
                endpoint.forget_topic(cmd.topic)
                self._rules.pop(cmd.topic, None)
            else:
                self._allow(endpoint, cmd.topic, cmd.senders)
        except (ProtocolError, ValueError) as e:
            return {"error": str(e)}
        self.log.info("topic_rule", topic=cmd.topic, reset=cmd.reset,
                      senders="anyone" if cmd.senders is None else list(cmd.senders))
        return self._topics()

    def _topics(self) -> dict:
        endpoint: _TopicEndpoint = self.protocol.endpoint
        rows = []
        for topic in sorted(set(self._rules) | set(endpoint.refused)):
            refused, last = endpoint.refused.get(topic, (0, ""))
            ruled = topic in self._rules
            senders = self._rules[topic] if ruled else (None if endpoint.default_accept else ())
            rows.append({"topic": topic, "rule": ruled,
                         "senders": None if senders is None else list(senders),
                         "refused_chunks": refused, "last_refused_from": last or None})
        return {"accept_unknown_topics": endpoint.default_accept,
                "refused_chunks": endpoint.counters["refused_sender"], "topics": rows}

    def _result(self, key: tuple[str, int], state: dict) -> None:
        self._results[key] = state
        self._results.move_to_end(key)
        while len(self._results) > RESULTS_KEPT:
            self._results.popitem(last=False)

    def _send(self, a: SendToNeighbour) -> None:
        self.publish(LinkFrameOut(a.node_id, wire.encode_frame(a.packet)))

    def _received(self, a: MessageReceived) -> None:
        self._inbox.append({"from": str(a.src_address), "topic": a.topic, "msg_id": a.msg_id,
                            "reply_to": a.reply_to, "data": a.data})

    def _delivered(self, a: MessageDelivered) -> None:
        self._result(("message", a.msg_id), {"state": "delivered"})

    def _failed(self, a: MessageFailed) -> None:
        self._result(("message", a.msg_id), {"state": "failed", "reason": a.reason})

    def _pong(self, a: PingResult) -> None:
        self._result(("ping", a.ping_id), {"state": "ok", "rtt_ms": round(a.rtt * 1000, 3),
                                           "hops": a.hops})

    def _ping_failed(self, a: PingFailed) -> None:
        self._result(("ping", a.ping_id), {"state": "failed", "reason": a.reason})


def _sender(text: str) -> ipaddress.IPv6Address | ipaddress.IPv6Network:
    return ipaddress.IPv6Network(text) if "/" in text else ipaddress.IPv6Address(text)
