"""Network contracts: the signed, versioned whitelist of a network (DESIGN.md §3 "Contracts").

A contract names a network, its owners (Ed25519 keys, m-of-n), its members (key, name,
groups, expiry) and rules saying which groups may reach which. Each version links to
the one before by hash, and owners sign each version.

Canonical body (big-endian, ``wire.Writer`` fields; the exact bytes owners sign)::

    "SPNC" | format:u8 (1) | network:text8 | version:u64 | previous[32] | expires:u64 |
    threshold:u8 | n_owners:u8 | owner[32]* |
    n_members:u16 | (public_key[32] | name:text8 | expires:u64 | n_groups:u8 | group:text8*)* |
    n_rules:u16 | (from:text8 | to:text8)* | n_flags:u8 | (key:text8 | value:text8)*

Signed form: ``body_len:u32 | body | n_sigs:u8 | (public_key[32] | signature[64])*``.
A signature is Ed25519 over ``SIGNING_CONTEXT ‖ body``; a version's hash is
BLAKE2b-256(body), so the chain does not depend on which owners signed.

Invariants:
- Every ``Contract`` object is canonical: owners, members, groups, rules, flags and
  signatures are strictly sorted (hence unique); ``__post_init__`` refuses anything else,
  so ``decode(encode(c)) == c`` and ``encode(decode(b)) == b``; decode raises only
  ``DecodeError``.
- Version 1 (genesis) has ``previous == NO_PREVIOUS``; later versions name the hash of
  version - 1. Expiry 0 on the wire means "never" (``None``).
- Default deny: a pair may talk only if a rule allows it and both are current members.
- Owner keys only sign. Nothing here (or anywhere) lets them decrypt traffic: no escrow.
- Pure: no I/O, no clock (``now`` is passed in), no randomness.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, replace
from typing import Iterable

from .. import wire
from ..errors import DecodeError, LocalProtocolError, RemoteProtocolError
from ..identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, verify_signature

SIGNING_CONTEXT = b"sporenet-contract-v1\x00"
MAGIC = b"SPNC"
FORMAT = 1
HASH_SIZE = 32
NO_PREVIOUS = bytes(HASH_SIZE)
ANY = "*"
MAX_CONTRACT_SIZE = 1 << 20  # research/security.md §5 acceptance step 1
MAX_OWNERS = 255
MAX_MEMBERS = 0xFFFF
MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF
PQ_VALUES = ("off", "preferred", "required")
# Network ids and group names: short, no spaces or commas (the CLI splits on commas),
# and a network id doubles as a ledger file name, so no leading dot or slash.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


class ContractError(RemoteProtocolError):
    """A contract (a document written by others) is not acceptable; the message says
    what is wrong and what to do. At an enforcement point this is the peer's fault."""


class BadSignature(ContractError):
    def __init__(self, key: bytes) -> None:
        super().__init__(f"bad signature by owner {key.hex()}: the contract was changed after "
                         "it was signed, or the signature is forged; have that owner sign again")
        self.key = key


class UnknownSigner(ContractError):
    def __init__(self, key: bytes) -> None:
        super().__init__(f"signature by {key.hex()}, which is not an owner key of this or the "
                         "previous version; remove that signature")
        self.key = key


class ThresholdNotMet(ContractError):
    def __init__(self, have: int, need: int, of: int, which: str) -> None:
        super().__init__(f"threshold not met: {have} valid signature(s) from the {which} owners, "
                         f"{need} of {of} required; ask {need - have} more of them to sign")
        self.have, self.need, self.of = have, need, of


class VersionNotNext(ContractError):
    """The version goes backwards, repeats or skips one."""


class PreviousMismatch(ContractError):
    """``previous`` is not the hash of the version before."""


class NetworkMismatch(ContractError):
    """The contract is for another network."""


class ContractExpired(ContractError):
    """The whole contract is past its ``expires`` (freeze defence)."""


class NotAMember(ContractError):
    """The key is not a member of the network."""


class MemberExpired(NotAMember):
    """The key was a member, but its membership has expired."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise LocalProtocolError(message)


def _check_name(value: object, what: str) -> None:
    _check(isinstance(value, str) and bool(NAME_PATTERN.match(value)),
           f"{what} {value!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a "
           "letter or digit")


def _check_text(value: object, what: str) -> None:
    _check(isinstance(value, str) and 0 < len(value.encode("utf-8", "surrogatepass")) <= 255
           and value.isprintable(), f"{what} must be 1-255 bytes of printable text")


def _check_expiry(value: object, what: str) -> None:
    _check(value is None or (type(value) is int and 0 < value <= MAX_U64),
           f"{what} must be unix seconds (1..2^64-1) or None")


def _check_key(value: object, what: str) -> None:
    _check(isinstance(value, bytes) and len(value) == PUBLIC_KEY_SIZE,
           f"{what} must be a {PUBLIC_KEY_SIZE}-byte Ed25519 public key")


def _check_sorted(items: tuple, key, what: str) -> None:
    keys = [key(i) for i in items]
    _check(all(a < b for a, b in zip(keys, keys[1:])), f"{what} must be sorted and unique")


@dataclass(frozen=True, slots=True)
class Member:
    public_key: bytes
    name: str
    groups: tuple[str, ...] = ()
    expires: int | None = None  # unix seconds; None = never

    def __post_init__(self) -> None:
        _check_key(self.public_key, "member key")
        _check_text(self.name, "member name")
        _check(isinstance(self.groups, tuple) and len(self.groups) <= 255, "groups: at most 255")
        for g in self.groups:
            _check_name(g, "group")
        _check_sorted(self.groups, str, "groups")
        _check_expiry(self.expires, "member expiry")

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True, slots=True)
class Rule:
    """Members of group ``src`` may reach members of group ``dst`` (``"*"``: any member)."""

    src: str
    dst: str

    def __post_init__(self) -> None:
        for g in (self.src, self.dst):
            if g != ANY:
                _check_name(g, "rule group")

    def allows(self, src_groups: Iterable[str], dst_groups: Iterable[str]) -> bool:
        return ((self.src == ANY or self.src in src_groups)
                and (self.dst == ANY or self.dst in dst_groups))


@dataclass(frozen=True, slots=True)
class Signature:
    public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_key(self.public_key, "signer key")
        _check(isinstance(self.signature, bytes) and len(self.signature) == SIGNATURE_SIZE,
               f"signature must be {SIGNATURE_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class Contract:
    """One version of a network contract, with the owners' signatures over its body.

    Build with ``new_contract`` and the editing functions; never by hand unless sorted.
    """

    network: str
    version: int
    previous: bytes
    owners: tuple[bytes, ...]
    threshold: int
    members: tuple[Member, ...] = ()
    rules: tuple[Rule, ...] = ()
    flags: tuple[tuple[str, str], ...] = ()
    expires: int | None = None
    signatures: tuple[Signature, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.network, "network id")
        _check(type(self.version) is int and 0 < self.version <= MAX_U64, "version must be 1..2^64-1")
        _check(isinstance(self.previous, bytes) and len(self.previous) == HASH_SIZE,
               f"previous must be a {HASH_SIZE}-byte hash")
        _check((self.version == 1) == (self.previous == NO_PREVIOUS),
               "version 1 (genesis) and only it has no previous hash")
        _check(isinstance(self.owners, tuple) and 0 < len(self.owners) <= MAX_OWNERS,
               f"a contract needs 1-{MAX_OWNERS} owners")
        for k in self.owners:
            _check_key(k, "owner key")
        _check_sorted(self.owners, bytes, "owners")
        _check(type(self.threshold) is int and 0 < self.threshold <= len(self.owners),
               f"threshold must be 1..{len(self.owners)} (the number of owners)")
        for field, cls, limit in (("members", Member, MAX_MEMBERS), ("rules", Rule, 0xFFFF),
                                  ("signatures", Signature, MAX_OWNERS)):
            items = getattr(self, field)
            _check(isinstance(items, tuple) and len(items) <= limit
                   and all(isinstance(i, cls) for i in items), f"{field}: at most {limit} {cls.__name__}")
        _check_sorted(self.members, lambda m: m.public_key, "members")
        _check_sorted(self.rules, lambda r: (r.src, r.dst), "rules")
        _check_sorted(self.signatures, lambda s: s.public_key, "signatures")
        _check(isinstance(self.flags, tuple) and len(self.flags) <= 255, "flags: at most 255")
        for item in self.flags:
            _check(isinstance(item, tuple) and len(item) == 2, "a flag is a (key, value) pair")
            _check_name(item[0], "flag")
            _check_text(item[1], f"flag {item[0]} value")
        _check_sorted(self.flags, lambda f: f[0], "flags")
        pq = self.flag("pq")
        _check(pq is None or pq in PQ_VALUES, f"flag pq must be one of {', '.join(PQ_VALUES)}")
        _check_expiry(self.expires, "contract expiry")

    # -- queries ---------------------------------------------------------------------

    def flag(self, key: str) -> str | None:
        return next((v for k, v in self.flags if k == key), None)

    def find(self, public_key: bytes) -> Member | None:
        """The member entry for a key, expired or not (binary search: members are sorted)."""
        i = bisect.bisect_left(self.members, public_key, key=lambda m: m.public_key)
        if i < len(self.members) and self.members[i].public_key == public_key:
            return self.members[i]
        return None

    def member(self, public_key: bytes, now: float) -> Member:
        """The current member entry; raises ``NotAMember`` or ``MemberExpired``."""
        m = self.find(public_key)
        if m is None:
            raise NotAMember(f"{public_key.hex()} is not a member of network {self.network} "
                             f"(contract version {self.version})")
        if m.expired(now):
            raise MemberExpired(f"membership of {m.name} ({public_key.hex()}) in network "
                                f"{self.network} expired at {m.expires} (unix seconds); "
                                "an owner must renew it in a new contract version")
        return m

    def is_member(self, public_key: bytes, now: float) -> bool:
        m = self.find(public_key)
        return m is not None and not m.expired(now)

    def groups_of(self, public_key: bytes) -> frozenset[str]:
        m = self.find(public_key)
        return frozenset(m.groups) if m else frozenset()

    def may_reach(self, src: bytes, dst: bytes, now: float) -> bool:
        """True if both keys are current members and a rule lets ``src``'s groups reach ``dst``'s."""
        s, d = self.find(src), self.find(dst)
        if s is None or d is None or s.expired(now) or d.expired(now):
            return False
        return any(rule.allows(s.groups, d.groups) for rule in self.rules)

    @property
    def hash(self) -> bytes:
        """BLAKE2b-256 of the canonical body: what the next version names as ``previous``."""
        return body_hash(self)


# -- canonical encoding ---------------------------------------------------------------


def encode_body(c: Contract) -> bytes:
    w = wire.Writer().raw(MAGIC).u8(FORMAT).text8(c.network).u64(c.version).raw(c.previous)
    w.u64(c.expires or 0).u8(c.threshold).u8(len(c.owners))
    for k in c.owners:
        w.raw(k)
    w.u16(len(c.members))
    for m in c.members:
        w.raw(m.public_key).text8(m.name).u64(m.expires or 0).u8(len(m.groups))
        for g in m.groups:
            w.text8(g)
    w.u16(len(c.rules))
    for r in c.rules:
        w.text8(r.src).text8(r.dst)
    w.u8(len(c.flags))
    for k, v in c.flags:
        w.text8(k).text8(v)
    return w.getvalue()


def body_hash(c: Contract) -> bytes:
    return hashlib.blake2b(encode_body(c), digest_size=HASH_SIZE).digest()


def signing_message(c: Contract) -> bytes:
    return SIGNING_CONTEXT + encode_body(c)


def encode(c: Contract) -> bytes:
    """The signed form: body plus signatures."""
    body = encode_body(c)
    w = wire.Writer().u32(len(body)).raw(body).u8(len(c.signatures))
    for s in c.signatures:
        w.raw(s.public_key).raw(s.signature)
    return w.getvalue()


def _count(r: wire.Reader, n: int, min_item: int) -> int:
    # A declared count must fit in the bytes present (wire.py: no allocation sized by a
    # length a peer declared without the bytes being there).
    if n * min_item > r.remaining:
        raise DecodeError(f"count {n} does not fit in the {r.remaining} bytes left")
    return n


def _decode_body(r: wire.Reader, signatures: tuple[Signature, ...]) -> Contract:
    if r.take(4) != MAGIC or r.u8() != FORMAT:
        raise DecodeError("not a sporenet contract (bad magic or format)")
    network, version, previous, expires = r.text8(), r.u64(), r.take(HASH_SIZE), r.u64()
    threshold = r.u8()
    owners = tuple(r.take(PUBLIC_KEY_SIZE) for _ in range(_count(r, r.u8(), PUBLIC_KEY_SIZE)))
    members = []
    for _ in range(_count(r, r.u16(), PUBLIC_KEY_SIZE + 10)):
        key, name, m_exp = r.take(PUBLIC_KEY_SIZE), r.text8(), r.u64()
        groups = tuple(r.text8() for _ in range(_count(r, r.u8(), 1)))
        members.append(Member(key, name, groups, m_exp or None))
    rules = tuple(Rule(r.text8(), r.text8()) for _ in range(_count(r, r.u16(), 2)))
    flags = tuple((r.text8(), r.text8()) for _ in range(_count(r, r.u8(), 2)))
    r.end()
    return Contract(network, version, previous, owners, threshold, tuple(members), rules,
                    flags, expires or None, signatures)


def decode(data: bytes) -> Contract:
    """Parse the signed form. Raises only ``DecodeError`` (also for non-canonical input)."""
    if len(data) > MAX_CONTRACT_SIZE:
        raise DecodeError(f"contract of {len(data)} bytes exceeds {MAX_CONTRACT_SIZE}")
    r = wire.Reader(data)
    try:
        body = r.take(r.u32())
        sigs = tuple(Signature(r.take(PUBLIC_KEY_SIZE), r.take(SIGNATURE_SIZE))
                     for _ in range(_count(r, r.u8(), PUBLIC_KEY_SIZE + SIGNATURE_SIZE)))
        r.end()
        return _decode_body(wire.Reader(body), sigs)
    except LocalProtocolError as exc:  # a field the dataclasses refuse: still bad input
        raise DecodeError(f"invalid contract: {exc}") from None


# -- building and editing -------------------------------------------------------------


def new_contract(network: str, owners: Iterable[bytes], threshold: int, *,
                 rules: Iterable[Rule | tuple[str, str]] = (), flags: dict[str, str] | None = None,
                 expires: int | None = None) -> Contract:
    """Version 1 (genesis) of a network, unsigned and without members."""
    owners = tuple(owners)
    _check(len(set(owners)) == len(owners), "owner keys must be distinct")
    return Contract(network, 1, NO_PREVIOUS, tuple(sorted(owners)), threshold,
                    rules=sorted_rules(rules), flags=tuple(sorted((flags or {}).items())), expires=expires)


def sorted_rules(rules: Iterable[Rule | tuple[str, str]]) -> tuple[Rule, ...]:
    out = {r if isinstance(r, Rule) else Rule(*r) for r in rules}
    return tuple(sorted(out, key=lambda r: (r.src, r.dst)))


def is_signed(c: Contract) -> bool:
    """True if valid signatures of its own owners meet its threshold ("ready to publish")."""
    try:
        _check_threshold(c, _valid_signers(c, set(c.owners)), c.owners, c.threshold, "current")
    except ContractError:
        return False
    return True


def bump_version(c: Contract, **changes) -> Contract:
    """The next version: version + 1, ``previous`` = this version's hash, no signatures."""
    return replace(c, version=c.version + 1, previous=body_hash(c), signatures=(), **changes)


def edit(c: Contract, **changes) -> Contract:
    """Apply ``changes``. A signed contract yields the next version (owners re-sign);
    an unsigned draft is edited in place and loses its partial signatures, which no
    longer match its body."""
    if is_signed(c):
        return bump_version(c, **changes)
    return replace(c, signatures=(), **changes)


def add_member(c: Contract, public_key: bytes, name: str, groups: Iterable[str] = (),
               expires: int | None = None) -> Contract:
    if c.find(public_key) is not None:
        raise LocalProtocolError(f"{public_key.hex()} is already a member ({c.find(public_key).name}); "
                                 "remove it first to change its entry")
    m = Member(public_key, name, tuple(sorted(set(groups))), expires)
    return edit(c, members=tuple(sorted(c.members + (m,), key=lambda x: x.public_key)))


def remove_member(c: Contract, public_key: bytes) -> Contract:
    """Revocation: the next version no longer lists the key."""
    if c.find(public_key) is None:
        raise LocalProtocolError(f"{public_key.hex()} is not a member of network {c.network}")
    return edit(c, members=tuple(m for m in c.members if m.public_key != public_key))


def set_rules(c: Contract, rules: Iterable[Rule | tuple[str, str]]) -> Contract:
    return edit(c, rules=sorted_rules(rules))


def set_flag(c: Contract, key: str, value: str | None) -> Contract:
    flags = dict(c.flags)
    if value is None:
        flags.pop(key, None)
    else:
        flags[key] = value
    return edit(c, flags=tuple(sorted(flags.items())))


def set_owners(c: Contract, owners: Iterable[bytes], threshold: int) -> Contract:
    """A new owner set. The change needs the old owners' threshold and the new one's."""
    owners = tuple(owners)
    _check(len(set(owners)) == len(owners), "owner keys must be distinct")
    return edit(c, owners=tuple(sorted(owners)), threshold=threshold)


def sign(c: Contract, identity: Identity, previous: Contract | None = None) -> Contract:
    """Add (or replace) ``identity``'s signature. The signer must be an owner of this
    version or, for an owner change, of ``previous``."""
    key = identity.public_key
    if key not in c.owners and (previous is None or key not in previous.owners):
        raise LocalProtocolError(f"{key.hex()} is not an owner of network {c.network}; "
                                 "only owner keys sign contracts")
    sig = Signature(key, identity.sign(signing_message(c)))
    sigs = sorted([s for s in c.signatures if s.public_key != key] + [sig], key=lambda s: s.public_key)
    return replace(c, signatures=tuple(sigs))


# -- verification ---------------------------------------------------------------------


def _valid_signers(c: Contract, allowed: set[bytes]) -> set[bytes]:
    message = signing_message(c)
    for s in c.signatures:
        if s.public_key not in allowed:
            raise UnknownSigner(s.public_key)
        try:
            verify_signature(s.public_key, message, s.signature)
        except RemoteProtocolError:
            raise BadSignature(s.public_key) from None
    return {s.public_key for s in c.signatures}


def _check_threshold(c: Contract, signers: set[bytes], owners: tuple[bytes, ...],
                     threshold: int, which: str) -> None:
    have = len(signers & set(owners))
    if have < threshold:
        raise ThresholdNotMet(have, threshold, len(owners), which)


def verify_signed(c: Contract, previous: Contract | None = None) -> None:
    """Check signatures and, given ``previous`` (version - 1), the chain. Time-free, so a
    ledger can re-verify old versions. Without ``previous`` only the contract's own
    owners are checked: trust in a version > 1 needs its chain from a pinned genesis."""
    if previous is None:
        _check_threshold(c, _valid_signers(c, set(c.owners)), c.owners, c.threshold, "current")
        return
    if c.network != previous.network:
        raise NetworkMismatch(f"contract is for network {c.network}, the previous version for "
                              f"{previous.network}")
    if c.version <= previous.version:
        raise VersionNotNext(f"version {c.version} goes backwards: version {previous.version} "
                             f"exists; edit the latest version to make version {previous.version + 1}")
    if c.version != previous.version + 1:
        raise VersionNotNext(f"version {c.version} skips versions: the latest is "
                             f"{previous.version}; publish {previous.version + 1} first")
    if c.previous != body_hash(previous):
        raise PreviousMismatch(f"version {c.version} does not follow the known version "
                               f"{previous.version} (previous hash {c.previous.hex()[:16]}, expected "
                               f"{body_hash(previous).hex()[:16]}): a fork; rebuild it from the latest")
    signers = _valid_signers(c, set(previous.owners) | set(c.owners))
    # The owners of the version before hold authority (research/security.md §5 step 4);
    # a new owner set must also meet its own threshold (TUF root rotation).
    _check_threshold(c, signers, previous.owners, previous.threshold, "previous version's")
    if (c.owners, c.threshold) != (previous.owners, previous.threshold):
        _check_threshold(c, signers, c.owners, c.threshold, "new")


def verify(c: Contract, now: float, previous: Contract | None = None) -> None:
    """``verify_signed`` plus time: the contract itself must not have expired."""
    verify_signed(c, previous)
    if c.expires is not None and now >= c.expires:
        raise ContractExpired(f"contract version {c.version} of network {c.network} expired at "
                              f"{c.expires} (unix seconds); owners must publish a new version")
