"""msg1's guards that cost no DH: mac1/mac2 cookies (DoS) and TAI64N stamps (replay).

WireGuard whitepaper §5.1 (timestamps), §5.3 and §5.4.7 (cookies).

- mac1 = MAC(HASH("mac1----" ‖ S_pub_r), frame[:mac1]) where S_pub_r is the
  receiver's Noise static (X25519) key. It proves the sender knows that key, costs
  one keyed BLAKE2s, and is **always** checked before any Diffie-Hellman.
- Under load (the caller says so: queue depth, CPU) the responder also wants
  mac2 = MAC(cookie, frame[:mac2]), where cookie = MAC(R_m, source tag) and R_m is
  a 32-byte secret that rotates every ``COOKIE_SECRET_LIFETIME`` seconds. A message
  without a valid mac2 gets a ``CookieReply`` instead of a response: the cookie
  sealed with XChaCha20-Poly1305 under HASH("cookie--" ‖ S_pub_r), with the mac1
  of the message it answers as associated data (so only the real sender, who knows
  that mac1, can use it, and a reply cannot be replayed onto another message).
- Timestamps (``TimestampSource``): TAI64N, 12 bytes, strictly increasing per
  initiator, nanoseconds rounded down (security.md §1); the responder keeps the
  greatest per initiator (``sessions.noise.Responder``) and refuses any not greater.
- The source tag is whatever the caller binds the cookie to: WireGuard uses the UDP
  source ip:port; for overlay E2E handshakes use ``ingress link node id ‖ claimed
  source address`` (security.md §1 "Overlay adaptation").

Driven by: ``CookieChecker`` (responder, one per node) ``check_mac1``,
``check_mac2``, ``create_reply``; ``CookieJar`` (initiator, one per peer, shared by
successive attempts) ``stamp`` and ``consume_reply``; ``TimestampSource.next(now)``.
Time is the caller's ``now``; secrets and nonces come from the caller's ``rng(n)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Callable, TypeVar

import nacl.bindings
import nacl.exceptions

from ..errors import LocalProtocolError, RemoteProtocolError
from .messages import (COOKIE_NONCE_SIZE, MAC_SIZE, ZERO_MAC, CookieReply,
                               HandshakeInit, HandshakeResp)

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
TAI64_EPOCH = 0x400000000000000A  # TAI64 label of 1970-01-01 (2^62 + 10 s TAI-UTC), as WG
TIMESTAMP_ROUNDING_NS = 1 << 24  # WG: rounddown_pow_of_two(1 s / 50), hides the sub-tick
_NS = 1_000_000_000
COOKIE_SECRET_LIFETIME = 120.0  # WG Cookie-Refresh-Time: R_m changes every 2 min
Rng = Callable[[int], bytes]
Macced = TypeVar("Macced", HandshakeInit, HandshakeResp)


class HandshakeRejected(RemoteProtocolError):
    """Base of every handshake message a peer sent that we refuse."""


class BadMac1(HandshakeRejected):
    """mac1 does not match: the sender does not know our static key (or bytes changed)."""


class BadCookieReply(HandshakeRejected):
    """A cookie reply that does not decrypt or answers nothing we sent."""


def blake2s(data: bytes) -> bytes:
    """HASH of the whitepaper: BLAKE2s-256."""
    return hashlib.blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC of the whitepaper: keyed BLAKE2s with a 16-byte output."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def mac1_key(static_public: bytes) -> bytes:
    return blake2s(LABEL_MAC1 + static_public)


def cookie_key(static_public: bytes) -> bytes:
    return blake2s(LABEL_COOKIE + static_public)


def verify_mac1(key: bytes, msg: HandshakeInit | HandshakeResp) -> None:
    """Raise ``BadMac1`` unless ``msg.mac1`` is right under ``mac1_key(...)``."""
    if not hmac.compare_digest(mac(key, msg.mac1_span()), msg.mac1):
        raise BadMac1("bad mac1")


class CookieChecker:
    """Responder side: checks mac1/mac2 and mints cookie replies for our static key."""

    __slots__ = ("_mac1_key", "_cookie_key", "_rng", "_secret", "_secret_born")

    def __init__(self, static_public: bytes, rng: Rng) -> None:
        self._mac1_key = mac1_key(static_public)
        self._cookie_key = cookie_key(static_public)
        self._rng = rng
        self._secret: bytes | None = None
        self._secret_born = 0.0

    def check_mac1(self, msg: HandshakeInit | HandshakeResp) -> None:
        """Raise ``BadMac1`` unless mac1 is right. Costs one BLAKE2s, no DH."""
        verify_mac1(self._mac1_key, msg)

    def check_mac2(self, msg: HandshakeInit | HandshakeResp, source_tag: bytes, now: float) -> bool:
        """True if mac2 is made with the cookie we would give ``source_tag`` now."""
        if self._secret is None or now - self._secret_born > COOKIE_SECRET_LIFETIME:
            return False  # as wireguard-go: an expired secret validates nothing
        cookie = mac(self._secret, source_tag)
        return hmac.compare_digest(mac(cookie, msg.mac2_span()), msg.mac2)

    def create_reply(self, msg: HandshakeInit | HandshakeResp, source_tag: bytes,
                     now: float) -> CookieReply:
        """The cookie reply that tells the sender of ``msg`` which mac2 we want."""
        if self._secret is None or now - self._secret_born > COOKIE_SECRET_LIFETIME:
            self._secret, self._secret_born = self._rng(32), now
        cookie = mac(self._secret, source_tag)
        nonce = self._rng(COOKIE_NONCE_SIZE)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            cookie, msg.mac1, nonce, self._cookie_key)
        return CookieReply(msg.sender_index, nonce, sealed)

    def __repr__(self) -> str:
        return "CookieChecker(secret=<redacted>)"


class CookieJar:
    """Initiator side, one per peer: computes mac1/mac2 and keeps the last cookie.

    Keep one jar per responder across handshake attempts: a cookie arrives in
    answer to one attempt and is used by the next (WG retries after Rekey-Timeout).
    """

    __slots__ = ("_mac1_key", "_cookie_key", "_last_mac1", "_cookie", "_cookie_born")

    def __init__(self, peer_static_public: bytes) -> None:
        self._mac1_key = mac1_key(peer_static_public)
        self._cookie_key = cookie_key(peer_static_public)
        self._last_mac1: bytes | None = None
        self._cookie: bytes | None = None
        self._cookie_born = 0.0

    def stamp(self, msg: Macced, now: float) -> Macced:
        """``msg`` with mac1 set, and mac2 set if we hold a fresh cookie (zeros if not)."""
        if msg.mac1 != ZERO_MAC or msg.mac2 != ZERO_MAC:
            raise LocalProtocolError("message is already stamped")
        msg = dataclasses.replace(msg, mac1=mac(self._mac1_key, msg.mac1_span()))
        self._last_mac1 = msg.mac1
        if self._cookie is not None and now - self._cookie_born <= COOKIE_SECRET_LIFETIME:
            msg = dataclasses.replace(msg, mac2=mac(self._cookie, msg.mac2_span()))
        return msg

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Store the cookie of ``reply``; raise ``BadCookieReply`` if it is not ours."""
        if self._last_mac1 is None:
            raise BadCookieReply("cookie reply without a message awaiting one")
        try:
            cookie = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                reply.encrypted_cookie, self._last_mac1, reply.nonce, self._cookie_key)
        except nacl.exceptions.CryptoError as exc:
            raise BadCookieReply("cookie reply does not decrypt") from exc
        # One reply per sent message: a second (replayed) reply finds nothing to answer.
        self._last_mac1 = None
        self._cookie, self._cookie_born = cookie, now

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None

    def __repr__(self) -> str:
        return f"CookieJar(cookie={'<redacted>' if self._cookie else None})"


class TimestampSource:
    """The initiator's TAI64N stamps: strictly increasing, nanoseconds rounded down.

    ``now`` is wall-clock seconds since the Unix epoch (the responder compares them
    across our restarts); persist ``last_sent`` so a restart never goes backwards.
    """

    __slots__ = ("last_sent",)

    def __init__(self, last_sent: int = 0) -> None:
        self.last_sent = last_sent  # ns since the Unix epoch of the last stamp sent

    def next(self, now: float) -> bytes:
        secs, nanos = divmod(int(now * _NS), _NS)
        ns = secs * _NS + nanos - nanos % TIMESTAMP_ROUNDING_NS  # round the ns field, as WG
        # max(now, last + 1 ns): a stepped-back or coarse clock still moves forward.
        ns = max(ns, self.last_sent + 1)
        self.last_sent = ns
        secs, nanos = divmod(ns, _NS)
        return (TAI64_EPOCH + secs).to_bytes(8, "big") + nanos.to_bytes(4, "big")
