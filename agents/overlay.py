"""The overlay agent: forwards routed packets and runs the user's messages and pings.

Drives ``protocols.overlay.Overlay``. Routed frames (0x30-0x3f) arrive as
``link.rx`` and leave as ``LinkFrameOut``; the FIB is read from the router's
``FibHolder`` snapshot whenever routes change. Local users reach it through the
API agent, which ``ask``s it from the HTTP thread (never from an actor).
Options: ``identity``, ``fib_holder``.
"""

from __future__ import annotations

import os
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, ProtocolError
from sporenet.protocols.forwarding import RoutedReceived, SendToNeighbour, prefix_of_node
from sporenet.protocols.messaging import (DestinationUnreachable, MessageDelivered, MessageFailed,
                                          MessageReceived, PingFailed, PingResult)
from sporenet.protocols.notices import LinkFrameIn, LinkFrameOut, PeerDown, PeerUp
from sporenet.protocols.overlay import Overlay
from sporenet.protocols.route_table import RoutesChanged

from .base import ProtocolAgent

_OVERLAY_TYPES = range(0x30, 0x40)
INBOX_SIZE = 1000


@dataclass(frozen=True)
class SendMessage:
    to: str
    topic: str
    data: bytes
    deadline: float = 30.0


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


class OverlayAgent(ProtocolAgent):
    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkFrameIn.TOPIC, RoutesChanged.TOPIC)

    def make_protocol(self) -> Overlay:
        self._neighbours: dict[bytes, bytes] = {}
        self._inbox: deque[dict] = deque(maxlen=INBOX_SIZE)
        self._results: dict[tuple[str, int], dict] = {}
        return Overlay.for_identity(self.options["identity"], rng=random.Random(os.urandom(16)))

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
                                                    deadline=cmd.deadline)
                key = ("message", ident)
            else:
                ident, actions = self.protocol.ping(cmd.to, now, cmd.timeout)
                key = ("ping", ident)
        except (ProtocolError, ValueError) as e:
            return {"error": str(e)}
        self._results[key] = {"state": "pending", "started": now}
        self.execute(actions)
        self._rearm()
        return {"id": ident}

    def _send(self, a: SendToNeighbour) -> None:
        self.publish(LinkFrameOut(a.node_id, wire.encode_frame(a.packet)))

    def _received(self, a: MessageReceived) -> None:
        self._inbox.append({"from": str(a.src_address), "topic": a.topic, "msg_id": a.msg_id,
                            "reply_to": a.reply_to, "data": a.data})

    def _delivered(self, a: MessageDelivered) -> None:
        self._results[("message", a.msg_id)] = {"state": "delivered"}

    def _failed(self, a: MessageFailed) -> None:
        self._results[("message", a.msg_id)] = {"state": "failed", "reason": a.reason}

    def _pong(self, a: PingResult) -> None:
        self._results[("ping", a.ping_id)] = {"state": "ok", "rtt_ms": round(a.rtt * 1000, 3),
                                              "hops": a.hops}

    def _ping_failed(self, a: PingFailed) -> None:
        self._results[("ping", a.ping_id)] = {"state": "failed", "reason": a.reason}
