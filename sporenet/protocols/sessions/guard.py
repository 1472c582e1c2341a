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
  1024/8 = 128, sticky 1 s). A link bucket that refuses an initiation also puts the
  node under load (``overflow``): one neighbour's flood never fills the queue (its
  bucket caps it first), yet it is a flood, and without this every one of its
  ``LINK_RATE`` initiations per second would cost a DH (security.md T08: no DH
  without a valid mac2 during a flood). Under load the responder wants mac2 (a cookie
  bound to ingress link and claimed source) and answers without one by a cookie reply.
- Once mac2 proved that the claimed source receives our traffic, a token bucket per
  claimed source (WireGuard's per-IP 20/s, burst 5) bounds the DH work it may cause.
  Before that proof the claim is free, so a bucket would let a spoofer lock out the
  real owner: the source bucket applies only under load, after mac2, as in WG.
- The caller answers at most ``budget`` initiations that cost Diffie-Hellman work, and
  ``cheap_budget`` in all, per ``on_timer`` call, so its thread stays responsive
  however many arrive; the rest wait (and the waiting is what "under load" measures).

Before all that, ``InitiationScreen`` can run on the receive path of the links (the
carrier's I/O thread, before the frame crosses the node bus): a ``Routed`` link frame
that carries a msg1 to this node and fails mac1 is dropped there, at the cost of one
BLAKE2s, so a bad-mac1 flood never reaches the overlay agent (issue [3/7] T08). Valid
ones beyond ``SCREEN_RATE`` per connection (twice a link bucket, so the excess that
passes still overflows the link bucket here and puts the node under load) are shed
there too: a neighbour flooding valid-mac1 msg1s costs the overlay at most
``SCREEN_RATE`` of them per second.

Sans-IO: ``now`` comes in; buckets are forgotten once full again (bounded memory).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import deque
from dataclasses import dataclass

from .. import wire
from .cookie import mac, mac1_key
from ..identity import address_of
from .noise import noise_public_key
from ..routed import ADDRESS_SIZE, Proto, Routed
from .messages import MAC_SIZE, HandshakeInit

QUEUE_LIMIT = 1024  # wireguard-go QueueHandshakeSize
UNDER_LOAD_QUEUE = 128  # QueueHandshakeSize / 8
UNDER_LOAD_STICKY = 1.0  # UnderLoadAfterTime
SOURCE_RATE, SOURCE_BURST = 20.0, 5.0  # wireguard-go ratelimiter: 20 packets/s, burst 5
LINK_RATE, LINK_BURST = 200.0, 50.0  # one link carries many sources' handshakes
PROCESS_BUDGET = 32  # initiations that cost DH work, per on_timer call
CHEAP_BUDGET = 256  # initiations handled per on_timer call in all (cookie replies, drops)
MAX_BUCKETS = 65_536  # beyond this, stale buckets are swept first
SCREEN_RATE, SCREEN_BURST = 2 * LINK_RATE, 2 * LINK_BURST  # per connection, before the bus


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
        self.load_since: float | None = None  # when the current (or last) load began
        self.load_entries = 0  # times the node went under load
        self.sources = TokenBuckets(SOURCE_RATE, SOURCE_BURST)
        self.links = TokenBuckets(LINK_RATE, LINK_BURST)

    def offer(self, item: PendingInit) -> bool:
        """Queue ``item``; False (drop it) if the queue is full."""
        if len(self._queue) >= self.queue_limit:
            return False
        self._queue.append(item)
        if len(self._queue) >= self.under_load_queue:
            self._loaded(item.arrived)
        return True

    def overflow(self, now: float) -> None:
        """A link bucket refused an initiation: under load for ``UNDER_LOAD_STICKY`` s."""
        self._loaded(now)

    def _loaded(self, now: float) -> None:
        if now >= self._load_until:
            self.load_since = now
            self.load_entries += 1
        self._load_until = now + UNDER_LOAD_STICKY

    def under_load(self, now: float) -> bool:
        if len(self._queue) >= self.under_load_queue:
            self._loaded(now)
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


_DST = wire.HEADER_SIZE + ADDRESS_SIZE  # Routed body: src | dst | hop_limit | hops | proto
_PROTO = _DST + ADDRESS_SIZE + 2
_INNER = _PROTO + 1
ROUTED_INIT_SIZE = _INNER + HandshakeInit.SIZE  # a link frame carrying one msg1


class InitiationScreen:
    """Drops link frames that carry a msg1 for this node with a wrong mac1, unparsed,
    and valid ones over ``SCREEN_RATE`` per connection.

    ``drop(conn, frame, now)`` looks only at a ``Routed`` frame (exact msg1 size)
    addressed to this node, overlay proto SESSION_HANDSHAKE, holding a
    ``HandshakeInit``. True (drop it) if its mac1 is not MAC(HASH("mac1----" || our
    Noise static), ...), the check ``InitiationDesk`` would make first, made here
    before decoding, queueing or any bus hop; or if connection ``conn`` (the carrier's
    id: one link) has sent more such msg1s than its bucket allows. Everything else
    (transit frames, other types, malformed frames) is False and takes the normal
    path. It never raises. ``dropped`` (bad mac1) and ``rate_limited`` count the drops;
    they are written by the one thread that calls ``drop`` and may be read from any other.
    """

    __slots__ = ("_dst", "_key", "_buckets", "dropped", "rate_limited")

    def __init__(self, public_key: bytes, *, rate: float = SCREEN_RATE,
                 burst: float = SCREEN_BURST) -> None:
        """``public_key``: this node's Ed25519 key (its address and Noise static)."""
        self._dst = address_of(public_key).packed
        self._key = mac1_key(noise_public_key(public_key))
        self._buckets = TokenBuckets(rate, burst, limit=4096)
        self.dropped = self.rate_limited = 0

    def drop(self, conn: int, frame: bytes, now: float) -> bool:
        if (len(frame) != ROUTED_INIT_SIZE or frame[0] != wire.VERSION or frame[1] != Routed.TYPE
                or frame[_PROTO] != Proto.SESSION_HANDSHAKE
                or frame[_INNER + 1] != HandshakeInit.TYPE
                or frame[_DST:_DST + ADDRESS_SIZE] != self._dst):
            return False
        end = len(frame) - 2 * MAC_SIZE
        if not hmac.compare_digest(mac(self._key, frame[_INNER:end]), frame[end:end + MAC_SIZE]):
            self.dropped += 1
            return True
        if not self._buckets.allow(conn, now):
            self.rate_limited += 1
            return True
        return False

    def __repr__(self) -> str:
        return f"InitiationScreen(dropped={self.dropped}, rate_limited={self.rate_limited})"
