"""The overlay agent: forwards routed packets and runs the user's messages and pings.

Drives ``protocols.overlay.layer.Overlay``. Routed frames (0x30-0x3f) arrive as
``link.table.rx`` and leave as ``LinkFrameOut``; the FIB is read from the router's
``FibHolder`` snapshot whenever routes change. Local users reach it through the
API agent, which ``ask``s it from the HTTP thread (never from an actor).
Options: ``identity``, ``fib_holder``, ``topics`` ({topic: [sender, ...] or None};
senders are canonical strings from ``sporenet.config.parse_senders``) and
``accept_unknown_topics`` (bool): the node config's ``[topics]`` and ``[messages]``,
applied with ``MessageEndpoint.allow`` whenever the protocol is made. ``SetTopic``
changes a rule at runtime (until the agent restarts: then the config's rules hold
again); ``GetTopics`` reports the rules and what they refused.

Path traces (``StartTrace``, ``sporenet/protocols/overlay/trace.py``): the forwarder appends, to every
trace request it sends on, the link figures of the last ``LinkMeasured`` for the next
hop and this node's route metric to the destination. Metrics are not in the FIB
snapshot, so the agent keeps its own copy: option ``request_routes`` (a callable
returning a pykka future of the router's ``GetRoutes`` answer, asked without
blocking) is called on ``RoutesChanged`` / ``LinkMeasured`` at most every
``METRICS_REFRESH`` seconds and the answer is picked up when it is ready; a transit
record's metric is therefore up to a few seconds old (None until the first answer,
or without the option).

End-to-end sessions (``sporenet/protocols/sessions/manager.py``, ``docs/messages.md`` "Encryption"): the
composite's ``SessionManager`` seals message chunks and acks; option ``sessions``
({"pq": bool, "pq_required": bool}, default PQ on) is the config's ``[sessions]``.
It gets ``random.SystemRandom()`` (it makes keys) and ``wall_offset`` (Unix time minus
the agent's monotonic clock, taken once: handshake stamps are Unix time). Peer keys
come from the FIB snapshot's ``public_keys`` and from ``PeerUp``; ``GetSessions``
returns the session rows (``sporenet sessions``), the counters and the handshake
guard's report (``SessionManager.guard_report``: under load, queue, DH operations,
initiations by outcome). Option ``screen`` (the ``InitiationScreen`` whose ``drop``
the link carrier runs on its I/O thread) adds the msg1s dropped there, before the bus
(``bad_mac1_screened``, ``rate_limited_screened``; the guard's own ``bad_mac1`` counts
those that got past it, e.g. on a link without the screen).

Data path: option ``plane`` (a ``transports.datapath.DataPlane``) gives each session
keypair a data keypair (``DataKeypair.from_session``) and publishes the data keys
snapshot there whenever the keyring changes; the data path's ``OpenDataSession`` and
``ConfirmDataKey`` (told from its threads) start a handshake and confirm a responder's
keys.

Contract: option ``reach`` (``(src_key, dst_key) -> bool``, the contract's
``may_reach``) makes the session manager refuse handshakes from initiators that may
not reach us and the overlay refuse sends to keys we may not reach; on
``ContractChanged`` the sessions of revoked peers are removed (``Overlay.revoke``).
"""

from __future__ import annotations

import ipaddress
import os
import random
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable

import pykka

from sporenet.protocols import wire
from sporenet.protocols.datapath.keys import DataKeypair
from sporenet.protocols.datapath.tables import data_keys
from sporenet.protocols.errors import DecodeError, ProtocolError
from sporenet.protocols.overlay.forwarding import RoutedReceived, SendToNeighbour, prefix_of_node
from sporenet.protocols.overlay.forwarding import Forwarder
from sporenet.protocols.overlay.messaging import (Address, DestinationUnreachable, MessageDelivered,
                                          MessageEndpoint, MessageFailed, MessageReceived,
                                          PingFailed, PingResult)
from sporenet.protocols.identity import address_of_node_id
from sporenet.protocols.notices import LinkFrameIn, LinkFrameOut, LinkMeasured, PeerDown, PeerUp
from sporenet.protocols.overlay.layer import Overlay
from sporenet.protocols.routed import PREFIX_SIZE, TraceRecord
from sporenet.protocols.routing.table import RoutesChanged
from sporenet.protocols.sessions.events import SendFailed
from sporenet.protocols.sessions.manager import SessionManager
from sporenet.protocols.overlay.trace import TraceFailed, TraceResult
from sporenet.agents.contract import ContractChanged

from .base import ProtocolAgent

_OVERLAY_TYPES = range(0x30, 0x40)
INBOX_SIZE = 1000
RESULTS_KEPT = 10_000      # states of sent messages and pings kept for GetResult (oldest go)
MAX_REFUSED_TOPICS = 256   # per-topic refusal counters kept (others count in the total only)
METRICS_REFRESH = 2.0      # s between asks for the router's metrics (for trace records)


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
class StartTrace:
    """Trace the path to ``to``; ``done`` (if given) is set once the result is known."""

    to: str
    timeout: float = 2.0
    done: threading.Event | None = None


@dataclass(frozen=True)
class GetResult:
    """The state of a message, ping or trace this node started: pending, delivered, ok,
    failed. A finished trace: ``{"state": "ok", "rtt_ms", "truncated", "hops": [...]}``,
    hops as ``trace_hops`` renders them."""

    kind: str  # "message", "ping" or "trace"
    ident: int


@dataclass(frozen=True)
class GetSessions:
    """``ask`` it: ``{"sessions": [SessionRow.as_dict(), ...], "counters": {...},
    "forwarding": {...}, "guard": {...}, "now": float}``: the rows of ``sporenet sessions``,
    the session manager's and the overlay's drop counters, the routed packets this node
    originated, delivered, forwarded or dropped (by reason), the handshake flood guard's state and
    the agent's clock (``time.monotonic``, the scale of ``guard["under_load_since"]``)."""


@dataclass(frozen=True)
class OpenDataSession:
    """From the data path: IP packets wait for a session with ``key`` (or it is due a rekey)."""

    key: bytes


@dataclass(frozen=True)
class ConfirmDataKey:
    """From the data path: an IP frame under our unconfirmed keypair ``index`` opened."""

    index: int


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
    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkFrameIn.TOPIC, RoutesChanged.TOPIC,
              LinkMeasured.TOPIC, ContractChanged.TOPIC)

    def make_protocol(self) -> Overlay:
        self._neighbours: dict[bytes, bytes] = {}
        self._neighbour_keys: dict[bytes, bytes] = {}  # node id -> Ed25519 key
        self._links: dict[bytes, tuple[float, float, float]] = {}  # node id -> rtt, loss, cost
        self._metrics: dict[bytes, int] = {}  # destination /64 -> our selected metric
        self._metrics_future: Any = None
        self._metrics_asked = float("-inf")
        self._waiters: dict[int, threading.Event] = {}
        self._inbox: deque[dict] = deque(maxlen=INBOX_SIZE)
        self._results: OrderedDict[tuple[str, int], dict] = OrderedDict()
        identity = self.options["identity"]
        endpoint = _TopicEndpoint(identity, rng=random.Random(os.urandom(16)),
                                  default_accept=bool(self.options.get("accept_unknown_topics",
                                                                       True)))
        self._rules: dict[str, tuple[str, ...] | None] = {}
        for topic, senders in dict(self.options.get("topics") or {}).items():
            self._allow(endpoint, topic, None if senders is None else tuple(senders))
        forwarder = Forwarder(identity, link_stats=self._links.get,
                              route_metric=lambda dst: self._metrics.get(dst[:PREFIX_SIZE]))
        return Overlay(forwarder, endpoint, sessions=self._session_manager(identity),
                       reach=self.options.get("reach"), allowed=self.options.get("allowed"))

    def _session_manager(self, identity: Any) -> SessionManager:
        opts = dict(self.options.get("sessions") or {})
        self._plane = self.options.get("plane")
        self._keys_seen = -1
        self._prefix_cache: dict[bytes, bytes] = {}
        return SessionManager(identity, rng=random.SystemRandom(),
                              data_keys=None if self._plane is None else DataKeypair.from_session,
                              accept=self.options.get("session_accept"),
                              pq=bool(opts.get("pq", True)),
                              pq_required=bool(opts.get("pq_required", False)),
                              wall_offset=time.time() - self.clock.now())

    def execute(self, actions: list) -> None:
        super().execute(actions)
        plane = getattr(self, "_plane", None)
        ov = self.protocol
        if plane is None or ov is None:
            return
        ring = ov.sessions.keyring
        if ring.version != self._keys_seen:
            self._keys_seen = ring.version
            if len(self._prefix_cache) > 4 * len(ring) + 64:
                self._prefix_cache.clear()
            plane.publish_keys(data_keys(ring.slots(), ring.version, self._prefix_cache))

    def on_message(self, message: Any) -> None:
        ov = self.protocol
        match message:
            case OpenDataSession(key=key):
                self._refresh_fib()   # the msg1 goes out by the latest routes
                self.execute(ov.open_session(key, self.clock.now()))
                self._rearm()
            case ConfirmDataKey(index=index):
                self.execute(ov.confirm_data_key(index, self.clock.now()))
                self._rearm()
            case _:
                super().on_message(message)

    def _allow(self, endpoint: MessageEndpoint, topic: str,
               senders: tuple[str, ...] | None) -> None:
        endpoint.allow(topic, None if senders is None else [_sender(s) for s in senders])
        self._rules[topic] = senders

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        return {**super().dispatch_table(), SendToNeighbour: self._send,
                MessageReceived: self._received, MessageDelivered: self._delivered,
                MessageFailed: self._failed, PingResult: self._pong, PingFailed: self._ping_failed,
                TraceResult: self._traced, TraceFailed: self._trace_failed,
                DestinationUnreachable: lambda a: None, SendFailed: self._session_failed}

    def on_bus(self, notice: Any) -> None:
        ov: Overlay = self.protocol
        match notice:
            case PeerUp(node_id=nid, public_key=pub):
                self._neighbours[nid] = prefix_of_node(nid)
                self._neighbour_keys[nid] = pub
                ov.forwarder.set_neighbours(dict(self._neighbours))
                ov.set_neighbour_keys(self._neighbour_keys.values())
            case PeerDown(node_id=nid):
                self._neighbours.pop(nid, None)
                self._neighbour_keys.pop(nid, None)
                self._links.pop(nid, None)
                ov.forwarder.set_neighbours(dict(self._neighbours))
                ov.set_neighbour_keys(self._neighbour_keys.values())
            case ContractChanged(version=version):
                self.log.info("contract_recheck", version=version)
                self.execute(ov.revoke(self.clock.now()))
                self._rearm()
            case RoutesChanged():
                self._refresh_fib()
                self._refresh_metrics()
            case LinkMeasured(node_id=nid, rtt_ms=rtt, loss=loss, cost=cost):
                self._links[nid] = (rtt, loss, cost)
                self._refresh_metrics()
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

    def _refresh_metrics(self) -> None:
        """Take the router's answer if it came; ask again when due (never blocks)."""
        fut = self._metrics_future
        now = self.clock.now()
        if fut is not None:
            try:
                rows = fut.get(timeout=0)["routes"]
            except pykka.Timeout:
                if now - self._metrics_asked < 5 * METRICS_REFRESH:
                    return
                rows = None  # never answered (the router restarted): ask again
            except Exception as e:  # the router restarted or failed: ask again later
                self.log.debug("route_metrics_unavailable", error=repr(e))
                rows = None
            self._metrics_future = None
            if rows is not None:
                self._metrics = {ipaddress.IPv6Address(r["address"]).packed[:PREFIX_SIZE]:
                                 r["metric"] for r in rows if r.get("selected")}
        ask = self.options.get("request_routes")
        if ask is None or now - self._metrics_asked < METRICS_REFRESH:
            return
        self._metrics_asked = now
        try:
            self._metrics_future = ask()
        except Exception as e:
            self.log.debug("route_metrics_unavailable", error=repr(e))

    def on_receive(self, message: Any) -> Any:
        match message:
            case SendMessage() | StartPing() | StartTrace():
                return self._start(message)
            case GetResult(kind=kind, ident=ident):
                return self._results.get((kind, ident), {"state": "unknown"})
            case SetTopic():
                return self._set_topic(message)
            case GetTopics():
                return self._topics()
            case GetSessions():
                ov: Overlay = self.protocol
                now = self.clock.now()
                counters = dict(ov.sessions.counters + ov.counters)
                guard = ov.sessions.guard_report(now)
                screen = self.options.get("screen")
                if screen is not None:
                    guard["initiations"].update(bad_mac1_screened=screen.dropped,
                                                rate_limited_screened=screen.rate_limited)
                    for key, n in (("init_bad_mac1_screened", screen.dropped),
                                   ("init_rate_screened", screen.rate_limited)):
                        if n:
                            counters[key] = n
                return {"sessions": [r.as_dict() for r in ov.sessions.sessions(now)],
                        "counters": counters, "forwarding": dict(ov.forwarder.counters),
                        "guard": guard, "now": now}
            case TakeMessages(topic=topic, limit=limit):
                taken = [m for m in self._inbox if topic is None or m["topic"] == topic][:limit]
                for m in taken:
                    self._inbox.remove(m)
                return taken
        return super().on_receive(message)

    def _start(self, cmd: SendMessage | StartPing | StartTrace) -> dict:
        """Runs in the actor; protocol refusals become an error for the API caller."""
        self._refresh_fib()
        now = self.clock.now()
        try:
            if isinstance(cmd, SendMessage):
                ident, actions = self.protocol.send(cmd.to, cmd.topic, cmd.data, now,
                                                    deadline=cmd.deadline, reply_to=cmd.reply_to)
                key = ("message", ident)
            elif isinstance(cmd, StartTrace):
                self._refresh_metrics()
                ident, actions = self.protocol.trace(cmd.to, now, cmd.timeout)
                key = ("trace", ident)
                if cmd.done is not None:
                    self._waiters[ident] = cmd.done
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

    def _session_failed(self, a: SendFailed) -> None:
        """No session could be made; the messages it held fail at their deadlines."""
        self.log.info("session_failed", peer=a.peer[:4].hex(), dropped=a.dropped,
                      reason=a.reason)

    def _traced(self, a: TraceResult) -> None:
        self._result(("trace", a.trace_id), {
            "state": "ok", "rtt_ms": round(a.rtt * 1000, 3), "truncated": a.truncated,
            "hops": trace_hops(a.records, self.options["identity"].node_id)})
        self._wake(a.trace_id)

    def _trace_failed(self, a: TraceFailed) -> None:
        self._result(("trace", a.trace_id), {"state": "failed", "reason": a.reason})
        self._wake(a.trace_id)

    def _wake(self, trace_id: int) -> None:
        done = self._waiters.pop(trace_id, None)
        if done is not None:
            done.set()


def trace_hops(records: tuple[TraceRecord, ...], origin: bytes) -> list[dict]:
    """Trace records as JSON rows: hop number, the forwarding node (its id when the
    previous record's next hop, or the origin, owns the recorded address), the next
    hop, the link's rtt (ms), loss (fraction), cost and the node's route metric."""
    rows, prev = [], origin
    for k, r in enumerate(records):
        node = prev if prev is not None and address_of_node_id(prev).packed == r.address else None
        rows.append({"hop": k + 1, "node": None if node is None else node.hex(),
                     "address": str(ipaddress.IPv6Address(r.address)),
                     "next_hop": r.next_hop.hex(),
                     "rtt_ms": r.rtt_ms, "loss": r.loss, "cost": r.cost,
                     "metric": r.route_metric})
        prev = r.next_hop
    return rows


def _sender(text: str) -> ipaddress.IPv6Address | ipaddress.IPv6Network:
    return ipaddress.IPv6Network(text) if "/" in text else ipaddress.IPv6Address(text)
