"""The initiator's side of session handshakes: attempts, retries, cookies, give-up.

Driven by ``SessionManager``: ``start`` (a session or rekey is needed), ``due`` when a
peer's ``retry_at`` passes, ``response`` and ``cookie`` for 0x21/0x22 frames. The
manager installs the keys a response yields.

Rules (WireGuard whitepaper §6.4, §5.4.7):
- One attempt per peer: a new one replaces the old (its index is freed, a late answer
  to it finds nothing). Retry every Rekey-Timeout (5 s) plus up to 334 ms of jitter;
  give up Rekey-Attempt-Time (90 s) after the first attempt of the series.
- A cookie reply is kept in the peer's jar; the next retry carries mac2.
- Our msg1s to one peer are at least ``INIT_SPACING`` apart, counted from the last one
  sent or answered: the responder refuses a second within 1/50 s of the last it took
  (``sessions.noise.InitiationFlood``), and a PQ rekey comes one short round trip after a
  handshake.
- The low bit of an initiator index says whether the attempt uses our outbound PQ
  psk (``session_responder`` reads it). A response that does not decrypt under that
  psk means the peer lost it: retry at once without one, counted.
"""

from __future__ import annotations

import random
from collections import Counter

from .. import wire
from ..base import Action
from .cookie import HandshakeRejected
from .noise import (INITIATION_MIN_INTERVAL, ZERO_PSK, DecryptFailed, Dh, HandshakeResult,
                    Initiator, StaticKey, TimestampSource)
from .data import REKEY_TIMEOUT
from .events import SendSessionFrame
from .messages import CookieReply, HandshakeResp
from .peer import REKEY_ATTEMPT_TIME, REKEY_TIMEOUT_JITTER, IndexPool, PeerState

INIT_SPACING = 2 * INITIATION_MIN_INTERVAL  # margin for jitter between our sends and arrival


class Dialer:
    """Handshake attempts of one node towards its peers. Counts every outcome."""

    def __init__(self, static: StaticKey, *, rng: random.Random, dh: Dh,
                 timestamps: TimestampSource, wall_offset: float, indices: IndexPool,
                 counters: Counter[str]) -> None:
        self.static, self._rng, self._dh = static, rng, dh
        self._timestamps, self._wall_offset = timestamps, wall_offset
        self._indices, self.counters = indices, counters
        self._pending: dict[int, PeerState] = {}  # index of an attempt in flight

    def start(self, peer: PeerState, now: float, *, pq: bool) -> list[Action]:
        """Send a msg1 to ``peer`` now, or schedule it once spacing allows."""
        if now < peer.last_init_at + INIT_SPACING:
            peer.retry_at = peer.last_init_at + INIT_SPACING
            if peer.attempt_started is None:
                peer.attempt_started = now
            return []
        self.drop(peer)
        peer.last_init_at = now
        psk = peer.valid_psk(True, now) if pq else None
        index = self._indices.take(hint=int(psk is not None))
        ini = Initiator(self.static, peer.key, local_index=index, rng=self._rng.randbytes,
                        clock=self._timestamps, psk=psk or ZERO_PSK, cookies=peer.jar,
                        dh=self._dh)
        msg = ini.create_init(now + self._wall_offset)
        peer.attempt, peer.attempt_pq = ini, psk is not None
        self._pending[index] = peer
        if peer.attempt_started is None:
            peer.attempt_started = now
        peer.retry_at = now + REKEY_TIMEOUT + self._rng.uniform(0, REKEY_TIMEOUT_JITTER)
        self.counters["handshake_sent"] += 1
        return [SendSessionFrame.of(peer.address, wire.encode_frame(msg))]

    def drop(self, peer: PeerState) -> None:
        """Abandon the attempt in flight, if any (its index is free again)."""
        if peer.attempt is not None:
            self._pending.pop(peer.attempt.local_index, None)
            self._indices.release(peer.attempt.local_index)
            peer.attempt = None

    def due(self, peer: PeerState, now: float, *, pq: bool) -> list[Action] | None:
        """The retry at ``peer.retry_at``; None once Rekey-Attempt-Time is spent."""
        started = peer.attempt_started if peer.attempt_started is not None else now
        if now - started < REKEY_ATTEMPT_TIME:
            return self.start(peer, now, pq=pq)
        self.drop(peer)
        peer.retry_at = peer.attempt_started = None
        self.counters["handshake_gave_up"] += 1
        return None

    def _attempt_for(self, index: int, what: str) -> PeerState | None:
        peer = self._pending.get(index)
        if peer is None or peer.attempt is None:
            self.counters[f"{what}_unknown_index"] += 1
            return None
        return peer

    def response(self, msg: HandshakeResp,
                 now: float) -> tuple[PeerState, HandshakeResult] | list[Action]:
        """``(peer, keys)`` for the manager to install, or what to do instead."""
        peer = self._attempt_for(msg.receiver_index, "resp")
        if peer is None or peer.attempt is None:
            return []
        try:
            result = peer.attempt.consume_response(msg)
        except HandshakeRejected as exc:
            self.counters[f"resp_{type(exc).__name__}"] += 1
            if isinstance(exc, DecryptFailed) and peer.attempt_pq:
                # The peer answered under another psk (it lost ours): go classical now.
                peer.forget_psk(True)
                peer.last_init_at = now
                return self.start(peer, now, pq=False)
            return []
        del self._pending[msg.receiver_index]
        peer.attempt, peer.retry_at, peer.attempt_started = None, None, None
        peer.last_init_at = now  # the responder took our msg1 before now: space from here
        return peer, result

    def cookie(self, msg: CookieReply, now: float) -> None:
        peer = self._attempt_for(msg.receiver_index, "cookie")
        if peer is None or peer.attempt is None:
            return
        try:
            peer.attempt.consume_cookie(msg, now + self._wall_offset)
        except HandshakeRejected as exc:
            self.counters[f"cookie_{type(exc).__name__}"] += 1
            return
        self.counters["cookie_received"] += 1  # the next retry carries mac2, as WireGuard
