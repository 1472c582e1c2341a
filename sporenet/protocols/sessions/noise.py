"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s: the WireGuard handshake, sans-IO.

Exactly the WireGuard construction (whitepaper §5.4.2-5.4.5) with our identifier
``"sporenet e2e v1"`` in place of WireGuard's, so it is byte-compatible with any
Noise library run with that string as prologue (``tests/test_noise.py`` checks
against ``noiseprotocol``):

    msg1 (initiator → responder): e, es, s, ss, {TAI64N timestamp}, mac1, mac2
    msg2 (responder → initiator): e, ee, se, psk, {}, mac1, mac2
    (T_send, T_recv) = KDF2(C, ε) on the initiator; swapped on the responder.

Static keys. Our identities are Ed25519 (``identity.py``): the address is derived
from the Ed25519 key. The Noise static is the birational image of that key on
Curve25519 (libsodium ``crypto_sign_ed25519_{pk,sk}_to_curve25519``), so any node
that knows a peer's Ed25519 key (from its address check, a route or the contract)
can start IK with nothing else. The alternative, a separate X25519 key certified
by an Ed25519 signature in the member record (libp2p's way, security.md §1), lets
the DH key rotate under a fixed address but needs that record before every first
handshake; we can move to it later by changing ``noise_public_key`` and the lookup.
Reusing one key for Ed25519 and X25519 is analysed in Thormarker, "On using the same
key pair for Ed25519 and an X25519 based KEM" (IACR ePrint 2021/509). A responder that
knows only the claimed source address maps the static back to the two Ed25519
candidates (``lookup_by_address``).

Invariants:
- mac1 is checked before any Diffie-Hellman (``CookieChecker.check_mac1``); under
  load a missing or stale mac2 gets a ``CookieReply`` and costs no DH either.
- The responder re-derives the peer's Ed25519 key from the caller's ``lookup``,
  checks that it maps to the decrypted static and, if given, to the claimed
  overlay address, on every session: an address is never trusted on its own.
- A msg1 is accepted only if its timestamp is greater than the greatest seen from
  that initiator; the watermark moves only after the timestamp decrypted.
- Secrets (private keys, chaining keys, transport keys, psk) never reach a repr or
  an error message. No clock and no global randomness: ``now`` and ``rng(n)`` come in.

Driven by: ``Initiator.create_init(now)`` then ``consume_response(msg)`` (or
``consume_cookie(reply, now)``, after which the caller retries with a new
``Initiator`` sharing the ``CookieJar``); ``Responder.consume_init(msg, ...)``, which
answers in one step and so keeps no per-handshake state.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Callable

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

# BadMac1 and BadCookieReply are re-exported: callers catch every handshake error from here.
from .cookie import (BadCookieReply, BadMac1, CookieChecker, CookieJar,  # noqa: F401
                     TAI64_EPOCH, TIMESTAMP_ROUNDING_NS, HandshakeRejected, Rng,
                     TimestampSource, mac1_key, verify_mac1)
from .cookie import blake2s as _blake2s
from ..errors import LocalProtocolError
from ..identity import Identity, address_of, node_id_of, short_id
from .messages import CookieReply, HandshakeInit, HandshakeResp

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"sporenet e2e v1"
KEY_SIZE = 32
ZERO_PSK = bytes(KEY_SIZE)
INITIATION_MIN_INTERVAL = 1 / 50  # WG HandshakeInitationRate: 50 accepted msg1/s per peer
_P = 2**255 - 19  # the Curve25519 field

Dh = Callable[[X25519PrivateKey, bytes], bytes]


class DecryptFailed(HandshakeRejected):
    """An AEAD field (static, timestamp, empty payload) did not authenticate."""


class UnknownStatic(HandshakeRejected):
    """The initiator's static key belongs to nobody we accept."""


class AddressMismatch(HandshakeRejected):
    """The static key does not map to the claimed Ed25519 key / overlay address."""


class ReplayedTimestamp(HandshakeRejected):
    """msg1's timestamp is not greater than the greatest seen from that initiator."""


class InitiationFlood(HandshakeRejected):
    """More than 50 accepted initiations per second from one peer."""


class UnexpectedMessage(HandshakeRejected):
    """A message the handshake is not in a state to take (late or duplicated)."""


class WrongIndex(HandshakeRejected):
    """A response or cookie reply addressed to another handshake index."""


# -- primitives (whitepaper §5.4 "HASH, HMAC, KDF_n, AEAD") ---------------------------

def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    """KDF_n: HKDF with HMAC-BLAKE2s and empty info, n 32-byte outputs."""
    prk = _hmac(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = _hmac(prk, prev + bytes((i,)))
        out.append(prev)
    return out


def _seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    # Every handshake key is used once, so the counter nonce is always 0.
    return ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, ad)


def _open(key: bytes, ciphertext: bytes, ad: bytes, what: str) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(bytes(12), ciphertext, ad)
    except InvalidTag:
        raise DecryptFailed(f"{what} does not decrypt") from None


def x25519(private: X25519PrivateKey, public: bytes) -> bytes:
    """DH; a low-order peer point (all-zero output) is the peer's fault."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise DecryptFailed("low-order public key") from None


_C0 = _blake2s(CONSTRUCTION)
_H0 = _blake2s(_C0 + IDENTIFIER)


@functools.lru_cache(maxsize=4096)
def noise_public_key(ed25519_public: bytes) -> bytes:
    """The X25519 Noise static of an Ed25519 identity key.

    Memoised (a pure function; ~40 µs a conversion, a sixth of a responder's work).
    """
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public)
    except (nacl.exceptions.CryptoError, TypeError, ValueError):
        raise LocalProtocolError("not a usable Ed25519 public key") from None


class StaticKey:
    """Our Noise static key pair, converted from the node's Ed25519 identity."""

    __slots__ = ("_private", "public", "ed25519_public")

    def __init__(self, identity: Identity) -> None:
        secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
            identity.seed + identity.public_key)
        self._private = X25519PrivateKey.from_private_bytes(secret)
        self.public: bytes = noise_public_key(identity.public_key)
        self.ed25519_public: bytes = identity.public_key

    def __repr__(self) -> str:
        return f"StaticKey(ed25519={self.ed25519_public[:4].hex()}, secret=<redacted>)"


@dataclass(frozen=True, slots=True)
class PeerKey:
    """What the responder's lookup returns for an initiator static it accepts."""

    public_key: bytes  # Ed25519
    psk: bytes = field(default=ZERO_PSK, repr=False)

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_SIZE or len(self.psk) != KEY_SIZE:
            raise LocalProtocolError(f"peer key and psk must be {KEY_SIZE} bytes")


def ed25519_candidates(x25519_public: bytes) -> tuple[bytes, bytes]:
    """The two Ed25519 keys, A and -A, whose X25519 image is ``x25519_public``.

    y = (u - 1) / (u + 1) (RFC 7748 §4.1); the map forgets the sign of x, so both
    signs come back. Whoever holds A's scalar can sign as -A anyway (negate it), so
    accepting either grants nothing new.
    """
    u = int.from_bytes(x25519_public, "little") & ((1 << 255) - 1)
    enc = ((u - 1) * pow(u + 1, _P - 2, _P) % _P).to_bytes(32, "little")
    return enc, enc[:31] + bytes((enc[31] | 0x80,))


def lookup_by_address(claimed_address: ipaddress.IPv6Address,
                      psk: bytes = ZERO_PSK) -> Callable[[bytes], PeerKey | None]:
    """A ``Responder`` lookup for an initiator known only by the address it claims."""
    def lookup(s_pub: bytes) -> PeerKey | None:
        for key in ed25519_candidates(s_pub):
            try:
                if address_of(key) == claimed_address and noise_public_key(key) == s_pub:
                    return PeerKey(key, psk)
            except LocalProtocolError:  # a low-order or non-canonical point
                continue
        return None
    return lookup


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """Keys of a finished handshake; the transport keypair is built on this."""

    local_index: int
    remote_index: int
    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    remote_public_key: bytes  # Ed25519
    initiator: bool
    transcript_hash: bytes


@dataclass(frozen=True, slots=True)
class Responded:
    """The responder accepted msg1: send ``reply``; keys are in ``result``."""

    reply: HandshakeResp
    result: HandshakeResult


class InitiatorState(enum.Enum):
    READY = "ready"
    INIT_SENT = "init_sent"
    ESTABLISHED = "established"


class Initiator:
    """One handshake attempt towards a peer known by its Ed25519 key.

    States: READY --create_init--> INIT_SENT --consume_response--> ESTABLISHED.
    ``consume_cookie`` keeps INIT_SENT. A forged or garbled response leaves the
    state unchanged (an attacker cannot cancel our attempt), it only raises.
    """

    __slots__ = ("static", "peer_public_key", "local_index", "state", "cookies", "_rng",
                 "_clock", "_psk", "_dh", "_peer_static", "_chain", "_hash_state", "_ephemeral")

    def __init__(self, static: StaticKey, peer_public_key: bytes, *, local_index: int,
                 rng: Rng, clock: TimestampSource, psk: bytes = ZERO_PSK,
                 cookies: CookieJar | None = None, dh: Dh = x25519) -> None:
        if len(psk) != KEY_SIZE or not 0 <= local_index <= 0xFFFF_FFFF:
            raise LocalProtocolError(f"psk must be {KEY_SIZE} bytes and local index a u32")
        self.static, self.peer_public_key, self.local_index = static, peer_public_key, local_index
        self._peer_static = noise_public_key(peer_public_key)
        self.cookies = cookies if cookies is not None else CookieJar(self._peer_static)
        self._rng, self._clock, self._psk, self._dh = rng, clock, psk, dh
        self.state = InitiatorState.READY
        self._chain = self._hash_state = b""
        self._ephemeral: X25519PrivateKey | None = None

    def create_init(self, now: float) -> HandshakeInit:
        """Message 1 (whitepaper §5.4.2), mac1/mac2 stamped."""
        if self.state is not InitiatorState.READY:
            raise LocalProtocolError(f"create_init in state {self.state.value}")
        eph = X25519PrivateKey.from_private_bytes(self._rng(KEY_SIZE))
        e_pub = eph.public_key().public_bytes_raw()
        c, h = _C0, _blake2s(_H0 + self._peer_static)
        (c,) = _kdf(c, e_pub, 1)
        h = _blake2s(h + e_pub)
        try:
            c, k = _kdf(c, self._dh(eph, self._peer_static), 2)
            enc_static = _seal(k, self.static.public, h)
            h = _blake2s(h + enc_static)
            c, k = _kdf(c, self._dh(self.static._private, self._peer_static), 2)
        except DecryptFailed:
            raise LocalProtocolError("peer key is a low-order point") from None
        enc_ts = _seal(k, self._clock.next(now), h)
        h = _blake2s(h + enc_ts)
        msg = HandshakeInit(self.local_index, e_pub, enc_static, enc_ts)
        self._chain, self._hash_state, self._ephemeral = c, h, eph
        self.state = InitiatorState.INIT_SENT
        return self.cookies.stamp(msg, now)

    def consume_cookie(self, reply: CookieReply, now: float) -> None:
        """Keep the cookie for the next attempt (this one stays pending)."""
        self._expect(reply.receiver_index)
        self.cookies.consume_reply(reply, now)

    def consume_response(self, msg: HandshakeResp) -> HandshakeResult:
        """Message 2 (whitepaper §5.4.3): check mac1 first, then the DHs."""
        self._expect(msg.receiver_index)
        verify_mac1(mac1_key(self.static.public), msg)
        assert self._ephemeral is not None
        c, h = self._chain, self._hash_state
        (c,) = _kdf(c, msg.ephemeral, 1)
        h = _blake2s(h + msg.ephemeral)
        (c,) = _kdf(c, self._dh(self._ephemeral, msg.ephemeral), 1)
        (c,) = _kdf(c, self._dh(self.static._private, msg.ephemeral), 1)
        c, tau, k = _kdf(c, self._psk, 3)
        h = _blake2s(h + tau)
        _open(k, msg.encrypted_nothing, h, "empty payload")
        h = _blake2s(h + msg.encrypted_nothing)
        send, recv = _kdf(c, b"", 2)
        # Forward secrecy: forget the ephemeral and chaining key as soon as keys exist.
        self._chain, self._hash_state, self._ephemeral = b"", b"", None
        self.state = InitiatorState.ESTABLISHED
        return HandshakeResult(self.local_index, msg.sender_index, send, recv,
                               self.peer_public_key, True, h)

    def _expect(self, receiver_index: int) -> None:
        if self.state is not InitiatorState.INIT_SENT:
            raise UnexpectedMessage(f"handshake message in state {self.state.value}")
        if receiver_index != self.local_index:
            raise WrongIndex(f"message for index {receiver_index}, ours is {self.local_index}")

    def __repr__(self) -> str:
        return (f"Initiator(peer={self.peer_public_key[:4].hex()}, index={self.local_index}, "
                f"state={self.state.value}, secrets=<redacted>)")


class Responder:
    """Answers msg1 for one node: holds its static key, cookie secret and watermarks.

    ``greatest_timestamp`` (Ed25519 key → 12-byte TAI64N) is what a restart must
    keep to refuse replays of old msg1s; it only grows for authenticated peers.
    """

    __slots__ = ("static", "cookies", "greatest_timestamp", "_last_accepted", "_rng", "_dh")

    def __init__(self, static: StaticKey, *, rng: Rng, dh: Dh = x25519) -> None:
        self.static, self._rng, self._dh = static, rng, dh
        self.cookies = CookieChecker(static.public, rng)
        self.greatest_timestamp: dict[bytes, bytes] = {}
        self._last_accepted: dict[bytes, float] = {}

    def consume_init(self, msg: HandshakeInit, *, now: float, local_index: int,
                     lookup: Callable[[bytes], PeerKey | None], source_tag: bytes = b"",
                     under_load: bool = False,
                     claimed_address: ipaddress.IPv6Address | None = None,
                     ) -> Responded | CookieReply:
        """Check and answer msg1 (whitepaper §5.4.2-5.4.3, §5.4.7).

        ``lookup(x25519_static)`` names the initiator (None: not accepted);
        ``claimed_address`` is the source address the message came with, if any.
        Returns a ``CookieReply`` instead when ``under_load`` and mac2 is not valid
        for ``source_tag``: no peer fault (every first attempt lacks a cookie).
        """
        if not 0 <= local_index <= 0xFFFF_FFFF:
            raise LocalProtocolError("local index out of u32 range")
        self.cookies.check_mac1(msg)
        if under_load and not self.cookies.check_mac2(msg, source_tag, now):
            return self.cookies.create_reply(msg, source_tag, now)
        c, h = _C0, _blake2s(_H0 + self.static.public)
        (c,) = _kdf(c, msg.ephemeral, 1)
        h = _blake2s(h + msg.ephemeral)
        c, k = _kdf(c, self._dh(self.static._private, msg.ephemeral), 2)
        s_pub = _open(k, msg.encrypted_static, h, "static key")
        h = _blake2s(h + msg.encrypted_static)
        peer = self._authenticate(s_pub, lookup, claimed_address)
        c, k = _kdf(c, self._dh(self.static._private, s_pub), 2)
        stamp = _open(k, msg.encrypted_timestamp, h, "timestamp")
        h = _blake2s(h + msg.encrypted_timestamp)
        self._check_fresh(peer.public_key, stamp, now)
        return self._respond(msg, peer, s_pub, c, h, local_index)

    def _authenticate(self, s_pub: bytes, lookup: Callable[[bytes], PeerKey | None],
                      claimed_address: ipaddress.IPv6Address | None) -> PeerKey:
        peer = lookup(s_pub)
        if peer is None:
            raise UnknownStatic("initiator static key is not accepted")
        if noise_public_key(peer.public_key) != s_pub:
            raise AddressMismatch("static key does not map to the claimed Ed25519 key")
        if claimed_address is not None and address_of(peer.public_key) != claimed_address:
            raise AddressMismatch(
                f"key {short_id(node_id_of(peer.public_key))} does not own {claimed_address}")
        return peer

    def _check_fresh(self, peer_key: bytes, stamp: bytes, now: float) -> None:
        # Fixed-width big-endian TAI64N: byte order is time order.
        who = short_id(node_id_of(peer_key))
        if stamp <= self.greatest_timestamp.get(peer_key, b""):
            raise ReplayedTimestamp(f"replayed or old timestamp from {who}")
        last = self._last_accepted.get(peer_key)
        if last is not None and now - last < INITIATION_MIN_INTERVAL:
            raise InitiationFlood(f"initiations too fast from {who}")
        self.greatest_timestamp[peer_key] = stamp
        self._last_accepted[peer_key] = now

    def _respond(self, msg: HandshakeInit, peer: PeerKey, s_pub: bytes, c: bytes, h: bytes,
                 local_index: int) -> Responded:
        eph = X25519PrivateKey.from_private_bytes(self._rng(KEY_SIZE))
        e_pub = eph.public_key().public_bytes_raw()
        (c,) = _kdf(c, e_pub, 1)
        h = _blake2s(h + e_pub)
        (c,) = _kdf(c, self._dh(eph, msg.ephemeral), 1)
        (c,) = _kdf(c, self._dh(eph, s_pub), 1)
        c, tau, k = _kdf(c, peer.psk, 3)
        h = _blake2s(h + tau)
        enc_nothing = _seal(k, b"", h)
        h = _blake2s(h + enc_nothing)
        recv, send = _kdf(c, b"", 2)
        # mac2 stays zero: initiators send no cookie replies (they have no handshake queue).
        reply = CookieJar(s_pub).stamp(
            HandshakeResp(local_index, msg.sender_index, e_pub, enc_nothing), 0.0)
        result = HandshakeResult(local_index, msg.sender_index, send, recv, peer.public_key,
                                 False, h)
        return Responded(reply, result)

    def __repr__(self) -> str:
        return f"Responder(static={self.static!r}, peers={len(self.greatest_timestamp)})"
