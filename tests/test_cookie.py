"""mac1/mac2 and cookie replies (WireGuard §5.4.4, §5.4.7), driven directly with a fake rng."""

import dataclasses
import hashlib
import itertools

import nacl.bindings
import pytest

from sporenet.protocols.sessions.cookie import (COOKIE_SECRET_LIFETIME, BadCookieReply, BadMac1,
                                       CookieChecker, CookieJar, cookie_key, mac, mac1_key)
from sporenet.protocols.sessions.messages import HandshakeInit

STATIC = bytes(range(32))  # the responder's X25519 public key (any 32 bytes will do here)
T0 = 1000.0
TAG = b"ingress-link" + b"\x06" * 16


def counting_rng():
    """rng(n) -> n bytes of a counter, so every secret and nonce is predictable."""
    counter = itertools.count(1)
    return lambda n: bytes((next(counter) & 0xFF,)) * n


def init_msg(index=7, fill=0x41):
    return HandshakeInit(index, bytes((fill,)) * 32, bytes((fill,)) * 48, bytes((fill,)) * 28)


def test_mac1_is_keyed_blake2s_over_the_span():
    msg = CookieJar(STATIC).stamp(init_msg(), T0)
    key = hashlib.blake2s(b"mac1----" + STATIC).digest()
    assert key == mac1_key(STATIC)
    assert msg.mac1 == hashlib.blake2s(msg.mac1_span(), key=key, digest_size=16).digest()
    assert msg.mac2 == bytes(16)  # no cookie yet
    CookieChecker(STATIC, counting_rng()).check_mac1(msg)


def test_mac1_for_another_static_or_changed_bytes_fails():
    checker = CookieChecker(STATIC, counting_rng())
    with pytest.raises(BadMac1):
        checker.check_mac1(CookieJar(bytes(32)).stamp(init_msg(), T0))
    msg = CookieJar(STATIC).stamp(init_msg(), T0)
    with pytest.raises(BadMac1):
        checker.check_mac1(dataclasses.replace(msg, ephemeral=b"\x42" * 32))


def test_cookie_reply_carries_mac_of_secret_and_source():
    checker, jar = CookieChecker(STATIC, counting_rng()), CookieJar(STATIC)
    msg = jar.stamp(init_msg(), T0)
    assert not checker.check_mac2(msg, TAG, T0)  # no secret yet
    reply = checker.create_reply(msg, TAG, T0)
    assert reply.receiver_index == 7 and reply.nonce == b"\x02" * 24
    cookie = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        reply.encrypted_cookie, msg.mac1, reply.nonce, cookie_key(STATIC))
    assert cookie == mac(b"\x01" * 32, TAG)  # R_m was the rng's first 32 bytes
    jar.consume_reply(reply, T0)
    again = jar.stamp(init_msg(fill=0x50), T0 + 1)
    assert again.mac2 == mac(cookie, again.mac2_span())
    assert checker.check_mac2(again, TAG, T0 + 1)
    assert not checker.check_mac2(again, TAG + b"x", T0 + 1)


def test_cookie_reply_is_bound_to_the_message_it_answers():
    checker, jar = CookieChecker(STATIC, counting_rng()), CookieJar(STATIC)
    other = CookieJar(STATIC).stamp(init_msg(fill=0x60), T0)
    jar.stamp(init_msg(), T0)
    with pytest.raises(BadCookieReply):  # sealed with another message's mac1
        jar.consume_reply(checker.create_reply(other, TAG, T0), T0)
    with pytest.raises(BadCookieReply):  # nothing awaiting a reply
        CookieJar(STATIC).consume_reply(checker.create_reply(other, TAG, T0), T0)


def test_secret_rotates_and_cookies_expire():
    checker, jar = CookieChecker(STATIC, counting_rng()), CookieJar(STATIC)
    first = checker.create_reply(jar.stamp(init_msg(), T0), TAG, T0)
    jar.consume_reply(first, T0)
    msg = jar.stamp(init_msg(fill=0x51), T0 + 60)
    assert checker.check_mac2(msg, TAG, T0 + 60)
    assert not checker.check_mac2(msg, TAG, T0 + COOKIE_SECRET_LIFETIME + 1)  # R_m too old
    late = jar.stamp(init_msg(fill=0x52), T0 + COOKIE_SECRET_LIFETIME + 1)
    assert late.mac2 == bytes(16)  # the jar no longer uses a stale cookie
    second = checker.create_reply(late, TAG, T0 + COOKIE_SECRET_LIFETIME + 1)
    jar.consume_reply(second, T0 + COOKIE_SECRET_LIFETIME + 1)
    fresh = jar.stamp(init_msg(fill=0x53), T0 + COOKIE_SECRET_LIFETIME + 2)
    assert checker.check_mac2(fresh, TAG, T0 + COOKIE_SECRET_LIFETIME + 2)


def test_reprs_hide_cookies():
    checker, jar = CookieChecker(STATIC, counting_rng()), CookieJar(STATIC)
    jar.consume_reply(checker.create_reply(jar.stamp(init_msg(), T0), TAG, T0), T0)
    assert "redacted" in repr(checker) and "redacted" in repr(jar)
    assert (b"\x01" * 32).hex() not in repr(checker)
