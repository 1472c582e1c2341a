"""Handshake flood guard: the bounded queue of pending initiations, load, rate limits.

WireGuard's design (whitepaper §5.3, wireguard-go ``device/receive.go`` and
``ratelimiter``), adapted to handshakes that reach us over the overlay:

- Every ``HandshakeInit`` has passed mac1 (one BLAKE2s, no DH) before it is queued.
- Before queueing, a token bucket per ingress link (authenticated by the link layer,
  so it cannot be spoofed) keeps one neighbour from filling the queue. A flood and a
  legitimate peer behind the same link share that link's budget.
- The queue is bounded (``QUEUE_LIMIT``); a full queue drops the newest arrival.
- The node is *under load* while the queue holds at least ``UNDER_LOAD_QUEUE``
  initiations, and stays so for ``UNDER_LOAD_STICKY`` seconds after (wireguard-go:
  1024/8 = 128, sticky 1 s). Under load the responder wants mac2 (a cookie bound to
  ingress link and claimed source) and answers without one by a cookie reply.
- Once mac2 proved that the claimed source receives our traffic, a token bucket per
  claimed source (WireGuard's per-IP 20/s, burst 5) bounds the DH work it may cause.
  Before that proof the claim is free, so a bucket would let a spoofer lock out the
  real owner: the source bucket applies only under load, after mac2, as in WG.
- The caller answers at most ``budget`` initiations that cost Diffie-Hellman work, and
  ``cheap_budget`` in all, per ``on_timer`` call, so its thread stays responsive
  however many arrive; the rest wait (and the waiting is what "under load" measures).

Sans-IO: ``now`` comes in; buckets are forgotten once full again (bounded memory).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass

from .session_messages import HandshakeInit

QUEUE_LIMIT = 1024  # wireguard-go QueueHandshakeSize
UNDER_LOAD_QUEUE = 128  # QueueHandshakeSize / 8
UNDER_LOAD_STICKY = 1.0  # UnderLoadAfterTime
SOURCE_RATE, SOURCE_BURST = 20.0, 5.0  # wireguard-go ratelimiter: 20 packets/s, burst 5
LINK_RATE, LINK_BURST = 200.0, 50.0  # one link carries many sources' handshakes
PROCESS_BUDGET = 32  # initiations that cost DH work, per on_timer call
CHEAP_BUDGET = 256  # initiations handled per on_timer call in all (cookie replies, drops)
MAX_BUCKETS = 65_536  # beyond this, stale buckets are swept first


class TokenBuckets:
    """Token buckets keyed by bytes, ``rate`` tokens/s up to ``burst``."""

    __slots__ = ("rate", "burst", "limit", "_buckets", "_swept_at")

    def __init__(self, rate: float, burst: float, limit: int = MAX_BUCKETS) -> None:
        self.rate, self.burst, self.limit = rate, burst, limit
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, at)
        self._swept_at = float("-inf")

    def allow(self, key: bytes, now: float) -> bool:
        """Take a token for ``key``. A new key finding the table full of live buckets
        is refused: sweeping costs O(table), so it runs at most once a second."""
        if key not in self._buckets and len(self._buckets) >= self.limit:
            if now - self._swept_at < 1.0:
                return False
            self.sweep(now)
            if len(self._buckets) >= self.limit:
                return False
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def sweep(self, now: float) -> None:
        """Forget buckets that have refilled (they equal a fresh bucket)."""
        self._swept_at = now
        self._buckets = {k: v for k, v in self._buckets.items()
                         if v[0] + (now - v[1]) * self.rate < self.burst}

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class PendingInit:
    """A mac1-checked initiation waiting for the responder."""

    msg: HandshakeInit
    ingress: bytes
    src_address: ipaddress.IPv6Address
    arrived: float

    @property
    def source_tag(self) -> bytes:
        """What the cookie binds to (cookie.py): ingress link id || claimed source."""
        return self.ingress + self.src_address.packed


class HandshakeGuard:
    """The queue, the load flag and both bucket sets. Driven by ``offer`` (arrival),
    ``pop()`` (the oldest), ``under_load(now)`` and ``allow(item, now)``."""

    def __init__(self, *, queue_limit: int = QUEUE_LIMIT,
                 under_load_queue: int = UNDER_LOAD_QUEUE,
                 budget: int = PROCESS_BUDGET, cheap_budget: int = CHEAP_BUDGET) -> None:
        self.queue_limit, self.under_load_queue = queue_limit, under_load_queue
        self.budget, self.cheap_budget = budget, cheap_budget
        self._queue: deque[PendingInit] = deque()
        self._load_until = float("-inf")
        self.sources = TokenBuckets(SOURCE_RATE, SOURCE_BURST)
        self.links = TokenBuckets(LINK_RATE, LINK_BURST)

    def offer(self, item: PendingInit) -> bool:
        """Queue ``item``; False (drop it) if the queue is full."""
        if len(self._queue) >= self.queue_limit:
            return False
        self._queue.append(item)
        if len(self._queue) >= self.under_load_queue:
            self._load_until = item.arrived + UNDER_LOAD_STICKY
        return True

    def under_load(self, now: float) -> bool:
        if len(self._queue) >= self.under_load_queue:
            self._load_until = now + UNDER_LOAD_STICKY
        return now < self._load_until

    def pop(self) -> PendingInit:
        """The oldest queued initiation."""
        return self._queue.popleft()

    def allow_link(self, item: PendingInit, now: float) -> bool:
        return self.links.allow(item.ingress, now)

    def allow_source(self, item: PendingInit, now: float) -> bool:
        return self.sources.allow(item.src_address.packed, now)

    def oldest(self) -> float | None:
        return self._queue[0].arrived if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
