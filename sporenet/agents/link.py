"""The link agent: owns the link carrier and drives the ``LinkManager``.

Carrier events arrive from the carrier's I/O thread as ``tell``s; frames for other
agents (probes, later routing) leave on the bus as ``LinkFrameIn``, and their
answers come back as ``LinkFrameOut``. Options: ``identity`` (an ``Identity``),
``listen`` (endpoints), ``peers`` (endpoints), ``name``, ``admit`` (optional
``(public_key, now) -> bool``, the network contract: a peer whose proven key it
refuses is disconnected; on ``ContractChanged`` every link is checked again),
``rx_filter`` (optional ``(conn, frame, now) -> bool``, run by the carrier's I/O
thread on every inbound frame; True drops it before the actor: the session guard's
``InitiationScreen``, the data path's IP frames), ``plane`` (optional
``transports.datapath.DataPlane``: the agent hands it its carrier and, after every
change, the authenticated links as a ``DataLinks`` snapshot).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from sporenet.agents.contract import ContractChanged
from sporenet.protocols import wire
from sporenet.protocols.base import Publish
from sporenet.protocols.datapath.tables import data_links
from sporenet.protocols.errors import DecodeError
from sporenet.protocols.link.dialer import Dial
from sporenet.protocols.link.manager import DialFailed, LinkManager
from sporenet.protocols.link.messages import CloseCode, Probe, ProbeAck
from sporenet.protocols.link.table import (
    BytesReceived,
    CloseConnection,
    ConnectionAuthenticated,
    ConnectionLost,
    ConnectionOpened,
    DeliverFrame,
    SendFrame,
)
from sporenet.protocols.notices import (
    AgentStateChanged,
    LinkCounters,
    LinkDead,
    LinkFrameIn,
    LinkFrameOut,
    LinkListening,
    PeerUp,
)
from sporenet.transports import carrier as ev
from sporenet.transports.carriers import Carriers
from sporenet.transports.errors import TransportClosed
from sporenet.transports.tcp import TcpCarrier
from sporenet.transports.udp import UdpCarrier

from .base import ProtocolAgent

_MAX_PROBE_OFFSETS = 4096
_KNOWN_CODES = frozenset(int(c) for c in CloseCode)


@dataclass(frozen=True, slots=True)
class _Stamped:
    """A carrier event with the monotonic time the carrier thread handed it over."""

    at: float
    event: Any


class GetLinkInfo:
    """``ask`` it: the bound listen endpoints, peers and counters."""


class LinkAgent(ProtocolAgent):
    TOPICS = (LinkFrameOut.TOPIC, LinkDead.TOPIC, AgentStateChanged.TOPIC, ContractChanged.TOPIC)

    def make_protocol(self) -> LinkManager:
        identity = self.options["identity"]
        ref, clock = self.actor_ref, self.clock
        def to_actor(event: Any) -> None:  # on the carrier's I/O thread
            try:
                ref.tell(_Stamped(clock.now(), event))
            except pykka.ActorDeadError:
                pass  # stopping: the carrier's last events have nobody to go to

        rx_filter = self.options.get("rx_filter")
        self._carrier = Carriers(to_actor, {
            "tcp": lambda cb: TcpCarrier(cb, name="tcp", rx_filter=rx_filter),
            "udp": lambda cb: UdpCarrier(cb, name="udp", rx_filter=rx_filter)})
        self._rx_time = 0.0
        self._counters_at = 0.0   # when _carrier_counters last looked
        self._carrier_seen: tuple | None = None
        # (peer, probe seq) -> how long the probe waited on the bus before it left.
        self._probe_delays: dict[tuple[bytes, int], float] = {}
        self._listening = tuple(self._carrier.listen(ep) for ep in self.options.get("listen", ()))
        self._plane = self.options.get("plane")
        self._links_seen: dict | None = None
        if self._plane is not None:
            self._plane.carrier = self._carrier
        return LinkManager(identity, peers=list(self.options.get("peers", ())),
                           rng=random.Random(os.urandom(16)), now=self.clock.now(),
                           listen_endpoint=self._listening[0] if self._listening else "",
                           name=self.options.get("name", ""), admit=self._admit_hook())

    def _admit_hook(self) -> Callable[[bytes, float], bool] | None:
        admit = self.options.get("admit")
        if admit is None:
            return None

        def check(public_key: bytes, now: float) -> bool:
            ok = admit(public_key, now)
            if not ok:
                self.log.warning("peer_not_member", peer=public_key[:4].hex(),
                                 detail="not a current member of the network contract; link closed")
            return ok
        return check

    def execute(self, actions: list) -> None:
        super().execute(actions)
        self._carrier_counters()
        plane = getattr(self, "_plane", None)
        if plane is not None and self.protocol is not None:
            links = self.protocol.table.links()
            if links != self._links_seen:
                self._links_seen = links
                plane.links.value = data_links(links.items())

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        return {**super().dispatch_table(), SendFrame: self._send, Dial: self._dial,
                CloseConnection: self._close, DeliverFrame: self._deliver,
                ConnectionAuthenticated: self._authenticated}

    def on_ready(self) -> None:
        self.log.info("link_listening", endpoints=list(self._listening))
        self.publish(LinkListening(self._listening))

    def on_message(self, message: Any) -> None:  # carrier events, from its I/O thread
        if not isinstance(message, _Stamped):
            return super().on_message(message)
        match message.event:
            case ev.Connected(conn_id=c, outbound=o, remote=r):
                self.feed(ConnectionOpened(c, o, r, os.urandom(16)))
            case ev.FrameReceived(conn_id=c, frame=f):
                self._rx_time = message.at
                self.feed(BytesReceived(c, f))
            case ev.Disconnected(conn_id=c, reason=r, broken=broken):
                self.feed(ConnectionLost(c, r))
                if broken:
                    self.publish(LinkCounters(self._counters()))
            case ev.DialFailed(endpoint=ep, reason=r):
                self.log.info("dial_failed", endpoint=ep, reason=r)
                self.feed(DialFailed(ep, r))
            case other:
                super().on_message(other)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GetLinkInfo):
            return self._info()
        return super().on_receive(message)

    def on_bus(self, notice: Any) -> None:
        lm: LinkManager = self.protocol
        now = self.clock.now()
        match notice:
            case LinkFrameOut(node_id=nid, frame=frame, sent_at=sent_at):
                try:
                    msg = wire.decode_frame(frame)
                except DecodeError as e:
                    self.log.warning("bad_frame_from_agent", error=str(e))
                    return
                if isinstance(msg, Probe) and 0 < sent_at <= now:
                    if len(self._probe_delays) >= _MAX_PROBE_OFFSETS:
                        self._probe_delays.pop(next(iter(self._probe_delays)))
                    self._probe_delays[(nid, msg.seq)] = now - sent_at
                self.execute(lm.after(lm.table.send_to(nid, msg), now))
            case LinkDead(node_id=nid, reason=reason):
                self.log.info("link_dead", peer=nid[:4].hex(), reason=reason)
                self.execute(lm.after(lm.table.disconnect(nid, CloseCode.DEAD, reason), now))
            case ContractChanged(version=version):
                self.log.info("contract_recheck", version=version)
                self.execute(lm.after(lm.table.recheck(now), now))
            case AgentStateChanged(state="running", agent=agent) if agent != self.name:
                self._announce()
        self._rearm()

    def _announce(self) -> None:
        """Repeat what a (re)started agent missed: listen endpoints and live peers."""
        self.publish(LinkListening(self._listening))
        for p in self.protocol.table.peers():
            self.publish(PeerUp(p.node_id, p.public_key, p.address, p.listen_endpoint or p.endpoint,
                                p.outbound, p.name))
        self.publish(LinkCounters(self._counters()))

    def _carrier_counters(self) -> None:
        """The carrier counts what never reached the link table (connections pushed out
        before their hello, accept back-offs): publish a change of those too, at most
        once a second, so a flood shows in the API without flooding the bus."""
        if self.protocol is None:
            return
        now = self.clock.now()
        if now - self._counters_at < 1.0:
            return
        self._counters_at = now
        stats = self._carrier.stats()
        seen = (stats.pending, stats.pending_evicted, stats.accept_paused, stats.accepted,
                stats.malformed_frames, self._carrier_own())
        if seen != self._carrier_seen:
            self._carrier_seen = seen
            self.publish(LinkCounters(self._counters()))

    def _counters(self) -> dict:
        stats = self._carrier.stats()
        return {**self.protocol.table.counters, "malformed_streams": stats.malformed_frames,
                "pending_hello": stats.pending, "pending_evicted": stats.pending_evicted,
                "accept_paused": stats.accept_paused, "inbound_accepted": stats.accepted,
                **self._carrier_own()}

    def _carrier_own(self) -> dict[str, int]:
        """What a datagram carrier counts itself: chunks repaired, frames lost, ..."""
        own = getattr(self._carrier, "counters", None)
        return own() if own is not None else {}

    def _info(self) -> dict:
        return {"listen": list(self._listening), "counters": self._counters(),
                "peers": [p.node_id.hex() for p in self.protocol.table.peers()]}

    def _send(self, a: SendFrame) -> None:
        frame = wire.encode_frame(a.msg)
        # probes go unreliably where the carrier can (UDP): a lost one stays lost, so the
        # prober measures the link's loss, which a stream carrier hides as delay
        if isinstance(a.msg, (Probe, ProbeAck)) and self._carrier.send_datagram(a.conn, frame):
            return
        try:
            if not self._carrier.send(a.conn, frame):
                self.log.warning("send_queue_full", conn=a.conn)
        except TransportClosed:
            pass  # the Disconnected event is on its way

    def _authenticated(self, a: ConnectionAuthenticated) -> None:
        self._carrier.confirm(a.conn)

    def _dial(self, a: Dial) -> None:
        self._carrier.dial(a.endpoint)

    def _close(self, a: CloseConnection) -> None:
        # A bucket per close code we know (a peer's code can be any int: one for those)
        code = int(a.code)
        key = ("link_closed", code if code in _KNOWN_CODES else "other")
        self.log.info("link_closed", key=key, conn=a.conn, code=code, reason=a.reason)
        self._carrier.close(a.conn, a.reason)

    def do_publish(self, action: Publish) -> None:
        if isinstance(action.message, LinkCounters):
            # The table counts what it refused; the carrier counts streams that
            # never framed. Subscribers get both in one notice.
            self.publish(LinkCounters(self._counters()))
        else:
            super().do_publish(action)

    def _deliver(self, a: DeliverFrame) -> None:
        rx = self._rx_time
        if isinstance(a.msg, ProbeAck):  # time the round trip from when the probe left
            rx -= self._probe_delays.pop((a.node_id, a.msg.seq), 0.0)
        self.publish(LinkFrameIn(a.node_id, wire.encode_frame(a.msg), rx))

    def on_stop(self) -> None:
        if self.protocol is not None:
            self.execute(self.protocol.table.close_all())
            self._carrier.shutdown()
        self._unplug()
        super().on_stop()

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        carrier = getattr(self, "_carrier", None)
        if carrier is not None:
            carrier.shutdown()
        self._unplug()
        super().on_failure(exc_type, exc, tb)

    def _unplug(self) -> None:
        """The data path must not send on a carrier that is gone (a restart makes a new one)."""
        plane = getattr(self, "_plane", None)
        if plane is not None and plane.carrier is getattr(self, "_carrier", None):
            plane.carrier = None
            plane.links.value = data_links(())
