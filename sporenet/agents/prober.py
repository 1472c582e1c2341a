"""The prober agent: drives ``protocols.link.prober.Prober`` from link notices.

Probes go out as ``LinkFrameOut`` and come back as ``LinkFrameIn``; the RTT is
taken at the frame's ``rx_time`` (stamped when it came off the carrier), so the
bus hop between the link agent and this one does not count as link latency.
Options: ``interval``, ``window``, ``dead_after`` (seconds).
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError
from sporenet.protocols.link.messages import Probe, ProbeAck
from sporenet.protocols.notices import LinkDead, LinkFrameIn, LinkFrameOut, PeerDown, PeerUp
from sporenet.protocols.link.prober import (DeclareDead, FrameFromPeer, LinkAdded, LinkRemoved, Prober,
                                       SendToPeer)

from .base import ProtocolAgent


class ProberAgent(ProtocolAgent):
    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkFrameIn.TOPIC)

    def make_protocol(self) -> Prober:
        interval = float(self.options.get("interval", 1.0))
        kw = {}
        if "window" in self.options:
            kw["window"] = int(self.options["window"])
        if "dead_after" in self.options:
            kw["dead_after"] = float(self.options["dead_after"])
        return Prober(rng=random.Random(os.urandom(16)), interval=interval, **kw)

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        return {**super().dispatch_table(), SendToPeer: self._send, DeclareDead: self._dead}

    def on_bus(self, notice: Any) -> None:
        match notice:
            case PeerUp(node_id=nid):
                self.feed(LinkAdded(nid))
            case PeerDown(node_id=nid):
                self.feed(LinkRemoved(nid))
            case LinkFrameIn(node_id=nid, frame=frame, rx_time=rx) if frame[1:2] in _PROBE_TYPES:
                try:
                    msg = wire.decode_frame(frame)
                except DecodeError:
                    return
                now = rx if 0 < rx <= self.clock.now() else self.clock.now()
                self.execute(self.protocol.handle(FrameFromPeer(nid, msg), now))
                self._rearm()

    def _send(self, a: SendToPeer) -> None:
        self.publish(LinkFrameOut(a.node_id, wire.encode_frame(a.msg), self.clock.now()))

    def _dead(self, a: DeclareDead) -> None:
        self.log.info("link_declared_dead", peer=a.node_id[:4].hex(), reason=a.reason)
        self.publish(LinkDead(a.node_id, a.reason))


_PROBE_TYPES = (bytes([Probe.TYPE]), bytes([ProbeAck.TYPE]))
