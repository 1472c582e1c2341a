"""Chunked gossip of contracts (and fork evidence) larger than one link frame.

A ``ContractOffer`` (0x50) carries a contract in one frame, which holds about 1,000
members. Anything larger (up to ``MAX_PAYLOAD``: a contract is at most
``MAX_CONTRACT_SIZE`` = 1 MiB, fork evidence holds two) travels in three steps, the
receiver pulling at its own pace:

1. ``ContractAnnounce`` 0x52 (sender → neighbour): what is on offer, ``kind`` (1: a
   signed contract, 2: fork evidence), its network and version, ``ref`` (the
   contract's body hash, or the fork id) so a receiver can tell whether it wants it
   without fetching, and the payload's ``size`` and ``digest`` (BLAKE2b-256).
2. ``ContractChunkRequest`` 0x53 (receiver → sender): ``digest``, ``offset``,
   ``length`` (at most ``WINDOW``); the receiver asks for the next window only when the
   previous one is in, so a sender never queues more than ``WINDOW`` per request.
3. ``ContractChunk`` 0x54 (sender → receiver): ``digest``, ``total``, ``offset`` and up
   to ``CHUNK_SIZE`` bytes. The receiver appends in order, checks the digest of the
   whole payload, and only then hands it on to be decoded and verified.

Layouts (big-endian, after the frame header ``version:u8 | type:u8``)::

    ContractAnnounce     kind:u8 | network:text8 | version:u64 | ref[32] | size:u32 | digest[32]
    ContractChunkRequest digest[32] | offset:u32 | length:u32
    ContractChunk        digest[32] | total:u32 | offset:u32 | data (the rest, 1..CHUNK_SIZE)

Invariants (``Fetcher``, the receiving side; sans-IO, ``now`` is passed in):
- Memory is bounded: at most ``MAX_TRANSFERS`` transfers at once, each holding at most
  its announced size (≤ ``MAX_PAYLOAD``) of bytes that actually arrived; nothing is
  allocated from a declared length.
- Announcements that arrive while ``MAX_TRANSFERS`` run wait (at most ``MAX_WAITING``,
  newest kept) and start when a transfer ends.
- A transfer that makes no progress for ``REQUEST_TIMEOUT`` is asked again from the
  first missing byte, ``MAX_RETRIES`` times, then moves to another peer that announced
  the same digest, or is dropped; none lives past ``TRANSFER_TIMEOUT``.
- A peer that sends a bad chunk (wrong total, outside the window, digest mismatch) or
  a payload that does not decode or verify (``fail``) is counted, its transfer dropped,
  and its announcements ignored for ``BAN_TIME``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from .. import wire
from ..base import Action
from .contract import HASH_SIZE, MAX_CONTRACT_SIZE, MAX_U64, NAME_PATTERN
from ..errors import DecodeError, LocalProtocolError

CHUNK_SIZE = 32 * 1024
WINDOW = 4 * CHUNK_SIZE            # bytes per request: what one request may queue at a sender
MAX_PAYLOAD = 2 * MAX_CONTRACT_SIZE + 4  # fork evidence: u32 length | contract | contract
MAX_TRANSFERS = 2                  # concurrent fetches: ≤ 2 × MAX_PAYLOAD bytes held
REQUEST_TIMEOUT = 5.0              # s without progress before asking again
MAX_RETRIES = 3
TRANSFER_TIMEOUT = 120.0           # s: a whole transfer, whatever its progress
BAN_TIME = 60.0                    # s a peer's announcements are ignored after a bad transfer
MAX_ALTERNATES = 8                 # other peers remembered per transfer
MAX_WAITING = 4                    # announcements kept while MAX_TRANSFERS are busy
MAX_TRACKED_PEERS = 256            # bound of the ban and rate tables
KIND_CONTRACT = 1
KIND_FORK = 2
KINDS = (KIND_CONTRACT, KIND_FORK)


def digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=HASH_SIZE).digest()


def fits_one_frame(payload_size: int, overhead: int = 0) -> bool:
    """True if a frame carrying ``payload_size`` bytes (plus ``overhead``) fits the cap."""
    return wire.HEADER_SIZE + overhead + payload_size <= wire.MAX_FRAME_SIZE


def _bad(ok: bool, message: str) -> None:
    if not ok:
        raise LocalProtocolError(message)


def _check_hash(value: object, what: str) -> None:
    _bad(isinstance(value, bytes) and len(value) == HASH_SIZE, f"{what} must be {HASH_SIZE} bytes")


def _decoded(make):
    try:
        return make()
    except LocalProtocolError as exc:  # a field the dataclass refuses: the peer's fault
        raise DecodeError(str(exc)) from None


@wire.register
@dataclass(frozen=True, slots=True)
class ContractAnnounce(wire.Message):
    """A payload too large for one frame is on offer; fetch it with chunk requests."""

    TYPE: ClassVar[int] = 0x52
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + 1 + 1 + 63 + 8 + 32 + 4 + 32
    kind: int
    network: str
    version: int
    ref: bytes
    size: int
    digest: bytes

    def __post_init__(self) -> None:
        _bad(self.kind in KINDS, f"kind must be one of {KINDS}, not {self.kind!r}")
        _bad(isinstance(self.network, str) and bool(NAME_PATTERN.match(self.network)),
             f"{self.network!r} is not a network id")
        _bad(type(self.version) is int and 0 < self.version <= MAX_U64, "version must be 1..2^64-1")
        _check_hash(self.ref, "ref")
        _check_hash(self.digest, "digest")
        _bad(type(self.size) is int and 0 < self.size <= MAX_PAYLOAD,
             f"size must be 1..{MAX_PAYLOAD} bytes")

    def encode_body(self) -> bytes:
        return (wire.Writer().u8(self.kind).text8(self.network).u64(self.version).raw(self.ref)
                .u32(self.size).raw(self.digest).getvalue())

    @classmethod
    def decode_body(cls, r: wire.Reader) -> ContractAnnounce:
        kind, network, version, ref = r.u8(), r.text8(), r.u64(), r.take(HASH_SIZE)
        size, dig = r.u32(), r.take(HASH_SIZE)
        r.end()
        return _decoded(lambda: cls(kind, network, version, ref, size, dig))


@wire.register
@dataclass(frozen=True, slots=True)
class ContractChunkRequest(wire.Message):
    """Ask for ``length`` bytes at ``offset`` of the payload with ``digest``."""

    TYPE: ClassVar[int] = 0x53
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + 32 + 4 + 4
    digest: bytes
    offset: int
    length: int

    def __post_init__(self) -> None:
        _check_hash(self.digest, "digest")
        _bad(type(self.offset) is int and 0 <= self.offset < MAX_PAYLOAD,
             f"offset must be 0..{MAX_PAYLOAD - 1}")
        _bad(type(self.length) is int and 0 < self.length <= WINDOW, f"length must be 1..{WINDOW}")

    def encode_body(self) -> bytes:
        return wire.Writer().raw(self.digest).u32(self.offset).u32(self.length).getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> ContractChunkRequest:
        dig, offset, length = r.take(HASH_SIZE), r.u32(), r.u32()
        r.end()
        return _decoded(lambda: cls(dig, offset, length))


@wire.register
@dataclass(frozen=True, slots=True)
class ContractChunk(wire.Message):
    """``data`` at ``offset`` of the ``total``-byte payload with ``digest``."""

    TYPE: ClassVar[int] = 0x54
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + 32 + 4 + 4 + CHUNK_SIZE
    digest: bytes
    total: int
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        _check_hash(self.digest, "digest")
        _bad(type(self.total) is int and 0 < self.total <= MAX_PAYLOAD,
             f"total must be 1..{MAX_PAYLOAD}")
        _bad(isinstance(self.data, bytes) and 0 < len(self.data) <= CHUNK_SIZE,
             f"a chunk holds 1..{CHUNK_SIZE} bytes")
        _bad(type(self.offset) is int and 0 <= self.offset
             and self.offset + len(self.data) <= self.total, "chunk runs past the payload's end")

    def encode_body(self) -> bytes:
        return (wire.Writer().raw(self.digest).u32(self.total).u32(self.offset).raw(self.data)
                .getvalue())

    @classmethod
    def decode_body(cls, r: wire.Reader) -> ContractChunk:
        dig, total, offset, data = r.take(HASH_SIZE), r.u32(), r.u32(), r.rest()
        return _decoded(lambda: cls(dig, total, offset, data))


def announce(kind: int, network: str, version: int, ref: bytes, payload: bytes) -> ContractAnnounce:
    return ContractAnnounce(kind, network, version, ref, len(payload), digest(payload))


def serve(payload: bytes, req: ContractChunkRequest) -> list[ContractChunk]:
    """The chunks answering ``req`` from ``payload`` (whose digest it names); an offset
    past the end gets nothing."""
    end = min(len(payload), req.offset + req.length)
    dig = req.digest
    return [ContractChunk(dig, len(payload), o, payload[o:min(end, o + CHUNK_SIZE)])
            for o in range(req.offset, end, CHUNK_SIZE)]


class RateLimit:
    """Token buckets per peer (``rate`` per second, up to ``burst``), bounded in peers."""

    def __init__(self, rate: float, burst: float, max_peers: int = MAX_TRACKED_PEERS) -> None:
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def allow(self, peer: bytes, now: float, cost: float = 1.0) -> bool:
        tokens, at = self._buckets.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        ok = tokens >= cost
        if len(self._buckets) >= self.max_peers and peer not in self._buckets:
            self._buckets.pop(next(iter(self._buckets)))
        self._buckets[peer] = (tokens - cost if ok else tokens, now)
        return ok


# -- the receiving side ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendTo(Action):
    """Send ``message`` to the neighbour ``peer`` over its link."""

    peer: bytes
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Fetched(Action):
    """A whole payload arrived and matches its digest: decode and verify it, then call
    ``Fetcher.fail`` if it is bad."""

    peer: bytes
    announce: ContractAnnounce
    payload: bytes


@dataclass(frozen=True, slots=True)
class TransferFailed(Action):
    """A transfer was dropped (``reason``); ``bad``: the peer broke the protocol."""

    peer: bytes
    announce: ContractAnnounce
    reason: str
    bad: bool


@dataclass(slots=True)
class _Transfer:
    peer: bytes
    ann: ContractAnnounce
    started: float
    due: float
    buf: bytearray = field(default_factory=bytearray)
    asked_to: int = 0
    retries: int = 0
    alternates: list[bytes] = field(default_factory=list)


class Fetcher:
    """Pulls announced payloads chunk by chunk. Driven by ``start``, ``on_chunk``,
    ``peer_down``, ``fail`` and ``on_timer(now)`` at ``next_deadline()``; each returns
    actions (``SendTo``, ``Fetched``, ``TransferFailed``)."""

    def __init__(self, max_transfers: int = MAX_TRANSFERS) -> None:
        self.max_transfers = max_transfers
        self._transfers: dict[bytes, _Transfer] = {}
        self._waiting: dict[bytes, tuple[bytes, ContractAnnounce]] = {}
        self._banned: dict[bytes, float] = {}
        self.counters: Counter[str] = Counter()
        self.bad_peers: Counter[bytes] = Counter()

    def active(self) -> list[ContractAnnounce]:
        return [t.ann for t in self._transfers.values()]

    def banned(self, peer: bytes, now: float) -> bool:
        until = self._banned.get(peer)
        if until is not None and now >= until:
            del self._banned[peer]
            return False
        return until is not None

    def start(self, peer: bytes, ann: ContractAnnounce, now: float) -> list[Action]:
        """Fetch ``ann`` from ``peer`` (or remember ``peer`` as another source)."""
        if self.banned(peer, now):
            self.counters["ignored_banned_peer"] += 1
            return []
        t = self._transfers.get(ann.digest)
        if t is not None:
            if peer != t.peer and peer not in t.alternates and len(t.alternates) < MAX_ALTERNATES:
                t.alternates.append(peer)
            return []
        if len(self._transfers) >= self.max_transfers:
            self.counters["busy"] += 1
            self._waiting.pop(ann.digest, None)
            self._waiting[ann.digest] = (peer, ann)
            if len(self._waiting) > MAX_WAITING:
                self._waiting.pop(next(iter(self._waiting)))
            return []
        t = _Transfer(peer, ann, now, now + REQUEST_TIMEOUT)
        self._transfers[ann.digest] = t
        self.counters["started"] += 1
        return [self._ask(t, now)]

    def _ask(self, t: _Transfer, now: float) -> SendTo:
        offset = len(t.buf)
        t.asked_to = min(t.ann.size, offset + WINDOW)
        t.due = now + REQUEST_TIMEOUT
        return SendTo(t.peer, ContractChunkRequest(t.ann.digest, offset, t.asked_to - offset))

    def on_chunk(self, peer: bytes, chunk: ContractChunk, now: float) -> list[Action]:
        t = self._transfers.get(chunk.digest)
        if t is None or t.peer != peer:
            self.counters["unsolicited_chunks"] += 1
            return []
        have = len(t.buf)
        if chunk.total != t.ann.size:
            return self._drop(t, now, f"chunk says the payload has {chunk.total} bytes in total, "
                              f"the announcement {t.ann.size}", bad=True)
        if chunk.offset + len(chunk.data) > t.asked_to:
            return self._drop(t, now, f"chunk at {chunk.offset} runs past the requested window "
                              f"(to {t.asked_to})", bad=True)
        if chunk.offset != have:
            # Before: a repeat after a re-request. After: one was lost (a full send
            # queue drops frames); the timeout asks again from the gap.
            self.counters["duplicate_chunks" if chunk.offset < have else "gap_chunks"] += 1
            return []
        t.buf += chunk.data
        t.retries = 0
        self.counters["chunks"] += 1
        if len(t.buf) < t.ann.size:
            return [self._ask(t, now)] if len(t.buf) == t.asked_to else []
        del self._transfers[chunk.digest]
        payload = bytes(t.buf)
        if digest(payload) != t.ann.digest:
            self._transfers[chunk.digest] = t  # so _drop finds it and can move on
            t.buf.clear()
            return self._drop(t, now, "the payload does not match its announced digest", bad=True)
        self.counters["completed"] += 1
        return [Fetched(peer, t.ann, payload)] + self._next(now)

    def fail(self, peer: bytes, ann: ContractAnnounce, reason: str, now: float) -> list[Action]:
        """The fetched payload did not decode or verify: count and ban ``peer``."""
        self._punish(peer, now)
        return [TransferFailed(peer, ann, reason, True)]

    def peer_down(self, peer: bytes, now: float) -> list[Action]:
        out: list[Action] = []
        for t in list(self._transfers.values()):
            if peer in t.alternates:
                t.alternates.remove(peer)
            if t.peer == peer:
                out += self._drop(t, now, "the link to the peer went down", bad=False)
        return out

    def _punish(self, peer: bytes, now: float) -> None:
        self.counters["bad_transfers"] += 1
        self.bad_peers[peer] += 1
        if len(self.bad_peers) > MAX_TRACKED_PEERS:
            self.bad_peers.pop(next(iter(self.bad_peers)))
        if len(self._banned) >= MAX_TRACKED_PEERS:
            self._banned.pop(next(iter(self._banned)))
        self._banned[peer] = now + BAN_TIME

    def _drop(self, t: _Transfer, now: float, reason: str, bad: bool) -> list[Action]:
        """Give up on ``t.peer``: punish it if ``bad``, then try an alternate source."""
        if bad:
            self._punish(t.peer, now)
            t.buf.clear()  # nothing from a bad peer is kept
        out: list[Action] = [TransferFailed(t.peer, t.ann, reason, bad)]
        while t.alternates:
            nxt = t.alternates.pop(0)
            if not self.banned(nxt, now):
                t.peer, t.retries = nxt, 0
                self.counters["switched_source"] += 1
                return out + [self._ask(t, now)]  # same digest: keep the good bytes
        del self._transfers[t.ann.digest]
        self.counters["dropped"] += 1
        return out + self._next(now)

    def _next(self, now: float) -> list[Action]:
        """Start the newest waiting announcement, if a slot is free."""
        while self._waiting and len(self._transfers) < self.max_transfers:
            dig = next(reversed(self._waiting))
            peer, ann = self._waiting.pop(dig)
            if dig not in self._transfers and not self.banned(peer, now):
                return self.start(peer, ann, now)
        return []

    def next_deadline(self) -> float | None:
        return min((min(t.due, t.started + TRANSFER_TIMEOUT) for t in self._transfers.values()),
                   default=None)

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        for t in list(self._transfers.values()):
            if now >= t.started + TRANSFER_TIMEOUT:
                self.counters["timeouts"] += 1
                del self._transfers[t.ann.digest]
                self.counters["dropped"] += 1
                out.append(TransferFailed(t.peer, t.ann, "the transfer took too long", False))
                out += self._next(now)
            elif now >= t.due:
                t.retries += 1
                self.counters["retries"] += 1
                if t.retries > MAX_RETRIES:
                    self.counters["timeouts"] += 1
                    out += self._drop(t, now, f"no answer after {MAX_RETRIES} retries", bad=False)
                else:
                    out.append(self._ask(t, now))
        return out
