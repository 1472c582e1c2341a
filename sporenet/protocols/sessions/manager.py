"""End-to-end session manager: Noise IKpsk2 handshakes, PQ-PSK rekeys, transport, DoS guard.

One ``SessionManager`` per node, owned by the overlay agent (one thread). Driven by
``handle(SendPlain | SessionFrameIn, now)``, ``on_timer(now)`` at ``next_deadline()``,
and the API calls ``sessions(now)`` (``sporenet sessions``), ``rekey`` and
``remove_peer``. Actions out: ``SendSessionFrame`` (route over the overlay),
``DeliverPlain`` (to the local overlay), ``SendFailed`` and
``Publish(SessionEstablished | SessionClosed)``.

Parts: ``KeyRing`` (``sessions/data.py``: keypairs, data frames, replay, expiry,
keepalives), ``Dialer`` (``sessions/initiator.py``: our attempts), ``InitiationDesk``
(``sessions/responder.py``: msg1s to us), ``HandshakeGuard`` (``sessions/guard.py``:
queue, load, buckets), the PQ steps (``sessions/pq_exchange.py``) and ``PeerState``
(``sessions/peer.py``: queue, psks, stats). This module routes frames between them.

Rules (issue [3/7], security.md §1-3, WireGuard whitepaper §5-6):
- Static keys authenticate only; every keypair comes from fresh ephemerals.
- The responder re-checks on every handshake that the initiator's static key owns the
  claimed source address (``sessions.noise.lookup_by_address``), then asks ``accept(key)``.
- A valid msg1 never tears down a working session: the new keypair waits in ``next``
  until the initiator's first data frame under it (``KeyRing.install``).
- Initiator: retries every Rekey-Timeout (5 s + up to 334 ms jitter), gives up after
  Rekey-Attempt-Time (90 s) and fails its queue; rekeys on send after Rekey-After-Time
  (120 s), and on receive once its keypair is 165 s old (WireGuard).
- PQ (on by default): after every handshake its initiator sends a ``PqOffer`` inside
  the new session; the answer yields a psk for the next handshake. A classical session
  is rekeyed with it at once; a PQ one keeps it for the next 120 s rekey, so every
  epoch gets its own ML-KEM secret. ``pq_required`` holds application data, both
  ways, until the keypair in use comes from a PQ psk.
- Inner plaintext of a data frame: ``type:u8 | body`` (``sessions/events.py``); empty
  is a keepalive. Application data is encrypted end to end only; transit nodes
  forward frames they cannot open.
- Flood: mac1 before queueing (no DH), per-link bucket, bounded queue, at most
  ``guard.budget`` DH-costing answers per ``on_timer``; under load, cookies (mac2)
  then a per-source bucket. Every drop is counted in ``counters``; ``dh_operations``
  counts every X25519 operation of this node (ours and the ones peers cause), and
  ``guard_report(now)`` is what an operator checks during a flood (``sporenet
  sessions``). A completed handshake we initiated is counted ``handshake_ok_after_N``
  by the msg1s its series took (N = 1..4, then ``5+``).
- Sans-IO: ``rng`` (a ``random.Random``; production passes ``random.SystemRandom()``)
  gives ephemerals, indices, jitter, cookie secrets and ML-KEM seeds. ``now`` is
  seconds; ``wall_offset + now`` must be Unix time (the TAI64N stamps of msg1).
  Keys live only in memory and never reach a repr, log or error message.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable

from .. import wire
from ..base import Action, Event, Publish
from ..errors import DecodeError, LocalProtocolError
from ..identity import Identity
from .noise import Dh, HandshakeResult, StaticKey, TimestampSource, x25519
from .pq import mlkem_available, require_mlkem
from .data import (KEEPALIVE_TIMEOUT, MAX_PAYLOAD, REJECT_AFTER_TIME, REKEY_TIMEOUT,
                           FrameRejected, KeyRing, KeypairExpired, NoKeypair, ReleaseIndex,
                           ReplayedFrame, SendKeepalive, parse_header)
from .events import (DATA_TYPE, INNER_APP, INNER_PQ_ANSWER, INNER_PQ_OFFER,
                             DeliverPlain, SendFailed, SendPlain, SendSessionFrame,
                             SessionClosed, SessionEstablished, SessionFrameIn)
from .guard import HandshakeGuard, PendingInit
from .pq_exchange import make_offer, take_answer, take_offer
from .responder import InitiationDesk
from .messages import CookieReply, HandshakeInit, HandshakeResp
from .initiator import Dialer
from .peer import QUEUE_LIMIT, IndexPool, KeyMeta, PeerState, SessionRow

MAX_APP_PAYLOAD = MAX_PAYLOAD - 2  # the inner type and proto bytes ride in the same frame
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT  # 165 s


def _counting(dh: Dh, counters: Counter[str]) -> Dh:
    """``dh`` counting each call in ``counters["dh_operations"]``."""
    def counted(private, public: bytes) -> bytes:
        counters["dh_operations"] += 1
        return dh(private, public)
    return counted


class SessionManager:
    """All end-to-end sessions of one node; see the module docstring."""

    def __init__(self, identity: Identity, *, rng: random.Random, pq: bool = True,
                 pq_required: bool = False, accept: Callable[[bytes], bool] | None = None,
                 dh: Dh = x25519, queue_limit: int = QUEUE_LIMIT, wall_offset: float = 0.0,
                 guard: HandshakeGuard | None = None,
                 timestamps: TimestampSource | None = None,
                 data_keys: Callable[[Any, float], object] | None = None) -> None:
        if pq_required:
            require_mlkem()  # a hard error: the contract demands what this node lacks
        self.public_key = identity.public_key
        self.static = StaticKey(identity)
        self.pq = (pq or pq_required) and mlkem_available()
        self.pq_required = pq_required
        self.keyring = KeyRing(data_keys)  # data_keys: the data path's keypair factory
        self.guard = guard if guard is not None else HandshakeGuard()
        self.counters: Counter[str] = Counter()
        dh = _counting(dh, self.counters)
        self._rng, self._dh = rng, dh
        self._tries: dict[bytes, int] = {}  # peer key -> msg1s of its current series
        self._desk = InitiationDesk(self.static, rng=rng, dh=dh, guard=self.guard,
                                    counters=self.counters, accept=accept)
        self._timestamps = timestamps if timestamps is not None else TimestampSource()
        self._wall_offset, self._queue_limit = wall_offset, queue_limit
        self._peers: dict[bytes, PeerState] = {}
        self._meta: dict[int, KeyMeta] = {}  # local index of a live keypair
        self._indices = IndexPool(rng)  # every local index in use
        self._dialer = Dialer(self.static, rng=rng, dh=dh, timestamps=self._timestamps,
                              wall_offset=wall_offset, indices=self._indices,
                              counters=self.counters)
        self._frame_handlers = {HandshakeInit.TYPE: self._desk.arrive,
                                HandshakeResp.TYPE: self._resp_in,
                                CookieReply.TYPE: self._cookie_in}

    # -- sans-IO shape ---------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        match event:
            case SendPlain():
                return self._send_plain(event, now)
            case SessionFrameIn():
                return self._frame_in(event, now)
        raise LocalProtocolError(f"SessionManager cannot handle {type(event).__name__}")

    def next_deadline(self) -> float | None:
        times = [self.keyring.next_deadline(), self.guard.oldest()]
        for p in self._peers.values():
            times += [p.retry_at, p.pq_retry_at]
        return min((t for t in times if t is not None), default=None)

    def on_timer(self, now: float) -> list[Action]:
        acts: list[Action] = []
        work = handled = 0
        while self.guard and work < self.guard.budget and handled < self.guard.cheap_budget:
            answer, did_dh = self._answer(self.guard.pop(), now)
            acts += answer
            work, handled = work + did_dh, handled + 1
        acts += self._keyring_actions(self.keyring.on_timer(now), now)
        for peer in list(self._peers.values()):
            if peer.retry_at is not None and now >= peer.retry_at:
                acts += self._retry(peer, now)
            if peer.pq_retry_at is not None and now >= peer.pq_retry_at:
                acts += self._offer_pq(peer, now)
        return acts

    # -- API -------------------------------------------------------------------------

    def sessions(self, now: float) -> list[SessionRow]:
        """One row per peer with keys or a handshake under way (``sporenet sessions``)."""
        rows = []
        for p in self._peers.values():
            _, cur, _ = self.keyring.keypairs(p.key)
            meta = self._meta.get(cur.local_index) if cur is not None else None
            rows.append(p.row(cur, meta, self.pq_required, now))
        return rows

    def answering(self, peer: bytes) -> bool:
        """Whether ``peer`` opened the session we hold with it (we answered its handshake):
        the contract's rules say who may open one, and a session carries both ways."""
        _, cur, nxt = self.keyring.keypairs(peer)
        return any(kp is not None and not kp.initiator for kp in (cur, nxt))

    def guard_report(self, now: float) -> dict:
        """The handshake flood guard as an operator sees it: load, queue, DH work and
        what happened to arriving initiations (the counters, by reason)."""
        g, c = self.guard, self.counters
        return {"under_load": g.under_load(now), "queued": len(g),
                "under_load_since": g.load_since, "under_load_entries": g.load_entries,
                "dh_operations": c["dh_operations"],
                "initiations": {"bad_mac1": c["init_bad_mac1"],
                                "rate_limited_link": c["init_rate_link"],
                                "rate_limited_source": c["init_rate_source"],
                                "queue_full": c["init_queue_full"],
                                "cookie_sent": c["cookie_sent"],
                                "answered": c["init_answered"]}}

    def rekey(self, peer: bytes, now: float) -> list[Action]:
        """Start a new handshake with ``peer`` now (the current keys keep working)."""
        return self._start_handshake(self._peer(peer), now)

    def confirm(self, index: int, now: float) -> list[Action]:
        """The data path opened a frame under our unconfirmed keypair ``index``: key
        confirmation, as a session data frame under it would be."""
        return self._keyring_actions(self.keyring.confirm(index), now)

    def remove_peer(self, peer: bytes) -> list[Action]:
        """Forget ``peer`` (revoked by the contract): keys, queue, psk, attempt."""
        state = self._peers.pop(peer, None)
        self._tries.pop(peer, None)
        if state is not None:
            self._dialer.drop(state)
        acts = self._keyring_actions(self.keyring.remove_peer(peer), 0.0)
        return acts + [Publish(SessionClosed(peer, "removed"))] if state is not None else acts

    # -- sending ---------------------------------------------------------------------

    def _peer(self, key: bytes) -> PeerState:
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = PeerState(key, self._queue_limit)
        return peer

    def _send_plain(self, ev: SendPlain, now: float) -> list[Action]:
        if ev.peer == self.public_key:
            raise LocalProtocolError("no session with ourselves")
        if not 0 <= ev.proto <= 0xFF:
            raise LocalProtocolError(f"overlay proto {ev.proto} out of u8 range")
        if len(ev.payload) > MAX_APP_PAYLOAD:
            raise LocalProtocolError(
                f"payload of {len(ev.payload)} bytes exceeds {MAX_APP_PAYLOAD}")
        peer = self._peer(ev.peer)
        acts: list[Action] = []
        sent = self._seal_app(peer, ev.proto, ev.payload, now) if (
            not peer.queue and self._sendable(peer, now)) else None
        if sent is None:
            self._enqueue(peer, ev.proto, ev.payload)
        else:
            acts += sent
        if peer.attempt is None and self.keyring.rekey_due(peer.key, now):
            acts += self._start_handshake(peer, now)
        return acts

    def _enqueue(self, peer: PeerState, proto: int, payload: bytes) -> None:
        if not peer.enqueue(proto, payload):
            self.counters["queue_dropped"] += 1

    def _current_meta(self, peer: PeerState, now: float) -> KeyMeta | None:
        _, cur, _ = self.keyring.keypairs(peer.key)
        if cur is None or now - cur.created >= REJECT_AFTER_TIME:
            return None
        return self._meta.get(cur.local_index)

    def _sendable(self, peer: PeerState, now: float) -> bool:
        meta = self._current_meta(peer, now)
        return meta is not None and (meta.pq or not self.pq_required)

    def _seal(self, peer: PeerState, plaintext: bytes, now: float) -> list[Action]:
        """Control plaintext (keepalive, PQ) under the current keypair, if any is usable."""
        try:
            frame = self.keyring.seal(peer.key, plaintext, now)
        except (NoKeypair, KeypairExpired):
            self.counters["seal_no_keypair"] += 1
            return []
        return [SendSessionFrame.of(peer.address, frame)]

    def _seal_app(self, peer: PeerState, proto: int, payload: bytes,
                  now: float) -> list[Action] | None:
        """Application data under the current keypair; None if it cannot seal."""
        try:
            frame = self.keyring.seal(peer.key, bytes((INNER_APP, proto)) + payload, now)
        except (NoKeypair, KeypairExpired):
            return None
        peer.bytes_out += len(payload)
        return [SendSessionFrame.of(peer.address, frame)]

    def _flush(self, peer: PeerState, now: float) -> list[Action]:
        acts: list[Action] = []
        while peer.queue and self._sendable(peer, now):
            sent = self._seal_app(peer, *peer.queue[0], now)
            if sent is None:
                break
            peer.queue.popleft()
            acts += sent
        return acts

    # -- initiator -------------------------------------------------------------------

    def _start_handshake(self, peer: PeerState, now: float) -> list[Action]:
        return self._tried(peer, self._dialer.start(peer, now, pq=self.pq))

    def _tried(self, peer: PeerState, sent: list[Action]) -> list[Action]:
        if sent:  # a msg1 left (the dialer may only have scheduled one)
            self._tries[peer.key] = self._tries.get(peer.key, 0) + 1
        return sent

    def _retry(self, peer: PeerState, now: float) -> list[Action]:
        sent = self._dialer.due(peer, now, pq=self.pq)
        if sent is not None:
            return self._tried(peer, sent)
        self._tries.pop(peer.key, None)
        dropped = len(peer.queue)
        peer.queue.clear()
        if not any(self.keyring.keypairs(peer.key)):
            del self._peers[peer.key]
        return [SendFailed(peer.key, dropped, "handshake timed out")]

    def _resp_in(self, msg: HandshakeResp, ev: SessionFrameIn, now: float) -> list[Action]:
        out = self._dialer.response(msg, now)
        if isinstance(out, list):
            return out
        peer, result = out
        tries = self._tries.pop(peer.key, 1)
        self.counters[f"handshake_ok_after_{tries if tries < 5 else '5+'}"] += 1
        acts = self._install(result, now, pq=peer.attempt_pq)
        peer.pq_tries = 0
        sent = self._offer_pq(peer, now) if self.pq else []
        sent += self._flush(peer, now)
        if not sent:  # confirm our keys to the responder (WireGuard sends a keepalive)
            sent = self._seal(peer, b"", now)
        return acts + sent

    def _cookie_in(self, msg: CookieReply, ev: SessionFrameIn, now: float) -> list[Action]:
        self._dialer.cookie(msg, now)
        return []

    # -- PQ --------------------------------------------------------------------------

    def _offer_pq(self, peer: PeerState, now: float) -> list[Action]:
        offer = make_offer(peer, self._current_meta(peer, now), self._rng, self.counters, now)
        return self._seal(peer, offer, now) if offer is not None else []

    def _pq_answer_in(self, peer: PeerState, body: bytes, now: float) -> list[Action]:
        if not take_answer(peer, body, self.counters, now):
            return []
        meta = self._current_meta(peer, now)
        if meta is not None and not meta.pq:
            return self._start_handshake(peer, now)  # the immediate PQ rekey
        return []

    # -- responder -------------------------------------------------------------------

    def _frame_in(self, ev: SessionFrameIn, now: float) -> list[Action]:
        frame = ev.frame
        if len(frame) < wire.HEADER_SIZE or frame[0] != wire.VERSION:
            self.counters["malformed"] += 1
            return []
        if frame[1] == DATA_TYPE:
            return self._data_in(ev, now)
        handler = self._frame_handlers.get(frame[1])
        if handler is None:
            self.counters["unexpected_type"] += 1
            return []
        try:
            msg = wire.decode_frame(frame)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        return handler(msg, ev, now) or []

    def _answer(self, item: PendingInit, now: float) -> tuple[list[Action], bool]:
        """Answer one queued msg1; the flag says whether it cost DH work."""
        early = self._desk.screen(item, now)
        if early is not None:
            return early, False
        index = self._indices.take()
        out, pq = self._desk.respond(item, now, index, self._inbound_psk)
        if out is None:
            self._indices.release(index)
            return [], True
        acts = self._install(out.result, now, pq=pq)
        return acts + [SendSessionFrame.of(item.src_address, wire.encode_frame(out.reply))], True

    def _inbound_psk(self, key: bytes, now: float) -> bytes | None:
        peer = self._peers.get(key)
        return peer.valid_psk(False, now) if peer is not None and self.pq else None

    # -- keys ------------------------------------------------------------------------

    def _install(self, result: HandshakeResult, now: float, *, pq: bool) -> list[Action]:
        peer = self._peer(result.remote_public_key)
        self._meta[result.local_index] = KeyMeta(peer.key, result.transcript_hash, pq)
        acts = self._keyring_actions(self.keyring.install(result, now), now)
        if peer.first_at is None:
            peer.first_at = now
        peer.handshakes += 1
        self.counters["handshakes"] += 1
        return acts + [Publish(SessionEstablished(peer.key, result.initiator, pq,
                                                  peer.handshakes - 1))]

    def _keyring_actions(self, actions: list[Action], now: float) -> list[Action]:
        out: list[Action] = []
        for a in actions:
            if isinstance(a, ReleaseIndex):
                self._indices.release(a.local_index)
                meta = self._meta.pop(a.local_index, None)
                if meta is not None:
                    out += self._maybe_closed(meta.peer)
            elif isinstance(a, SendKeepalive):
                peer = self._peers.get(a.peer)
                if peer is not None and self._current_meta(peer, now) is not None:
                    out += self._seal(peer, b"", now)
            else:
                out.append(a)
        return out

    def _maybe_closed(self, key: bytes) -> list[Action]:
        peer = self._peers.get(key)
        if peer is None or any(self.keyring.keypairs(key)):
            return []
        if peer.attempt is None and peer.retry_at is None and not peer.queue:
            del self._peers[key]
        return [Publish(SessionClosed(key, "expired"))]

    def _data_in(self, ev: SessionFrameIn, now: float) -> list[Action]:
        try:
            index, _ = parse_header(ev.frame)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        meta = self._meta.get(index)
        try:
            key, plaintext = self.keyring.open(ev.frame, now)
        except (FrameRejected, DecodeError) as exc:
            self.counters[f"data_{type(exc).__name__}"] += 1
            if isinstance(exc, ReplayedFrame) and meta is not None and meta.peer in self._peers:
                self._peers[meta.peer].replay_drops += 1
            return []
        assert meta is not None  # the ring found the keypair, so we recorded it
        peer = self._peer(key)
        acts = self._dispatch(peer, meta, plaintext, now)
        acts += self._flush(peer, now)
        _, cur, _ = self.keyring.keypairs(key)
        if (cur is not None and cur.initiator and peer.attempt is None
                and now - cur.created >= REKEY_ON_RECEIVE_AGE):
            acts += self._start_handshake(peer, now)  # WireGuard: rekey on receive
        return acts

    def _dispatch(self, peer: PeerState, meta: KeyMeta, plaintext: bytes,
                  now: float) -> list[Action]:
        if not plaintext:
            self.counters["keepalive_in"] += 1
            return []
        kind, body = plaintext[0], plaintext[1:]
        if kind == INNER_APP and body:
            if self.pq_required and not meta.pq:
                self.counters["data_pq_required"] += 1
                return []
            peer.bytes_in += len(body) - 1
            return [DeliverPlain(peer.key, peer.address, body[0], body[1:])]
        if kind == INNER_PQ_OFFER:
            if not self.pq:
                self.counters["pq_offer_ignored"] += 1
                return []
            answer = take_offer(peer, meta, body, self.counters, now)
            return self._seal(peer, answer, now) if answer is not None else []
        if kind == INNER_PQ_ANSWER:
            return self._pq_answer_in(peer, body, now)
        self.counters["data_unknown_inner"] += 1
        return []

    def __repr__(self) -> str:
        return (f"SessionManager(peers={len(self._peers)}, keypairs={len(self.keyring)}, "
                f"pq={self.pq}, pq_required={self.pq_required})")
