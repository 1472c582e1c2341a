"""PQ-PSK rekey: codecs, ML-KEM-768 exchange, psk derivation, capability check, secrets."""

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sporenet.protocols.sessions import pq

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from sporenet.protocols.sessions.pq import (CT_SIZE, EK_SIZE, PQ_LABEL, BadPqOffer, MlkemUnavailable,
                                   PqAnswer, PqInitiator, PqOffer, PqPsk, answer_offer,
                                   derive_psk, mlkem_available, require_mlkem)

EK = bytes(i & 0xFF for i in range(EK_SIZE))
CT = bytes((7 * i) & 0xFF for i in range(CT_SIZE))
TH = bytes(range(32))
TH2 = bytes(range(1, 33))
SEED = bytes(range(64))

needs_mlkem = pytest.mark.skipif(not mlkem_available(), reason="ML-KEM-768 unavailable")


# --- codecs ------------------------------------------------------------------------

GOLDEN = [(PqOffer(EK), "0124" + EK.hex()), (PqAnswer(CT), "0125" + CT.hex())]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_encoding(msg, hexbytes):
    assert wire.encode_frame(msg) == bytes.fromhex(hexbytes)


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_decoding(msg, hexbytes):
    assert wire.decode_frame(bytes.fromhex(hexbytes)) == msg


def test_registered_in_session_range_with_exact_caps():
    reg = wire.registered_types()
    assert reg[0x24] is PqOffer and reg[0x25] is PqAnswer
    assert PqOffer.MAX_SIZE == 2 + 1_184 and PqAnswer.MAX_SIZE == 2 + 1_088


@pytest.mark.parametrize("bad", ["0124" + EK.hex()[:-2], "0124" + EK.hex() + "00",
                                 "0125" + CT.hex()[:-2], "0125" + CT.hex() + "00", "0124", "0125"])
def test_malformed_frames_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex(bad))


@pytest.mark.parametrize("make", [lambda: PqOffer(EK[:-1]), lambda: PqAnswer(CT + b"\x00"),
                                  lambda: PqInitiator(seed=SEED[:63])])
def test_constructors_refuse_bad_fields(make):
    with pytest.raises(LocalProtocolError):
        make()


@settings(max_examples=50)
@given(st.sampled_from([0x24, 0x25]), st.one_of(st.binary(max_size=64),
                                                st.binary(min_size=1_080, max_size=1_200)))
def test_fuzz_decoders(ftype, body):
    try:
        msg = wire.decode_frame(bytes((wire.VERSION, ftype)) + body)
    except DecodeError:
        return
    assert wire.decode_frame(wire.encode_frame(msg)) == msg


@settings(max_examples=20)
@given(st.binary(min_size=EK_SIZE, max_size=EK_SIZE), st.binary(min_size=CT_SIZE, max_size=CT_SIZE))
def test_roundtrip(ek, ct):
    for msg in (PqOffer(ek), PqAnswer(ct)):
        assert wire.decode_frame(wire.encode_frame(msg)) == msg


# --- KDF ---------------------------------------------------------------------------

def hkdf_blake2s_oracle(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 written out with the standard library: one 32-byte block."""
    prk = hmac.new(salt, ikm, hashlib.blake2s).digest()
    return hmac.new(prk, info + b"\x01", hashlib.blake2s).digest()


def test_derive_psk_matches_rfc5869_oracle_and_golden():
    ss = b"\x42" * 32
    psk = derive_psk(ss, TH, EK, CT)
    info = b"sporenet pq psk v1" + hashlib.blake2s(EK + CT).digest()
    assert PQ_LABEL == b"sporenet pq psk v1"
    assert bytes(psk) == hkdf_blake2s_oracle(ss, TH, info)
    assert bytes(psk).hex() == GOLDEN_PSK


# Frozen once from the oracle: a change of label, KDF or input order breaks it.
GOLDEN_PSK = "6cccda227b8ef008ba767d6dcafe69c36651e02be1363b8973165f7b03b39879"


def test_derive_psk_binds_every_input():
    base = bytes(derive_psk(b"\x42" * 32, TH, EK, CT))
    assert bytes(derive_psk(b"\x43" * 32, TH, EK, CT)) != base
    assert bytes(derive_psk(b"\x42" * 32, TH2, EK, CT)) != base
    assert bytes(derive_psk(b"\x42" * 32, TH, EK[::-1], CT)) != base
    assert bytes(derive_psk(b"\x42" * 32, TH, EK, CT[::-1])) != base
    with pytest.raises(LocalProtocolError):
        derive_psk(b"\x42" * 32, TH[:16], EK, CT)


# --- exchange ----------------------------------------------------------------------

@needs_mlkem
def test_two_sides_derive_the_same_psk_through_frames():
    init = PqInitiator()
    offer = wire.decode_frame(wire.encode_frame(init.offer()))
    answer, psk_r = answer_offer(offer, TH)
    answer = wire.decode_frame(wire.encode_frame(answer))
    psk_i = init.finish(answer, TH)
    assert psk_i == psk_r and len(bytes(psk_i)) == 32
    assert init.finished


@needs_mlkem
def test_encaps_decaps_agree():
    from cryptography.hazmat.primitives.asymmetric import mlkem
    init = PqInitiator(seed=SEED)
    ek = mlkem.MLKEM768PublicKey.from_public_bytes(init.offer().ek)
    ss, ct = ek.encapsulate()
    assert init._dk.decapsulate(ct) == ss


@needs_mlkem
def test_seed_makes_the_offer_deterministic():
    assert PqInitiator(seed=SEED).offer() == PqInitiator(seed=SEED).offer()
    assert PqInitiator(seed=SEED).offer() != PqInitiator(seed=bytes(64)).offer()
    assert PqInitiator().offer() != PqInitiator().offer()


@needs_mlkem
def test_psks_differ_per_exchange():
    psks = set()
    for _ in range(3):
        init = PqInitiator(seed=SEED)  # even the same key: encapsulation is randomised
        answer, psk = answer_offer(init.offer(), TH)
        assert init.finish(answer, TH) == psk
        psks.add(bytes(psk))
    assert len(psks) == 3


@needs_mlkem
def test_other_transcript_gives_other_psk():
    init = PqInitiator()
    answer, psk_r = answer_offer(init.offer(), TH)
    assert init.finish(answer, TH2) != psk_r


@needs_mlkem
def test_tampered_ciphertext_gives_unrelated_psk():
    init = PqInitiator()
    answer, psk_r = answer_offer(init.offer(), TH)
    bad = PqAnswer(bytes([answer.ct[0] ^ 1]) + answer.ct[1:])
    assert init.finish(bad, TH) != psk_r  # implicit rejection: no exception, other key


@needs_mlkem
def test_finish_is_one_shot():
    init = PqInitiator()
    answer, _ = answer_offer(init.offer(), TH)
    init.finish(answer, TH)
    with pytest.raises(LocalProtocolError):
        init.finish(answer, TH)


@needs_mlkem
def test_invalid_offer_is_the_peers_fault():
    with pytest.raises(BadPqOffer) as info:
        answer_offer(PqOffer(b"\xff" * EK_SIZE), TH)
    assert isinstance(info.value, RemoteProtocolError)


@needs_mlkem
def test_repr_hides_secrets():
    init = PqInitiator(seed=SEED)
    dk_raw = init._dk.private_bytes_raw()
    answer, psk = answer_offer(init.offer(), TH)
    for text in (repr(init), repr(psk), repr(answer), repr(init.offer()), str(psk)):
        assert dk_raw.hex()[:16] not in text and bytes(psk).hex()[:16] not in text
        assert "\\x" not in text
    assert "redacted" in repr(init) and repr(psk) == "PqPsk(<redacted>)"
    assert not hasattr(init, "__dict__")  # no stray attribute can hold a copy


# --- capability check --------------------------------------------------------------

def test_available_here():
    # setup.cfg pins cryptography>=47, whose wheels bundle an OpenSSL with ML-KEM.
    assert mlkem_available()
    require_mlkem()


def test_missing_mlkem_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(pq, "_mlkem", None)
    assert not mlkem_available()
    with pytest.raises(MlkemUnavailable) as info:
        require_mlkem()
    msg = str(info.value)
    assert "cryptography>=47" in msg and "OpenSSL" in msg and "pip install" in msg
    with pytest.raises(MlkemUnavailable):
        PqInitiator()
    with pytest.raises(MlkemUnavailable):
        answer_offer(PqOffer(EK), TH)


def test_old_openssl_is_detected(monkeypatch):
    from cryptography.hazmat.backends.openssl.backend import backend
    monkeypatch.setattr(type(backend), "mlkem_supported", lambda self: False, raising=False)
    assert not mlkem_available()
    with pytest.raises(MlkemUnavailable):
        require_mlkem()


def test_psk_value_object():
    psk = PqPsk(b"\x01" * 32)
    assert bytes(psk) == b"\x01" * 32 and psk == PqPsk(b"\x01" * 32)


# --- end to end with the real handshake -----------------------------------------------

@needs_mlkem
def test_pq_psk_rekey_end_to_end_with_noise():
    """IKpsk2 (zero psk) -> data keys -> PQ exchange inside the session -> IKpsk2 with
    the PQ psk -> data under the new keys; a wrong psk makes the handshake fail."""
    import random

    noise = pytest.importorskip("sporenet.protocols.sessions.noise")
    from sporenet.protocols.identity import Identity
    from sporenet.protocols.sessions.data import KeyRing

    t0 = 1_800_000_000.0  # the initiator's TAI64N clock wants wall-clock seconds
    a, b = Identity(b"\x01" * 32), Identity(b"\x02" * 32)
    sa, sb = noise.StaticKey(a), noise.StaticKey(b)
    rng, clock = random.Random(5), noise.TimestampSource()
    responder = noise.Responder(sb, rng=rng.randbytes)
    ring_a, ring_b = KeyRing(), KeyRing()

    def handshake(index_a, index_b, psk_a, psk_b, now):
        ini = noise.Initiator(sa, b.public_key, local_index=index_a, rng=rng.randbytes,
                              clock=clock, psk=psk_a)
        lookup = {sa.public: noise.PeerKey(a.public_key, psk_b)}.get
        out = responder.consume_init(ini.create_init(now), now=now, local_index=index_b,
                                     lookup=lookup)
        return ini.consume_response(out.reply), out.result

    res_a, res_b = handshake(11, 22, bytes(32), bytes(32), t0)
    assert res_a.transcript_hash == res_b.transcript_hash
    ring_a.install(res_a, t0), ring_b.install(res_b, t0)

    init = PqInitiator()
    sealed = ring_a.seal(b.public_key, wire.encode_frame(init.offer()), t0 + 0.01)
    peer, plaintext = ring_b.open(sealed, t0 + 0.01)
    assert peer == a.public_key
    answer, psk_b = answer_offer(wire.decode_frame(plaintext), res_b.transcript_hash)
    _, plaintext = ring_a.open(ring_b.seal(a.public_key, wire.encode_frame(answer), t0 + 0.02),
                               t0 + 0.02)
    psk_a = init.finish(wire.decode_frame(plaintext), res_a.transcript_hash)
    assert psk_a == psk_b

    with pytest.raises(RemoteProtocolError):  # a psk mismatch cannot complete
        handshake(13, 24, bytes(psk_a), bytes(32), t0 + 0.5)
    res_a2, res_b2 = handshake(33, 44, bytes(psk_a), bytes(psk_b), t0 + 1.0)
    assert res_a2.send_key != res_a.send_key
    ring_b.install(res_b2, t0 + 1.0), ring_a.install(res_a2, t0 + 1.0)
    assert ring_b.open(ring_a.seal(b.public_key, b"pq keys", t0 + 1.1), t0 + 1.1) == (
        a.public_key, b"pq keys")
    assert [kp.local_index for kp in ring_b.keypairs(a.public_key)[:2]] == [22, 44]
