"""Per-peer state of the session manager (``sessions/manager.py``): queue, handshake, PQ, stats.

Invariants:
- At most one handshake attempt per peer is in flight; a new attempt replaces the
  old one (its index is released, a late answer to it is dropped), as WireGuard.
- Two psk slots hold ML-KEM-derived psks, only in memory, for ``PSK_LIFETIME``
  seconds: ``outbound`` (from the last exchange we offered; our next initiation uses
  it) and inbound (from the last offer we answered; we answer the peer's next
  initiation with it). The peer holds the same two values, mirrored.
- The send queue is bounded; the oldest entry is dropped (and counted) first.
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from dataclasses import dataclass, field

from .cookie import CookieJar
from ..identity import address_of
from .noise import Initiator, noise_public_key
from .pq import PqInitiator
from .data import REJECT_AFTER_TIME, Keypair
from .events import SessionRow

REKEY_ATTEMPT_TIME = 90.0  # WireGuard: give up a handshake after 90 s of retries
REKEY_TIMEOUT_JITTER = 0.334  # WireGuard: up to 334 ms added to each retry
PSK_LIFETIME = REJECT_AFTER_TIME + REKEY_ATTEMPT_TIME  # a psk outlives its session's keys
QUEUE_LIMIT = 128  # queued sends per peer while no session


@dataclass(frozen=True, slots=True)
class KeyMeta:
    """What the manager remembers of a keypair, by our local index."""

    peer: bytes
    transcript_hash: bytes = field(repr=False)
    pq: bool


class IndexPool:
    """Our receiver indices in use (keypairs and attempts), drawn at random (WG §5.4.1)."""

    __slots__ = ("_rng", "_used")

    def __init__(self, rng: random.Random) -> None:
        self._rng, self._used = rng, set[int]()

    def take(self, hint: int | None = None) -> int:
        """A free u32; with ``hint``, its low bit is ``hint`` (initiators' psk flag)."""
        while True:
            index = self._rng.getrandbits(32)
            if hint is not None:
                index = (index & ~1) | hint
            if index not in self._used:
                self._used.add(index)
                return index

    def release(self, index: int) -> None:
        self._used.discard(index)

    def __len__(self) -> int:
        return len(self._used)


class PeerState:
    """One remote peer, known by its Ed25519 key. Owned by ``SessionManager``."""

    __slots__ = ("key", "address", "queue", "jar", "attempt", "attempt_pq", "attempt_started",
                 "retry_at", "last_init_at", "_psks", "pq_exchange", "pq_hash",
                 "pq_retry_at", "pq_tries", "first_at", "handshakes", "bytes_in", "bytes_out",
                 "replay_drops")

    def __init__(self, key: bytes, queue_limit: int = QUEUE_LIMIT) -> None:
        self.key = key
        self.address: ipaddress.IPv6Address = address_of(key)
        self.queue: deque[tuple[int, bytes]] = deque(maxlen=queue_limit)
        self.jar = CookieJar(noise_public_key(key))  # shared by successive attempts
        self.attempt: Initiator | None = None
        self.attempt_pq = False  # the attempt in flight uses the PQ psk
        self.attempt_started: float | None = None  # first attempt of this series
        self.retry_at: float | None = None
        self.last_init_at = float("-inf")  # our last msg1 went out, or its answer came
        self._psks: dict[bool, tuple[bytes, float]] = {}  # outbound? -> (psk, born)
        self.pq_exchange: PqInitiator | None = None
        self.pq_hash = b""  # transcript hash of the keypair the offer went out under
        self.pq_retry_at: float | None = None
        self.pq_tries = 0  # offers sent in the current session
        self.first_at: float | None = None
        self.handshakes = 0
        self.bytes_in = self.bytes_out = self.replay_drops = 0

    def enqueue(self, proto: int, payload: bytes) -> bool:
        """Queue a send; False if the oldest entry had to go to make room."""
        full = len(self.queue) == self.queue.maxlen
        self.queue.append((proto, payload))
        return not full

    def valid_psk(self, outbound: bool, now: float) -> bytes | None:
        """The psk for our initiations (``outbound``) or for answering the peer's."""
        slot = self._psks.get(outbound)
        if slot is None or now - slot[1] >= PSK_LIFETIME:
            self._psks.pop(outbound, None)
            return None
        return slot[0]

    def set_psk(self, outbound: bool, psk: bytes, now: float) -> None:
        self._psks[outbound] = (psk, now)

    def forget_psk(self, outbound: bool) -> None:
        self._psks.pop(outbound, None)

    def row(self, current: Keypair | None, meta: KeyMeta | None, pq_required: bool,
            now: float) -> SessionRow:
        pq = meta is not None and meta.pq
        if current is None:
            state = "handshake"
        else:
            state = "pq_pending" if pq_required and not pq else "established"
        return SessionRow(
            self.key, str(self.address), state,
            0.0 if self.first_at is None else now - self.first_at,
            None if current is None else now - current.created, max(0, self.handshakes - 1),
            self.bytes_in, self.bytes_out, self.replay_drops, pq,
            None if current is None else current.initiator, len(self.queue))

    def __repr__(self) -> str:
        return (f"PeerState(peer={self.key[:4].hex()}, queued={len(self.queue)}, "
                f"handshakes={self.handshakes}, psk=<redacted>)")
