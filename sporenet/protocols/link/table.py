"""The link table: every carrier connection of one node and its signed hello.

Driven by ``handle(event, now)`` with ``ConnectionOpened`` / ``BytesReceived`` /
``ConnectionLost`` from the carriers, by ``on_timer(now)`` at ``next_deadline()``,
and by ``send_to`` / ``disconnect`` / ``close_all`` from the node. Returns actions:
``SendFrame``, ``CloseConnection``, ``DeliverFrame``, ``ConnectionAuthenticated`` and
``Publish(PeerUp|PeerDown)``.

Handshake (both sides run the same steps; carriers deliver frames in order):
1. on open, send ``Hello(public_key, fresh nonce, endpoint, name)``;
2. on the peer's Hello, send ``HelloProof(sign(hello_transcript(me, my nonce,
   peer, peer nonce)))``: the proof answers the peer's fresh challenge;
3. when the peer's proof verifies, the connection is a peer link, if ``admit`` (the
   network contract, when the node has one) accepts the proven key; else it is
   closed (``AUTH_FAILED``, "not a member ...") and counted ``not_member``.
   ``recheck(now)`` closes links whose key is no longer admitted (a revocation).
   The table then says ``ConnectionAuthenticated``: the carrier stops counting the
   connection against its pre-hello limit (``protocols/link/admission.py``).

Handshake deadlines sit in a heap (deadline, sequence, connection), removed lazily:
a flood of connections that never say hello costs O(log n) each, not a scan of all
of them on every timer.

Invariants:
- A peer fault never raises: it closes that connection (``SendFrame(Close)`` then
  ``CloseConnection``) and bumps a counter; the node keeps running.
- At most one authenticated connection per peer node id. Duplicates (simultaneous
  dial, redial) are resolved by ``_prefer`` identically on both sides, and the
  survivor's peer sees no PeerDown.
- ``PeerUp`` / ``PeerDown`` alternate per node id, starting with ``PeerUp``.
- ``CloseConnection`` means "flush what is queued, then close the carrier"; the
  Close frame, when one is due, is the ``SendFrame`` just before it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .. import wire
from ..base import Action, Event, Publish
from ..errors import (
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    UnknownFrameType,
)
from ..identity import Identity, address_of, node_id_of, verify_signature
from ..notices import PeerDown, PeerUp
from .messages import (
    LINK_CONTROL_TYPES,
    MAX_NAME_BYTES,
    MAX_REASON_BYTES,
    NONCE_SIZE,
    Close,
    CloseCode,
    Hello,
    HelloProof,
    hello_transcript,
    truncate_utf8,
)

COUNTERS = ("malformed", "protocol_errors", "auth_failed", "unknown_type", "self_connects",
            "duplicates", "handshake_timeouts", "closed_by_peer", "stray_frames", "send_dropped",
            "not_member")

# ``admit(public_key, now)``: may this proven key hold a link (the network contract)?
Admit = Callable[[bytes, float], bool]


@dataclass(frozen=True, slots=True)
class ConnectionOpened(Event):
    """A carrier connection is up. ``nonce``: 16 fresh random bytes from the executor."""

    conn: Hashable
    outbound: bool
    remote: str
    nonce: bytes


@dataclass(frozen=True, slots=True)
class BytesReceived(Event):
    """One whole frame, already de-framed by the carrier."""

    conn: Hashable
    frame: bytes


@dataclass(frozen=True, slots=True)
class ConnectionLost(Event):
    conn: Hashable
    reason: str


@dataclass(frozen=True, slots=True)
class SendFrame(Action):
    conn: Hashable
    msg: wire.Message


@dataclass(frozen=True, slots=True)
class CloseConnection(Action):
    """Flush queued frames and close the carrier connection."""

    conn: Hashable
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionAuthenticated(Action):
    """The peer on ``conn`` proved its key and is admitted: it no longer counts as a
    connection waiting for its hello (the carrier's ``confirm``)."""

    conn: Hashable


@dataclass(frozen=True, slots=True)
class DeliverFrame(Action):
    """A frame from an authenticated peer for another protocol (prober, router, ...)."""

    node_id: bytes
    msg: wire.Message


@dataclass(frozen=True, slots=True)
class PeerInfo:
    node_id: bytes
    public_key: bytes
    address: str
    endpoint: str  # the carrier's remote endpoint for this connection
    listen_endpoint: str  # where the peer says it accepts connections (may be "")
    outbound: bool
    name: str
    since: float


_NOT_MEMBER = "not a member of the network contract"


class _Refusal(Exception):
    """Internal: a peer fault that closes one connection."""

    def __init__(self, code: CloseCode, counter: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.counter, self.reason = code, counter, reason


@dataclass(slots=True)
class _Conn:
    conn: Hashable
    outbound: bool
    remote: str
    nonce: bytes
    opened_at: float
    hello: Hello | None = None
    node_id: bytes | None = None  # set once the peer's proof verified
    since: float = 0.0


class LinkTable:
    """All carrier connections of one node; see the module docstring."""

    def __init__(self, identity: Identity, *, listen_endpoint: str = "", name: str = "",
                 handshake_timeout: float = 5.0, admit: Admit | None = None) -> None:
        self._id = identity
        self._admit = admit
        self._endpoint = listen_endpoint
        self._name = truncate_utf8(name, MAX_NAME_BYTES)
        self._timeout = handshake_timeout
        self._conns: dict[Hashable, _Conn] = {}
        # node id -> its one authenticated conn, or None while "bridging": the peer
        # closed our link as a duplicate and its chosen connection is still handshaking.
        self._active: dict[bytes, Hashable | None] = {}
        self._bridge_until: dict[bytes, float] = {}
        # (handshake deadline, seq, conn record); an entry whose record left _conns or
        # authenticated is stale and skipped when it reaches the top.
        self._deadlines: list[tuple[float, int, _Conn]] = []
        self._seq = itertools.count()
        self._counters = dict.fromkeys(COUNTERS, 0)

    @property
    def node_id(self) -> bytes:
        return self._id.node_id

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def peers(self) -> list[PeerInfo]:
        return [self._info(self._conns[c]) for c in self._active.values() if c is not None]

    def links(self) -> dict[bytes, Hashable]:
        """``{node id: conn}`` of every authenticated peer link (the data path's view)."""
        return {nid: c for nid, c in self._active.items() if c is not None}

    def connections(self) -> int:
        return len(self._conns)

    def bridging(self) -> set[bytes]:
        """Peers whose link the peer closed as a duplicate, its successor still handshaking."""
        return set(self._bridge_until)

    # -- inputs ---------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        match event:
            case BytesReceived(conn=conn, frame=frame):
                return self._on_bytes(conn, frame, now)
            case ConnectionOpened():
                return self._on_open(event, now)
            case ConnectionLost(conn=conn, reason=reason):
                c = self._conns.pop(conn, None)
                return self._detach(c, reason) if c is not None else []
        raise LocalProtocolError(f"LinkTable cannot handle {type(event).__name__}")

    def send_to(self, node_id: bytes, msg: wire.Message) -> list[Action]:
        """Frames of other protocols to a peer; dropped (and counted) if it is not up."""
        if isinstance(msg, LINK_CONTROL_TYPES):
            raise LocalProtocolError(f"{type(msg).__name__} is the link table's own frame")
        conn = self._active.get(node_id)
        if conn is None:
            self._counters["send_dropped"] += 1
            return []
        return [SendFrame(conn, msg)]

    def disconnect(self, node_id: bytes, code: int, reason: str) -> list[Action]:
        """Close the link to a peer (e.g. the prober declared it dead)."""
        if node_id not in self._active:
            return []
        conn = self._active[node_id]
        if conn is None:
            return self._peer_down(node_id, reason)
        return self._close(self._conns.pop(conn), code, reason)

    def recheck(self, now: float) -> list[Action]:
        """Close every peer link whose key ``admit`` no longer accepts (a new contract
        version revoked it, or its membership expired); counted ``not_member``."""
        if self._admit is None:
            return []
        actions: list[Action] = []
        for p in self.peers():
            if not self._admit(p.public_key, now):
                self._counters["not_member"] += 1
                actions += self.disconnect(p.node_id, CloseCode.AUTH_FAILED, _NOT_MEMBER)
        return actions

    def close_all(self, code: int = CloseCode.SHUTDOWN, reason: str = "shutting down") -> list[Action]:
        actions: list[Action] = []
        for conn in list(self._conns):
            actions += self._close(self._conns.pop(conn), code, reason)
        for node_id in list(self._active):
            actions += self._peer_down(node_id, reason)
        return actions

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and not self._waiting(heap[0][2]):
            heapq.heappop(heap)
        times = list(self._bridge_until.values())  # one per bridging peer: few
        if heap:
            times.append(heap[0][0])
        return min(times) if times else None

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            c = heapq.heappop(heap)[2]
            if self._waiting(c):
                self._counters["handshake_timeouts"] += 1
                del self._conns[c.conn]
                actions += self._close(c, CloseCode.HANDSHAKE_TIMEOUT, "handshake timeout")
        for node_id, until in list(self._bridge_until.items()):
            if until <= now:
                actions += self._peer_down(node_id, "duplicate link replaced, successor never came up")
        return actions

    def _waiting(self, c: _Conn) -> bool:
        """Is ``c`` still open and not yet authenticated (its deadline still counts)?"""
        return c.node_id is None and self._conns.get(c.conn) is c

    # -- frames ---------------------------------------------------------------

    def _on_open(self, ev: ConnectionOpened, now: float) -> list[Action]:
        if ev.conn in self._conns:
            raise LocalProtocolError(f"connection {ev.conn!r} opened twice")
        if len(ev.nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"nonce must be {NONCE_SIZE} bytes")
        c = self._conns[ev.conn] = _Conn(ev.conn, ev.outbound, ev.remote, ev.nonce, now)
        heapq.heappush(self._deadlines, (now + self._timeout, next(self._seq), c))
        hello = Hello(self._id.public_key, ev.nonce, self._endpoint, self._name)
        return [SendFrame(ev.conn, hello)]

    def _on_bytes(self, conn: Hashable, frame: bytes, now: float) -> list[Action]:
        c = self._conns.get(conn)
        if c is None:  # frames still in flight after we closed: harmless
            self._counters["stray_frames"] += 1
            return []
        try:
            msg = wire.decode_frame(frame)
            return self._dispatch(c, msg, now)
        except UnknownFrameType as exc:
            if c.node_id is not None:  # a newer peer's frame: skip, keep the link
                self._counters["unknown_type"] += 1
                return []
            return self._refuse(c, _Refusal(CloseCode.PROTOCOL_ERROR, "protocol_errors", str(exc)))
        except DecodeError as exc:
            return self._refuse(c, _Refusal(CloseCode.PROTOCOL_ERROR, "malformed", str(exc)))
        except _Refusal as refusal:
            return self._refuse(c, refusal)

    def _dispatch(self, c: _Conn, msg: wire.Message, now: float) -> list[Action]:
        match msg:
            case Hello():
                return self._on_hello(c, msg)
            case HelloProof():
                return self._on_proof(c, msg, now)
            case Close():
                return self._on_close(c, msg, now)
        if c.node_id is None:
            raise _Refusal(CloseCode.PROTOCOL_ERROR, "protocol_errors",
                           f"{type(msg).__name__} before handshake")
        return [DeliverFrame(c.node_id, msg)]

    def _on_hello(self, c: _Conn, hello: Hello) -> list[Action]:
        if c.hello is not None:
            raise _Refusal(CloseCode.PROTOCOL_ERROR, "protocol_errors", "hello twice")
        if hello.public_key == self._id.public_key:
            raise _Refusal(CloseCode.SELF_CONNECT, "self_connects", "connected to myself")
        c.hello = hello
        transcript = hello_transcript(self._id.public_key, c.nonce, hello.public_key, hello.nonce)
        return [SendFrame(c.conn, HelloProof(self._id.sign(transcript)))]

    def _on_proof(self, c: _Conn, proof: HelloProof, now: float) -> list[Action]:
        if c.hello is None or c.node_id is not None:
            raise _Refusal(CloseCode.PROTOCOL_ERROR, "protocol_errors", "proof out of order")
        peer = c.hello
        transcript = hello_transcript(peer.public_key, peer.nonce, self._id.public_key, c.nonce)
        try:
            verify_signature(peer.public_key, transcript, proof.signature)
        except RemoteProtocolError as exc:
            raise _Refusal(CloseCode.AUTH_FAILED, "auth_failed", "hello proof does not verify") from exc
        if self._admit is not None and not self._admit(peer.public_key, now):
            raise _Refusal(CloseCode.AUTH_FAILED, "not_member", _NOT_MEMBER)
        c.node_id, c.since = node_id_of(peer.public_key), now
        return [ConnectionAuthenticated(c.conn), *self._promote(c)]

    def _on_close(self, c: _Conn, msg: Close, now: float) -> list[Action]:
        self._counters["closed_by_peer"] += 1
        del self._conns[c.conn]
        reason = f"closed by peer: {_code_name(msg.code)} {msg.reason}".rstrip()
        actions: list[Action] = [CloseConnection(c.conn, msg.code, reason)]
        if msg.code == CloseCode.DUPLICATE and c.node_id and self._active.get(c.node_id) == c.conn:
            # The peer keeps another of our connections; wait for it instead of a
            # PeerDown/PeerUp flap. Bounded: no successor within the timeout -> PeerDown.
            self._active[c.node_id] = None
            self._bridge_until[c.node_id] = now + self._timeout
            return actions
        return actions + self._detach(c, reason)

    # -- peer links -----------------------------------------------------------

    def _promote(self, c: _Conn) -> list[Action]:
        node_id = c.node_id
        assert node_id is not None
        if node_id not in self._active:
            self._active[node_id] = c.conn
            return [Publish(self._peer_up(c))]
        current = self._active[node_id]
        if current is None:  # bridging: the peer's chosen connection arrived
            self._active[node_id] = c.conn
            del self._bridge_until[node_id]
            return []
        old = self._conns[current]
        keep, drop = (c, old) if self._prefer(c, old) else (old, c)
        self._active[node_id] = keep.conn
        self._counters["duplicates"] += 1
        del self._conns[drop.conn]
        return self._close(drop, CloseCode.DUPLICATE, "duplicate link")

    def _prefer(self, new: _Conn, old: _Conn) -> bool:
        """Should ``new`` replace ``old`` (both to the same peer)? Same answer on both sides.

        Different dialers (simultaneous dial): keep the one dialed by the lower node
        id. Same dialer, old link long up (a redial): keep the newer one, as the
        dialer redials only when it believes the old connection is gone. Same dialer,
        both fresh (two concurrent dials): the order they came up in may differ
        between the two sides, so compare what both sides know, the nonces.
        """
        peer = new.node_id
        new_dialer = self._id.node_id if new.outbound else peer
        old_dialer = self._id.node_id if old.outbound else peer
        if new_dialer != old_dialer:
            return new_dialer < old_dialer  # type: ignore[operator]
        if new.since - old.since > self._timeout:
            return True
        return _nonce_key(new) > _nonce_key(old)

    def _refuse(self, c: _Conn, refusal: _Refusal) -> list[Action]:
        self._counters[refusal.counter] += 1
        self._conns.pop(c.conn, None)
        return self._close(c, refusal.code, refusal.reason)

    def _close(self, c: _Conn, code: int, reason: str) -> list[Action]:
        """Close ``c`` (already removed from ``_conns``) with a Close frame first."""
        close = Close(code, truncate_utf8(reason, MAX_REASON_BYTES))
        actions: list[Action] = [SendFrame(c.conn, close), CloseConnection(c.conn, code, reason)]
        return actions + self._detach(c, reason)

    def _detach(self, c: _Conn, reason: str) -> list[Action]:
        """Bookkeeping for a connection that is gone; PeerDown if it was a peer's link."""
        if c.node_id is not None and self._active.get(c.node_id) == c.conn:
            return self._peer_down(c.node_id, reason)
        return []

    def _peer_down(self, node_id: bytes, reason: str) -> list[Action]:
        self._active.pop(node_id, None)
        self._bridge_until.pop(node_id, None)
        return [Publish(PeerDown(node_id, reason))]

    def _peer_up(self, c: _Conn) -> PeerUp:
        info = self._info(c)
        return PeerUp(info.node_id, info.public_key, info.address, info.endpoint, info.outbound,
                      info.name)

    def _info(self, c: _Conn) -> PeerInfo:
        assert c.hello is not None and c.node_id is not None
        h = c.hello
        return PeerInfo(c.node_id, h.public_key, str(address_of(h.public_key)), c.remote,
                        h.endpoint, c.outbound, h.name, c.since)


def _nonce_key(c: _Conn) -> bytes:
    """Dialer's nonce then acceptor's: the same bytes on both ends of a connection."""
    assert c.hello is not None
    return c.nonce + c.hello.nonce if c.outbound else c.hello.nonce + c.nonce


def _code_name(code: int) -> str:
    try:
        return CloseCode(code).name
    except ValueError:
        return str(code)
