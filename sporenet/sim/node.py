"""A simulated node: the real ``LinkTable`` and ``Prober`` with a simulated executor.

Driven by the ``NetworkModel`` (frames and closes arriving) and by its own timer on
the ``VirtualClock``, set from the protocols' ``next_deadline()``. It executes
actions exactly as the node's agents do, only with the network model in place of
carriers and the bus: SendFrame -> encode_frame -> network; DeliverFrame ->
prober; PeerUp/PeerDown -> LinkAdded/LinkRemoved; DeclareDead -> disconnect.

A connection's ``conn`` is the peer's index: the scenario opens at most one
connection per pair of nodes.
"""

from __future__ import annotations

import random

from sporenet.protocols import wire
from sporenet.protocols.base import Action, Publish
from sporenet.protocols.identity import Identity, short_id
from sporenet.protocols.link.table import (BytesReceived, CloseConnection, ConnectionLost,
                                     ConnectionOpened, DeliverFrame, LinkTable, SendFrame)
from sporenet.protocols.link.messages import NONCE_SIZE, CloseCode, Probe, ProbeAck
from sporenet.protocols.notices import LinkMeasured, PeerDown, PeerUp
from sporenet.protocols.link.prober import DeclareDead, FrameFromPeer, LinkAdded, LinkRemoved, Prober, SendToPeer

from .clock import TimerHandle, VirtualClock
from .network import NetworkModel


class SimNode:
    def __init__(self, index: int, identity: Identity, clock: VirtualClock, network: NetworkModel,
                 rng: random.Random, *, interval: float = 1.0, handshake_timeout: float = 5.0,
                 trace: list[str] | None = None) -> None:
        self.index = index
        self.identity = identity
        self.clock = clock
        self.network = network
        self._rng = rng
        self.link = LinkTable(identity, listen_endpoint=f"sim://{index}", name=f"n{index}",
                              handshake_timeout=handshake_timeout)
        self.prober = Prober(rng=rng, interval=interval)
        self.measured: dict[bytes, LinkMeasured] = {}  # latest per peer node id
        self.peer_index: dict[bytes, int] = {}  # node id -> the conn (peer index) it came up on
        self.undelivered = 0  # frames for protocols this node does not run
        self._trace = trace
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        network.add_node(index, self._on_frame, self._on_closed)

    # -- inputs from the scenario and the network ------------------------------

    def open(self, peer: int, outbound: bool) -> None:
        nonce = self._rng.randbytes(NONCE_SIZE)
        event = ConnectionOpened(peer, outbound, f"sim://{peer}", nonce)
        self._run(self.link.handle(event, self.clock.now))

    def _on_frame(self, src: int, data: bytes) -> None:
        self._run(self.link.handle(BytesReceived(src, data), self.clock.now))

    def _on_closed(self, src: int) -> None:
        self._run(self.link.handle(ConnectionLost(src, "carrier closed"), self.clock.now))

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self.clock.now
        actions: list[Action] = []
        for proto in (self.link, self.prober):
            deadline = proto.next_deadline()
            if deadline is not None and deadline <= now:
                actions += proto.on_timer(now)
        self._run(actions)

    # -- the executor ------------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        self._execute(actions)
        self._reschedule()

    def _execute(self, actions: list[Action]) -> None:
        now = self.clock.now
        for act in actions:
            match act:
                case SendFrame(conn=conn, msg=msg):
                    self.network.deliver(self.index, conn, wire.encode_frame(msg))
                case CloseConnection(conn=conn):
                    self.network.close(self.index, conn)
                case SendToPeer(node_id=nid, msg=msg):
                    self._execute(self.link.send_to(nid, msg))
                case DeliverFrame(node_id=nid, msg=Probe() | ProbeAck() as msg):
                    self._execute(self.prober.handle(FrameFromPeer(nid, msg), now))
                case DeliverFrame():
                    self.undelivered += 1
                case DeclareDead(node_id=nid, reason=reason):
                    self._execute(self.link.disconnect(nid, CloseCode.DEAD, reason))
                case Publish(message=notice):
                    self._publish(notice, now)

    def _publish(self, notice: object, now: float) -> None:
        match notice:
            case LinkMeasured(node_id=nid):
                self.measured[nid] = notice
                self._log(now, f"measured {short_id(nid)} rtt={notice.rtt_ms:.3f} "
                               f"jit={notice.jitter_ms:.3f} loss={notice.loss:.3f}")
            case PeerUp(node_id=nid, endpoint=endpoint):
                self.peer_index[nid] = int(endpoint.removeprefix("sim://"))
                self._log(now, f"up {short_id(nid)} outbound={notice.outbound}")
                self._execute(self.prober.handle(LinkAdded(nid), now))
            case PeerDown(node_id=nid, reason=reason):
                self.peer_index.pop(nid, None)
                self.measured.pop(nid, None)
                self._log(now, f"down {short_id(nid)} {reason}")
                self._execute(self.prober.handle(LinkRemoved(nid), now))

    def _reschedule(self) -> None:
        deadlines = [d for d in (self.link.next_deadline(), self.prober.next_deadline()) if d is not None]
        deadline = min(deadlines) if deadlines else None
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None
        if deadline is not None:
            self._timer = self.clock.call_at(max(deadline, self.clock.now), self._on_timer)

    def _log(self, now: float, text: str) -> None:
        if self._trace is not None:
            self._trace.append(f"{now:.6f} n{self.index} {text}")
