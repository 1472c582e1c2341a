"""Fork detection: two validly signed contract versions that cannot both be history.

Two versions of one network *fork* when they differ (body hash) but share a version
number, or both name the same ``previous``. Only owners (or whoever holds enough
stolen owner keys) can sign both, so a fork means the owners signed two histories.
A node that meets one keeps the version it has, refuses the other, alerts, stores the
evidence, and passes the evidence on so every node alerts (docs/contracts.md, "Forks").

``ForkEvidence`` is the pair, in canonical order (lower body hash first). Evidence is
believed only if both versions carry a threshold of valid signatures by owners this
node trusts (``check_evidence``): the owners of the version before, when the node
holds it, else those of its own version of that number, else those of the version in
force. Evidence from a peer whose versions are not signed like that is the peer's
fault (``ContractError``) and is not passed on.

Wire: ``ContractFork`` 0x55 carries ``encode_evidence``, i.e.
``first_len:u32 | first (signed contract) | second (signed contract)``; evidence too
large for one frame travels as a ``ContractAnnounce`` of kind 2 and chunks
(``contract_transfer``).

``ForkMonitor`` keeps what was seen (at most ``MAX_FORKS``; the first ones are kept,
since the earliest evidence is what an operator needs) and rate-limits how much
evidence each peer can make this node verify. Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable, ClassVar

from .. import wire
from .contract import (HASH_SIZE, MAX_CONTRACT_SIZE, Contract, ContractError, NetworkMismatch,
                       body_hash, decode, encode, signing_message)
from .transfer import RateLimit
from ..errors import DecodeError, LocalProtocolError, RemoteProtocolError
from ..identity import verify_signature

MAX_FORKS = 16              # forks remembered per node
EVIDENCE_RATE = 0.2         # evidence verifications per second and peer ...
EVIDENCE_BURST = 4.0        # ... after a burst of this many


class ForkNotProven(ContractError):
    """Fork evidence that does not hold up (not a fork, or not signed by trusted owners)."""


def fork_id(hash_a: bytes, hash_b: bytes) -> bytes:
    """The id of the fork between the versions with these body hashes (order-free)."""
    lo, hi = sorted((hash_a, hash_b))
    return hashlib.blake2b(lo + hi, digest_size=HASH_SIZE).digest()


def is_fork(a: Contract, b: Contract) -> bool:
    """True if ``a`` and ``b`` are two different versions claiming the same place."""
    if a.network != b.network or body_hash(a) == body_hash(b):
        return False
    return a.version == b.version or (a.version > 1 and a.previous == b.previous)


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    """Two contract versions of one network that fork; ``first`` has the lower hash."""

    first: Contract
    second: Contract

    def __post_init__(self) -> None:
        if not is_fork(self.first, self.second):
            raise LocalProtocolError("not a fork: the two versions must be of one network, "
                                     "differ, and share a version number or a previous hash")
        if body_hash(self.first) >= body_hash(self.second):
            raise LocalProtocolError("fork evidence must list the lower body hash first")

    @classmethod
    def of(cls, a: Contract, b: Contract) -> ForkEvidence:
        return cls(a, b) if body_hash(a) < body_hash(b) else cls(b, a)

    @property
    def network(self) -> str:
        return self.first.network

    @property
    def version(self) -> int:
        return min(self.first.version, self.second.version)

    @property
    def hashes(self) -> tuple[bytes, bytes]:
        return body_hash(self.first), body_hash(self.second)

    @property
    def id(self) -> bytes:
        """BLAKE2b-256 of both body hashes: the same fork has the same id everywhere."""
        return fork_id(*self.hashes)

    def summary(self) -> dict:
        """What logs, the API and the CLI show (public data only)."""
        a, b = self.hashes
        return {"network": self.network, "version": self.version, "id": self.id.hex(),
                "hashes": [a.hex(), b.hex()],
                "versions": [self.first.version, self.second.version],
                "signers": [[s.public_key.hex() for s in c.signatures]
                            for c in (self.first, self.second)]}

    def __repr__(self) -> str:
        a, b = self.hashes
        return (f"ForkEvidence(network={self.network!r}, version={self.version}, "
                f"hashes={a.hex()[:16]}/{b.hex()[:16]})")


def encode_evidence(ev: ForkEvidence) -> bytes:
    first = encode(ev.first)
    return wire.Writer().u32(len(first)).raw(first).raw(encode(ev.second)).getvalue()


def decode_evidence(data: bytes) -> ForkEvidence:
    """Parse evidence; raises only ``DecodeError`` (also when it is no fork)."""
    r = wire.Reader(data)
    n = r.u32()
    if n > MAX_CONTRACT_SIZE:
        raise DecodeError(f"fork evidence: first contract of {n} bytes exceeds {MAX_CONTRACT_SIZE}")
    first, second = decode(r.take(n)), decode(r.rest())
    try:
        return ForkEvidence(first, second)
    except LocalProtocolError as exc:
        raise DecodeError(f"fork evidence: {exc}") from None


@wire.register
@dataclass(frozen=True, slots=True)
class ContractFork(wire.Message):
    """Fork evidence, passed from neighbour to neighbour so every node alerts."""

    TYPE: ClassVar[int] = 0x55
    evidence: ForkEvidence

    def encode_body(self) -> bytes:
        return encode_evidence(self.evidence)

    @classmethod
    def decode_body(cls, r: wire.Reader) -> ContractFork:
        return cls(decode_evidence(r.rest()))


def _signed_by(c: Contract, authority: Contract) -> None:
    """``c`` carries ``authority.threshold`` valid signatures by ``authority``'s owners
    (signatures by other keys are ignored, invalid ones by owners refused)."""
    message, owners, good = signing_message(c), set(authority.owners), 0
    for s in c.signatures:
        if s.public_key not in owners:
            continue
        try:
            verify_signature(s.public_key, message, s.signature)
        except RemoteProtocolError:
            raise ForkNotProven(f"version {c.version} (hash {body_hash(c).hex()[:16]}) has a bad "
                                f"signature by owner {s.public_key.hex()}") from None
        good += 1
    if good < authority.threshold:
        raise ForkNotProven(f"version {c.version} (hash {body_hash(c).hex()[:16]}) has {good} valid "
                            f"owner signature(s), {authority.threshold} required: not evidence")


def check_evidence(ev: ForkEvidence, held: Callable[[int], Contract | None],
                   current: Contract) -> None:
    """Raise ``ContractError`` unless both sides are signed by owners this node trusts.

    ``held(version)`` returns the node's own version of that number (or None);
    ``current`` is the version in force."""
    if ev.network != current.network:
        raise NetworkMismatch(f"fork evidence for network {ev.network}, this node enforces "
                              f"{current.network}")
    before, same = held(ev.version - 1), held(ev.version)
    for side in (ev.first, ev.second):
        if before is not None and side.previous == body_hash(before):
            authority = before
        else:
            authority = same if same is not None else current
        _signed_by(side, authority)


def find_fork(candidate: Contract, held: Callable[[int], Contract | None]) -> ForkEvidence | None:
    """Evidence if ``candidate`` forks from the version of that number this node holds."""
    mine = held(candidate.version)
    if mine is not None and is_fork(mine, candidate):
        return ForkEvidence.of(mine, candidate)
    return None


class ForkMonitor:
    """The forks this node has seen and believed, bounded, with a per-peer rate limit."""

    def __init__(self, max_forks: int = MAX_FORKS) -> None:
        self.max_forks = max_forks
        self._forks: dict[bytes, tuple[ForkEvidence, float, str]] = {}
        self._limit = RateLimit(EVIDENCE_RATE, EVIDENCE_BURST)
        self.counters: Counter[str] = Counter()

    def known(self, fork_id: bytes) -> bool:
        return fork_id in self._forks

    def allow(self, peer: bytes, now: float) -> bool:
        """May ``peer`` make us verify one more piece of evidence now?"""
        if self._limit.allow(peer, now):
            return True
        self.counters["evidence_rate_limited"] += 1
        return False

    def record(self, ev: ForkEvidence, now: float, source: str) -> bool:
        """Remember checked evidence; True if it is new (alert and pass it on)."""
        if ev.id in self._forks:
            self.counters["evidence_repeated"] += 1
            return False
        self.counters["forks"] += 1
        if len(self._forks) >= self.max_forks:
            self.counters["forks_not_kept"] += 1
            return True  # still alert, but keep the first MAX_FORKS for the operator
        self._forks[ev.id] = (ev, now, source)
        return True

    def evidence(self) -> list[ForkEvidence]:
        return [ev for ev, _, _ in self._forks.values()]

    def summaries(self, now: float | None = None) -> list[dict]:
        out = []
        for ev, seen, source in self._forks.values():
            row = {**ev.summary(), "source": source}
            if now is not None:
                row["age_s"] = round(now - seen, 3)
            out.append(row)
        return out
