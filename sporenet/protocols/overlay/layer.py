"""A node's overlay layer: the forwarder, the message endpoint, the tracer and the
end-to-end session manager, wired together.

Driven by ``handle(RoutedReceived, now)`` for packets off a link, by ``send`` /
``ping`` / ``trace`` for the local user, and by ``on_timer(now)`` (retransmissions,
deadlines, handshake retries, rekeys, keepalives). Packets the forwarder delivers
locally go to the endpoint; packets the endpoint wants sent go through the
forwarder. What comes out is for the executor: ``SendToNeighbour`` for links, the
endpoint's user-facing actions (``MessageReceived``, ``MessageDelivered``,
``MessageFailed``, ``PingResult``, ``PingFailed``, ``DestinationUnreachable``), the
tracer's (``TraceResult``, ``TraceFailed``; ``sporenet/protocols/overlay/trace.py``) and, with
sessions, ``SendFailed`` and ``Publish(SessionEstablished | SessionClosed)``. Trace
packets delivered here go to the tracer, unreachable notices to both the endpoint
and the tracer. The same object serves the real node and the simulator.

Encryption (with a ``SessionManager``; ``docs/messages.md``, "Encryption"):
- Message chunks and acks (``SECURED_PROTOS``) to another node never leave in
  clear: they go to the session manager as ``SendPlain`` to the destination's
  Ed25519 key and come back, opened, as ``DeliverPlain``. The key of an address is
  the router's (``Fib.public_keys``, installed by ``set_fib``) or a neighbour's
  (``set_neighbour_keys``); a send to an address with no known key is dropped and
  counted (``no_public_key``): the endpoint retries until its deadline.
- Session frames (protos SESSION_HANDSHAKE and E2E_DATA) delivered here go to the
  session manager with the neighbour they came from as ``ingress``; transit nodes
  forward them like any routed packet.
- A secured proto arriving in clear from another node is dropped and counted
  (``cleartext_dropped``): its source address is unauthenticated. Only a node's
  messages to itself stay in clear (they never leave the node).
- A peer that stops answering (it restarted and lost its keys: our frames reach it
  and are dropped) gets a new handshake: when we send to a peer that has delivered
  nothing for ``NO_ANSWER_REKEY`` seconds since our first unanswered send, the
  overlay asks for a rekey (WireGuard §6.2's rule; message acks make every send
  answered). Counted ``no_answer_rekey``.
- Ping, pong, trace and unreachable notices stay cleartext overlay diagnostics.
Without a session manager every packet travels in clear (the simulator's mode).

Contract (``reach(src_key, dst_key) -> bool``, the network contract's ``may_reach``
when the node has one): a secured send to a key we may not reach is dropped and
counted (``not_member``), unless that peer opened the session we hold with it (rules
say who may open a session; the session carries both ways); ``revoke(now)`` removes the sessions (``remove_peer``) of
every peer that may reach us no more, nor we it (asking ``allowed``, the same rule
without the send point's refusal count; ``reach`` when not given). The session manager's own
``accept`` refuses handshakes from initiators that may not reach us.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Mapping

from ..base import Action, Event
from .forwarding import DeliverLocal, Forwarder, RoutedReceived, prefix_fib
from ..identity import Identity, address_of
from .messaging import MessageEndpoint, PacketReceived, SendPacket
from ..routed import Proto
from ..sessions.data import KEEPALIVE_TIMEOUT, REKEY_TIMEOUT
from ..sessions.events import DeliverPlain, SendFailed, SendPlain, SendSessionFrame, SessionFrameIn
from ..sessions.manager import SessionManager
from .trace import Tracer

SECURED_PROTOS = frozenset((Proto.MESSAGE_CHUNK, Proto.MESSAGE_ACK))
SESSION_PROTOS = frozenset((Proto.SESSION_HANDSHAKE, Proto.E2E_DATA))
NO_ANSWER_REKEY = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT  # 15 s, WireGuard's New-Handshake-Time


class Overlay:
    def __init__(self, forwarder: Forwarder, endpoint: MessageEndpoint,
                 tracer: Tracer | None = None, sessions: SessionManager | None = None,
                 reach: Callable[[bytes, bytes], bool] | None = None,
                 allowed: Callable[[bytes, bytes], bool] | None = None) -> None:
        self.forwarder = forwarder
        self.reach = reach
        self.allowed = allowed  # the same rule, asked by revoke (not a refused send)
        self.endpoint = endpoint
        self.tracer = tracer if tracer is not None else Tracer(rng=endpoint._rng)
        self.sessions = sessions
        self.counters: Counter[str] = Counter()
        self._fib_version: int | None = None
        self._fib_keys: dict[bytes, bytes] = {}  # packed address -> Ed25519 key (routes)
        self._neighbour_keys: dict[bytes, bytes] = {}  # the same, for linked peers
        self._unanswered: dict[bytes, float] = {}  # peer key -> first send since its last data

    @classmethod
    def for_identity(cls, identity: Identity, *, rng, sessions: SessionManager | None = None,
                     **forwarder_options) -> Overlay:
        return cls(Forwarder(identity, **forwarder_options), MessageEndpoint(identity, rng=rng),
                   sessions=sessions)

    def set_fib(self, fib: Mapping[bytes, bytes], version: int | None = None) -> None:
        """Install the router's snapshot {destination node id: next hop}, once per version
        (and its ``public_keys``, if it has them, for the sessions)."""
        if version is None or version != self._fib_version:
            self.forwarder.set_fib(prefix_fib(fib))
            self._fib_version = version
            if self.sessions is not None:
                keys = getattr(fib, "public_keys", None) or {}
                self._fib_keys = {address_of(pub).packed: pub for pub in keys.values()}

    def set_neighbour_keys(self, public_keys: Iterable[bytes]) -> None:
        """The Ed25519 keys of the linked peers (reachable before any route to them)."""
        self._neighbour_keys = {address_of(pub).packed: pub for pub in public_keys}

    def revoke(self, now: float) -> list[Action]:
        """Remove the sessions of peers the contract no longer lets talk to us either way."""
        allowed = self.allowed or self.reach
        if self.sessions is None or allowed is None:
            return []
        me, acts = self.sessions.public_key, []
        for row in self.sessions.sessions(now):
            if not (allowed(me, row.peer) or allowed(row.peer, me)):
                self.counters["sessions_revoked"] += 1
                self._unanswered.pop(row.peer, None)
                acts += self.sessions.remove_peer(row.peer)
        return self._run(acts, now)

    def open_session(self, key: bytes, now: float) -> list[Action]:
        """The data path has IP packets for ``key`` and no (fresh) keys: handshake.
        The contract's send rule is the data path's to ask (its reach snapshot)."""
        if self.sessions is None:
            return []
        self.counters["data_session_asked"] += 1
        return self._run(self.sessions.rekey(key, now), now)

    def confirm_data_key(self, index: int, now: float) -> list[Action]:
        """A data frame under our unconfirmed keypair ``index`` opened: key confirmation."""
        if self.sessions is None:
            return []
        return self._run(self.sessions.confirm(index, now), now)

    def public_key_of(self, address) -> bytes | None:
        packed = address.packed
        return self._fib_keys.get(packed) or self._neighbour_keys.get(packed)

    def handle(self, event: Event, now: float) -> list[Action]:
        ingress = event.from_node if isinstance(event, RoutedReceived) else None
        return self._run(self.forwarder.handle(event, now), now, ingress)

    def send(self, dst, topic: str, data: bytes, now: float, **kw) -> tuple[int, list[Action]]:
        msg_id, actions = self.endpoint.send(dst, topic, data, now, **kw)
        return msg_id, self._run(actions, now)

    def ping(self, dst, now: float, timeout: float = 5.0) -> tuple[int, list[Action]]:
        ping_id, actions = self.endpoint.ping(dst, now, timeout)
        return ping_id, self._run(actions, now)

    def trace(self, dst, now: float, timeout: float = 2.0) -> tuple[int, list[Action]]:
        """Trace the path to ``dst``: ``TraceResult`` or ``TraceFailed`` follow."""
        trace_id, actions = self.tracer.trace(dst, now, timeout)
        return trace_id, self._run(actions, now)

    def next_deadline(self) -> float | None:
        parts = [self.forwarder, self.endpoint, self.tracer]
        if self.sessions is not None:
            parts.append(self.sessions)
        dues = [d for d in (p.next_deadline() for p in parts) if d is not None]
        return min(dues) if dues else None

    def on_timer(self, now: float) -> list[Action]:
        acts = self.forwarder.on_timer(now) + self.endpoint.on_timer(now)
        acts += self.tracer.on_timer(now)
        if self.sessions is not None and _due(self.sessions.next_deadline(), now):
            acts += self.sessions.on_timer(now)
        return self._run(acts, now)

    def _run(self, actions: list[Action], now: float,
             ingress: bytes | None = None) -> list[Action]:
        """Loop local deliveries and sends between the parts until only external actions
        remain. ``ingress`` is the neighbour the first ``actions`` answer a packet from;
        everything made here afterwards is local (ingress None)."""
        out: list[Action] = []
        todo = [(a, ingress) for a in actions]
        while todo:
            a, via = todo.pop(0)
            if isinstance(a, DeliverLocal):
                more = self._deliver(a, via, now)
            elif isinstance(a, SendPacket):
                more = self._send_packet(a, now)
            elif isinstance(a, SendSessionFrame):
                more = self.forwarder.originate(a.dst_address, a.proto, a.frame, now)
            elif isinstance(a, DeliverPlain):
                more = self._deliver_plain(a, now)
            else:
                if isinstance(a, SendFailed):
                    self._unanswered.pop(a.peer, None)
                out.append(a)
                continue
            todo += [(m, None) for m in more]
        return out

    def _deliver(self, a: DeliverLocal, ingress: bytes | None, now: float) -> list[Action]:
        proto = a.packet.proto
        if proto in (Proto.TRACE_REQUEST, Proto.TRACE_REPLY):
            return self.tracer.handle(PacketReceived.from_routed(a.packet), now)
        if self.sessions is not None:
            if proto in SESSION_PROTOS:
                if ingress is None:  # we never send session frames to ourselves
                    self.counters["session_frame_from_self"] += 1
                    return []
                return self.sessions.handle(SessionFrameIn.from_routed(a.packet, ingress), now)
            if proto in SECURED_PROTOS and ingress is not None:
                self.counters["cleartext_dropped"] += 1
                return []
        acts: list[Action] = []
        if proto == Proto.UNREACHABLE:
            acts += self.tracer.handle(PacketReceived.from_routed(a.packet), now)
        return acts + self.endpoint.handle(a.packet, now)

    def _send_packet(self, a: SendPacket, now: float) -> list[Action]:
        if (self.sessions is None or a.proto not in SECURED_PROTOS
                or a.dst_address == self.endpoint.address):
            return self.forwarder.originate(a.dst_address, a.proto, a.payload, now)
        key = self.public_key_of(a.dst_address)
        if key is None:
            self.counters["no_public_key"] += 1
            return []
        # The rules say who may open a session; one the peer opened carries our replies
        # (acks, answers) back. Asked in this order so the contract's send point counts
        # only what it refuses.
        if (self.reach is not None and not self.sessions.answering(key)
                and not self.reach(self.sessions.public_key, key)):
            self.counters["not_member"] += 1
            return []
        acts = self.sessions.handle(SendPlain(key, int(a.proto), a.payload), now)
        since = self._unanswered.setdefault(key, now)
        if now - since >= NO_ANSWER_REKEY:
            self._unanswered[key] = now
            self.counters["no_answer_rekey"] += 1
            acts += self.sessions.rekey(key, now)
        return acts

    def _deliver_plain(self, a: DeliverPlain, now: float) -> list[Action]:
        self._unanswered.pop(a.peer, None)
        if a.proto not in SECURED_PROTOS:
            self.counters["plain_unknown_proto"] += 1
            return []
        return self.endpoint.handle(PacketReceived(a.src_address, a.proto, a.payload), now)


def _due(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline
