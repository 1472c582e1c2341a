"""Noise IKpsk2 (WireGuard) handshake: keys, oracle, every rejected transition, cookies, FS.

The oracle is ``noiseprotocol`` 0.3.1 (dev extra) run as Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s
with our identifier as prologue, which is exactly how WireGuard's construction maps to Noise.
"""

import dataclasses
import hashlib
import hmac
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sporenet.protocols import wire
from sporenet.protocols.sessions.cookie import CookieJar
from sporenet.protocols.errors import LocalProtocolError, RemoteProtocolError
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.noise import (CONSTRUCTION, IDENTIFIER, TAI64_EPOCH, HandshakeRejected,
                                      TIMESTAMP_ROUNDING_NS, AddressMismatch, BadCookieReply,
                                      BadMac1, DecryptFailed, HandshakeResult, InitiationFlood,
                                      Initiator, InitiatorState, PeerKey, ReplayedTimestamp,
                                      Responded, Responder, StaticKey, TimestampSource,
                                      UnexpectedMessage, UnknownStatic, WrongIndex,
                                      ed25519_candidates, lookup_by_address, x25519)
from sporenet.protocols.sessions.messages import CookieReply, HandshakeInit, HandshakeResp

T0 = 1_800_000_000.0  # wall-clock seconds, as the initiator's TimestampSource expects
A, B, C = Identity(b"\x01" * 32), Identity(b"\x02" * 32), Identity(b"\x03" * 32)
SA, SB, SC = StaticKey(A), StaticKey(B), StaticKey(C)


class CountingDh:
    """The injectable DH hook, counting calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, private, public):
        self.calls += 1
        return x25519(private, public)


def lookup_for(*idents, psk=bytes(32)):
    table = {StaticKey(i).public: PeerKey(i.public_key, psk) for i in idents}
    return table.get


def make_pair(seed=1, psk=bytes(32), dh=x25519):
    rng = random.Random(seed)
    ini = Initiator(SA, B.public_key, local_index=11, rng=rng.randbytes, clock=TimestampSource(),
                    psk=psk, dh=dh)
    resp = Responder(SB, rng=rng.randbytes, dh=dh)
    return ini, resp


def respond(resp, msg, now=T0, **kw):
    kw.setdefault("lookup", lookup_for(A))
    return resp.consume_init(msg, now=now, local_index=22, **kw)


def restamp(msg, peer_static):
    """The message with fresh macs, as an attacker who knows the receiver's public key."""
    return CookieJar(peer_static).stamp(dataclasses.replace(msg, mac1=bytes(16), mac2=bytes(16)),
                                        T0)


def full(ini, resp, now=T0):
    out = respond(resp, ini.create_init(now), now=now)
    return ini.consume_response(out.reply), out.result


# -- the happy path ---------------------------------------------------------------------

def test_full_handshake_gives_matching_keys_through_the_wire():
    ini, resp = make_pair()
    m1 = wire.decode_frame(wire.encode_frame(ini.create_init(T0)))
    out = respond(resp, m1, claimed_address=A.address)
    assert isinstance(out, Responded)
    mine = ini.consume_response(wire.decode_frame(wire.encode_frame(out.reply)))
    theirs = out.result
    assert ini.state is InitiatorState.ESTABLISHED
    assert mine.send_key == theirs.recv_key and mine.recv_key == theirs.send_key
    assert mine.send_key != mine.recv_key
    assert mine.transcript_hash == theirs.transcript_hash
    assert (mine.local_index, mine.remote_index, theirs.local_index, theirs.remote_index) == (
        11, 22, 22, 11)
    assert mine.initiator and not theirs.initiator
    assert mine.remote_public_key == B.public_key and theirs.remote_public_key == A.public_key


def test_psk_is_mixed_in():
    ini, resp = make_pair(psk=b"\x07" * 32)
    out = respond(resp, ini.create_init(T0), lookup=lookup_for(A, psk=b"\x07" * 32))
    assert ini.consume_response(out.reply).send_key == out.result.recv_key
    ini2, resp2 = make_pair(psk=b"\x07" * 32)
    out2 = respond(resp2, ini2.create_init(T0))  # responder's psk is zeros
    with pytest.raises(DecryptFailed):
        ini2.consume_response(out2.reply)


def test_thousand_sessions_have_pairwise_distinct_keys():
    rng = random.Random(5)
    clock = TimestampSource()
    resp = Responder(SB, rng=rng.randbytes)
    keys, hashes = set(), set()
    for i in range(1000):
        ini = Initiator(SA, B.public_key, local_index=i, rng=rng.randbytes, clock=clock)
        out = respond(resp, ini.create_init(T0 + i), now=T0 + i)
        res = ini.consume_response(out.reply)
        assert res.send_key == out.result.recv_key
        keys.update((res.send_key, res.recv_key))
        hashes.add(res.transcript_hash)
    assert len(keys) == 2000 and len(hashes) == 1000


def test_same_ephemerals_same_keys_deterministic():
    a, _ = full(*make_pair(seed=3))
    b, _ = full(*make_pair(seed=3))
    assert a == b


# -- oracle: noiseprotocol --------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs")
def test_matches_noiseprotocol_oracle():
    from noise.connection import Keypair, NoiseConnection

    psk = bytes(range(32))
    rng = random.Random(9)
    e_i, e_r = rng.randbytes(32), rng.randbytes(32)
    stamp = TimestampSource().next(T0)

    ours_i = Initiator(SA, B.public_key, local_index=1, rng=lambda n: e_i,
                       clock=TimestampSource(), psk=psk)
    ours_r = Responder(SB, rng=lambda n: e_r)
    m1 = ours_i.create_init(T0)
    out = respond(ours_r, m1, lookup=lookup_for(A, psk=psk))
    res = ours_i.consume_response(out.reply)

    def conn(initiator, static, remote, eph):
        c = NoiseConnection.from_name(CONSTRUCTION)
        c.set_prologue(IDENTIFIER)
        c.set_psks(psk)
        c.set_as_initiator() if initiator else c.set_as_responder()
        c.set_keypair_from_private_bytes(Keypair.STATIC, static._private.private_bytes_raw())
        if remote is not None:
            c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote.public)
        c.set_keypair_from_private_bytes(Keypair.EPHEMERAL, eph)
        c.start_handshake()
        return c

    ni, nr = conn(True, SA, SB, e_i), conn(False, SB, None, e_r)
    wire1 = bytes(ni.write_message(stamp))
    assert wire1 == m1.ephemeral + m1.encrypted_static + m1.encrypted_timestamp
    assert bytes(nr.read_message(wire1)) == stamp
    wire2 = bytes(nr.write_message(b""))
    assert wire2 == out.reply.ephemeral + out.reply.encrypted_nothing
    ni.read_message(wire2)
    assert ni.get_handshake_hash() == res.transcript_hash == nr.get_handshake_hash()
    np_i = ni.noise_protocol
    assert (np_i.cipher_state_encrypt.k, np_i.cipher_state_decrypt.k) == (res.send_key,
                                                                          res.recv_key)


# -- secrets ----------------------------------------------------------------------------

def _leaks(text, secrets):
    return [s for s in secrets if s.hex() in text or repr(s)[2:-1] in text]


def test_secrets_never_in_repr_or_errors():
    ini, resp = make_pair(psk=b"\x09" * 32)
    m1 = ini.create_init(T0)
    out = respond(resp, m1, lookup=lookup_for(A, psk=b"\x09" * 32))
    res = ini.consume_response(out.reply)
    secrets = [res.send_key, res.recv_key, b"\x09" * 32, SA._private.private_bytes_raw(),
               SB._private.private_bytes_raw(), A.seed]
    texts = [repr(res), str(out.result), repr(out), repr(ini), repr(resp), repr(SA),
             repr(PeerKey(A.public_key, b"\x09" * 32)), repr(resp.cookies), repr(ini.cookies)]
    assert all(_leaks(t, secrets) == [] for t in texts)
    assert all("redacted" in repr(x) for x in (SA, ini, resp, resp.cookies))
    errors = []
    for bad in (dataclasses.replace(m1, mac1=bytes(16)), restamp(
            dataclasses.replace(m1, encrypted_static=bytes(48)), SB.public)):
        with pytest.raises(RemoteProtocolError) as info:
            respond(Responder(SB, rng=random.Random(1).randbytes), bad)
        errors.append(str(info.value))
    assert all(_leaks(e, secrets) == [] for e in errors)


# -- rejected transitions ---------------------------------------------------------------

def test_bad_mac1_is_rejected_before_any_dh():
    dh = CountingDh()
    ini, resp = make_pair(dh=dh)
    m1 = ini.create_init(T0)
    dh.calls = 0
    for bad in (dataclasses.replace(m1, mac1=bytes(16)),
                dataclasses.replace(m1, sender_index=m1.sender_index ^ 1),
                CookieJar(SC.public).stamp(dataclasses.replace(m1, mac1=bytes(16)), T0)):
        with pytest.raises(BadMac1):
            respond(resp, bad)
        with pytest.raises(BadMac1):
            respond(resp, bad, under_load=True)  # no cookie reply for a bad mac1 either
    assert dh.calls == 0
    out = respond(resp, m1)
    bad_resp = dataclasses.replace(out.reply, mac1=bytes(16))
    dh.calls = 0
    with pytest.raises(BadMac1):
        ini.consume_response(bad_resp)
    assert dh.calls == 0 and ini.state is InitiatorState.INIT_SENT


@pytest.mark.parametrize("field,size", [("encrypted_static", 48), ("encrypted_timestamp", 28)])
def test_tampered_ciphertext_fails_to_decrypt(field, size):
    ini, resp = make_pair()
    m1 = ini.create_init(T0)
    bad = restamp(dataclasses.replace(m1, **{field: bytes(size)}), SB.public)
    with pytest.raises(DecryptFailed):
        respond(resp, bad)
    assert resp.greatest_timestamp == {}


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=144, max_size=144), st.booleans(), st.booleans())
def test_responder_raises_only_handshake_errors_on_garbage(body, stamp, load):
    msg = wire.decode_frame(b"\x01\x20" + body)
    if stamp:  # get past mac1 to reach the DH and AEAD steps
        msg = restamp(msg, SB.public)
    try:
        out = respond(Responder(SB, rng=random.Random(1).randbytes), msg, under_load=load)
    except HandshakeRejected:
        return
    assert isinstance(out, CookieReply) and load and stamp


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=88, max_size=88), st.booleans())
def test_initiator_raises_only_handshake_errors_on_garbage(body, stamp):
    ini, _ = make_pair()
    ini.create_init(T0)
    msg = dataclasses.replace(wire.decode_frame(b"\x01\x21" + body), receiver_index=11)
    if stamp:
        msg = restamp(msg, SA.public)
    with pytest.raises(HandshakeRejected):
        ini.consume_response(msg)
    assert ini.state is InitiatorState.INIT_SENT


def test_low_order_ephemeral_is_refused():
    ini, resp = make_pair()
    bad = restamp(dataclasses.replace(ini.create_init(T0), ephemeral=bytes(32)), SB.public)
    with pytest.raises(DecryptFailed):
        respond(resp, bad)


def test_unknown_static_is_refused():
    ini, resp = make_pair()
    with pytest.raises(UnknownStatic):
        respond(resp, ini.create_init(T0), lookup=lookup_for(C))


def test_static_must_map_to_claimed_key_and_address():
    ini, resp = make_pair()
    m1 = ini.create_init(T0)
    with pytest.raises(AddressMismatch):  # lookup names C for A's static
        respond(resp, m1, lookup=lambda s: PeerKey(C.public_key))
    with pytest.raises(AddressMismatch):  # message claims to come from C's address
        respond(resp, m1, claimed_address=C.address)
    assert isinstance(respond(resp, m1, claimed_address=A.address), Responded)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_ed25519_candidates_recover_the_identity(seed):
    ident = Identity(seed)
    assert ident.public_key in ed25519_candidates(StaticKey(ident).public)


def test_responder_knowing_only_the_claimed_address():
    ini, resp = make_pair()
    m1 = ini.create_init(T0)
    with pytest.raises(UnknownStatic):  # A's static claiming C's address
        respond(resp, m1, lookup=lookup_by_address(C.address), claimed_address=C.address)
    out = respond(resp, m1, lookup=lookup_by_address(A.address), claimed_address=A.address)
    assert out.result.remote_public_key == A.public_key
    assert lookup_by_address(A.address)(bytes(32)) is None  # low-order point: no candidate


def test_replayed_or_older_timestamp_is_refused():
    ini, resp = make_pair()
    m1 = ini.create_init(T0)
    assert isinstance(respond(resp, m1), Responded)
    with pytest.raises(ReplayedTimestamp):
        respond(resp, m1, now=T0 + 5)
    # An initiator whose clock is behind (fresh TimestampSource) is refused too.
    old = Initiator(SA, B.public_key, local_index=3, rng=random.Random(2).randbytes,
                    clock=TimestampSource())
    with pytest.raises(ReplayedTimestamp):
        respond(resp, old.create_init(T0 - 1), now=T0 + 5)
    # ...while a later one from the same persisted source is accepted.
    later = Initiator(SA, B.public_key, local_index=4, rng=random.Random(3).randbytes,
                      clock=ini._clock)
    assert isinstance(respond(resp, later.create_init(T0 - 1), now=T0 + 6), Responded)


def test_initiation_flood_is_refused():
    ini, resp = make_pair()
    respond(resp, ini.create_init(T0))
    fast = Initiator(SA, B.public_key, local_index=5, rng=random.Random(4).randbytes,
                     clock=ini._clock)
    with pytest.raises(InitiationFlood):
        respond(resp, fast.create_init(T0 + 0.001), now=T0 + 0.001)


def test_initiator_wrong_state_and_index():
    ini, resp = make_pair()
    with pytest.raises(UnexpectedMessage):
        ini.consume_response(HandshakeResp(22, 11, bytes(32), bytes(16)))
    out = respond(resp, ini.create_init(T0))
    with pytest.raises(LocalProtocolError):
        ini.create_init(T0)
    with pytest.raises(WrongIndex):
        ini.consume_response(dataclasses.replace(out.reply, receiver_index=12))
    ini.consume_response(out.reply)
    with pytest.raises(UnexpectedMessage):  # duplicate response
        ini.consume_response(out.reply)
    with pytest.raises(UnexpectedMessage):
        ini.consume_cookie(CookieReply(11, bytes(24), bytes(32)), T0)


def test_forged_response_leaves_the_attempt_pending():
    ini, resp = make_pair()
    out = respond(resp, ini.create_init(T0))
    forged = restamp(dataclasses.replace(out.reply, encrypted_nothing=bytes(16)), SA.public)
    with pytest.raises(DecryptFailed):
        ini.consume_response(forged)
    assert ini.state is InitiatorState.INIT_SENT
    assert ini.consume_response(out.reply).send_key == out.result.recv_key


def test_caller_misuse_is_local():
    rng = random.Random(1).randbytes
    with pytest.raises(LocalProtocolError):
        Initiator(SA, B.public_key, local_index=1, rng=rng, clock=TimestampSource(), psk=b"x")
    with pytest.raises(LocalProtocolError):
        Initiator(SA, B.public_key, local_index=-1, rng=rng, clock=TimestampSource())
    with pytest.raises(LocalProtocolError):
        Initiator(SA, b"\xff" * 32, local_index=1, rng=rng, clock=TimestampSource())
    with pytest.raises(LocalProtocolError):
        PeerKey(A.public_key, psk=b"short")
    ini, resp = make_pair()
    with pytest.raises(LocalProtocolError):
        resp.consume_init(ini.create_init(T0), now=T0, local_index=1 << 32, lookup=lookup_for(A))
    assert resp.greatest_timestamp == {}
    with pytest.raises(LocalProtocolError):  # already stamped
        CookieJar(SB.public).stamp(make_pair()[0].create_init(T0), T0)


# -- timestamps -------------------------------------------------------------------------

def test_timestamps_are_tai64n_rounded_and_strictly_increasing():
    src = TimestampSource()
    first = src.next(T0 + 0.123456789)
    secs, nanos = int.from_bytes(first[:8], "big"), int.from_bytes(first[8:], "big")
    assert secs == TAI64_EPOCH + int(T0) and nanos % TIMESTAMP_ROUNDING_NS == 0
    assert 0 <= 0.123456789e9 - nanos < TIMESTAMP_ROUNDING_NS
    again = src.next(T0 + 0.123456789)  # same tick: last + 1 ns
    back = src.next(T0 - 3600)  # clock stepped back an hour
    assert first < again < back
    assert int.from_bytes(again[8:], "big") == nanos + 1
    assert len(first) == 12
    assert TimestampSource(last_sent=src.last_sent).next(T0 - 7200) > back  # persisted


# -- cookies ----------------------------------------------------------------------------

def test_cookie_path_under_load():
    rng = random.Random(8)
    resp = Responder(SB, rng=rng.randbytes)
    clock, jar = TimestampSource(), CookieJar(SB.public)
    tag = b"link-node-id" + bytes(A.address.packed)

    def attempt(index, now):
        return Initiator(SA, B.public_key, local_index=index, rng=rng.randbytes, clock=clock,
                         cookies=jar)

    first = attempt(1, T0)
    m1 = first.create_init(T0)
    assert m1.mac2 == bytes(16)
    reply = respond(resp, m1, under_load=True, source_tag=tag)
    assert isinstance(reply, CookieReply) and reply.receiver_index == 1
    assert resp.greatest_timestamp == {}  # no DH, nothing recorded
    first.consume_cookie(reply, T0)
    with pytest.raises(BadCookieReply):  # the same reply again answers nothing
        first.consume_cookie(reply, T0)
    assert first.state is InitiatorState.INIT_SENT and jar.has_cookie

    second = attempt(2, T0 + 5)
    m2 = second.create_init(T0 + 5)
    assert m2.mac2 != bytes(16)
    assert isinstance(respond(resp, m2, now=T0 + 5, under_load=True, source_tag=b"elsewhere"),
                      CookieReply)  # cookie bound to the source tag
    out = respond(resp, m2, now=T0 + 5, under_load=True, source_tag=tag)
    assert second.consume_response(out.reply).send_key == out.result.recv_key

    third = attempt(3, T0 + 200)  # the cookie secret has rotated
    m3 = third.create_init(T0 + 200)
    assert isinstance(respond(resp, m3, now=T0 + 200, under_load=True, source_tag=tag),
                      CookieReply)


def test_cookie_reply_for_another_index_or_tampered():
    ini, resp = make_pair()
    m1 = ini.create_init(T0)
    reply = respond(resp, m1, under_load=True)
    with pytest.raises(WrongIndex):
        ini.consume_cookie(dataclasses.replace(reply, receiver_index=99), T0)
    with pytest.raises(BadCookieReply):
        ini.consume_cookie(dataclasses.replace(reply, encrypted_cookie=bytes(32)), T0)
    ini.consume_cookie(reply, T0)


# -- forward secrecy --------------------------------------------------------------------

def _hmac(k, d):
    return hmac.new(k, d, hashlib.blake2s).digest()


def _kdf(k, d, n):
    prk, out, prev = _hmac(k, d), [], b""
    for i in range(1, n + 1):
        prev = _hmac(prk, prev + bytes((i,)))
        out.append(prev)
    return out


def _derive(m1, m2, es, ss, ee, se, psk=bytes(32)):
    """Replay the key schedule from public messages and the four DH values."""
    c = hashlib.blake2s(CONSTRUCTION).digest()
    (c,) = _kdf(c, m1.ephemeral, 1)
    c = _kdf(c, es, 2)[0]
    c = _kdf(c, ss, 2)[0]
    (c,) = _kdf(c, m2.ephemeral, 1)
    (c,) = _kdf(c, ee, 1)
    (c,) = _kdf(c, se, 1)
    c = _kdf(c, psk, 3)[0]
    return tuple(_kdf(c, b"", 2))


def test_static_keys_alone_do_not_give_the_transport_keys():
    e_i, e_r = random.Random(1).randbytes(32), random.Random(2).randbytes(32)
    ini = Initiator(SA, B.public_key, local_index=1, rng=lambda n: e_i, clock=TimestampSource())
    resp = Responder(SB, rng=lambda n: e_r)
    m1 = ini.create_init(T0)
    out = respond(resp, m1)
    res = ini.consume_response(out.reply)
    a_priv, b_priv = SA._private, SB._private
    # Everything the two static private keys and the wire give an attacker:
    es = x25519(b_priv, m1.ephemeral)
    ss = x25519(a_priv, SB.public)
    se = x25519(a_priv, out.reply.ephemeral)
    # With the ephemerals the schedule reproduces the keys (the model is right)...
    ee = x25519(X25519PrivateKey.from_private_bytes(e_i), out.reply.ephemeral)
    assert _derive(m1, out.reply, es, ss, ee, se) == (res.send_key, res.recv_key)
    # ...without them, every static-only guess for ee misses.
    for guess in (ss, es, se, x25519(b_priv, m1.ephemeral), x25519(a_priv, m1.ephemeral),
                  x25519(b_priv, out.reply.ephemeral), bytes(32)):
        keys = _derive(m1, out.reply, es, ss, guess, se)
        assert res.send_key not in keys and res.recv_key not in keys


def test_handshake_result_is_frozen():
    res, _ = full(*make_pair())
    assert isinstance(res, HandshakeResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.send_key = b""
    assert isinstance(HandshakeInit, type)
