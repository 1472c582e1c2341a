"""Session data frames, keypairs and the key ring, driven by hand-advanced ``now``.

``HandshakeResult`` below is a stand-in with the shape of ``protocols.sessions.noise``'s
(built by the handshake work running in parallel): only its fields matter here.
"""

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from sporenet.protocols.sessions.data import (
    KEEPALIVE_TIMEOUT, MAX_PAYLOAD, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, BadTag, ExpiredFrame, KeyRing, Keypair,
    KeypairExpired, NoKeypair, ReleaseIndex, ReplayedFrame, SendKeepalive, SessionData,
    UnknownReceiver, parse_header)


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    remote_public_key: bytes
    initiator: bool
    transcript_hash: bytes


PUB_A, PUB_B = b"\xaa" * 32, b"\xbb" * 32


def handshake(n: int, i_index: int, r_index: int) -> tuple[HandshakeResult, HandshakeResult]:
    """What both ends of handshake number ``n`` would get: mirrored keys and indices."""
    k1, k2, th = bytes([n]) * 32, bytes([n + 100]) * 32, bytes([n + 200]) * 32
    init = HandshakeResult(i_index, r_index, k1, k2, PUB_B, True, th)
    resp = HandshakeResult(r_index, i_index, k2, k1, PUB_A, False, th)
    return init, resp


def keypairs(now=0.0):
    init, resp = handshake(1, 0x11, 0x22)
    return Keypair(init, now), Keypair(resp, now)


# --- codec -------------------------------------------------------------------------

CT = bytes(range(20))
GOLDEN = [
    (SessionData(0x01020304, 5, CT), "0123" + "01020304" + "0000000000000005" + CT.hex()),
    (SessionData(0xFFFFFFFF, (1 << 64) - 1, b"\x00" * 16), "0123" + "ff" * 12 + "00" * 16),
]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_encoding(msg, hexbytes):
    assert wire.encode_frame(msg) == bytes.fromhex(hexbytes)
    assert wire.encode_frame(msg)[:14] == msg.header()


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_decoding(msg, hexbytes):
    frame = bytes.fromhex(hexbytes)
    assert wire.decode_frame(frame) == msg
    assert parse_header(frame) == (msg.receiver_index, msg.counter)


def test_registered_in_session_range_and_cap_fits_64k():
    assert wire.registered_types()[0x23] is SessionData
    assert SessionData.MAX_SIZE == 2 + 4 + 8 + 65_536 + 16 <= wire.MAX_FRAME_SIZE
    assert MAX_PAYLOAD == 65_536


@pytest.mark.parametrize("bad", [
    "0123" + "01020304" + "0000000000000005" + "00" * 15,  # shorter than the tag
    "0123" + "01020304" + "00000000000000",
    "0123" + "010203",
    "0123",
])
def test_malformed_frames_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex(bad))
    with pytest.raises(DecodeError):
        parse_header(bytes.fromhex(bad))


def test_parse_header_refuses_other_types_and_oversize():
    frame = wire.encode_frame(GOLDEN[0][0])
    for bad in (b"\x02" + frame[1:], frame[:1] + b"\x22" + frame[2:],
                frame[:14] + bytes(SessionData.MAX_SIZE)):
        with pytest.raises(DecodeError):
            parse_header(bad)


@pytest.mark.parametrize("make", [
    lambda: SessionData(-1, 0, CT),
    lambda: SessionData(1 << 32, 0, CT),
    lambda: SessionData(0, 1 << 64, CT),
    lambda: SessionData(0, 0, b"\x00" * 15),
    lambda: SessionData(0, 0, b"\x00" * (MAX_PAYLOAD + 17)),
])
def test_constructors_refuse_bad_fields(make):
    with pytest.raises(LocalProtocolError):
        make()


@given(st.binary(max_size=120))
def test_fuzz_decoders(body):
    frame = bytes((wire.VERSION, 0x23)) + body
    try:
        msg = wire.decode_frame(frame)
    except DecodeError:
        with pytest.raises(DecodeError):
            parse_header(frame)
        return
    assert parse_header(frame) == (msg.receiver_index, msg.counter)
    assert wire.encode_frame(msg) == frame


@given(st.builds(SessionData, st.integers(0, 0xFFFFFFFF), st.integers(0, (1 << 64) - 1),
                 st.binary(min_size=16, max_size=100)))
def test_roundtrip(msg):
    assert wire.decode_frame(wire.encode_frame(msg)) == msg


# --- keypair -----------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 1_400, 65_000, MAX_PAYLOAD])
def test_seal_open_roundtrip(size):
    a, b = keypairs()
    payload = bytes(i & 0xFF for i in range(size))
    frame = a.seal(payload, now=1.0)
    assert len(frame) == 14 + size + 16
    assert wire.decode_frame(frame) == SessionData(0x22, 0, frame[14:])
    assert b.open(frame, now=1.0) == payload
    assert b.open(memoryview(a.seal(payload, 2.0)), 2.0) == payload and a.send_counter == 2


def test_nonce_and_aad_follow_wireguard():
    a, _ = keypairs()
    a._send_counter = 7
    frame = a.seal(b"hi", 0.0)
    header = bytes.fromhex("0123" + "00000022" + "0000000000000007")
    nonce = b"\x00" * 4 + (7).to_bytes(8, "little")
    assert frame == header + ChaCha20Poly1305(b"\x01" * 32).encrypt(nonce, b"hi", header)
    # Frozen bytes: another implementation of the format must produce exactly these.
    assert frame.hex() == "012300000022000000000000000753c9be322f53cb563c1879ef04edd08db90a"


def test_payload_over_cap_refused():
    a, _ = keypairs()
    with pytest.raises(LocalProtocolError):
        a.seal(bytes(MAX_PAYLOAD + 1), 0.0)


def test_replayed_frame_rejected_and_counted():
    a, b = keypairs()
    frame = a.seal(b"once", 0.0)
    assert b.open(frame, 0.0) == b"once"
    with pytest.raises(ReplayedFrame):
        b.open(frame, 0.1)
    assert b.replayed == 1 and b.forged == 0


def test_forged_frame_does_not_move_the_window():
    a, b = keypairs()
    early = a.seal(b"early", 0.0)  # counter 0
    # A forged frame far ahead: had it moved the window, counter 0 would fall below it.
    forged = bytes.fromhex("0123" + "00000022") + (1 << 40).to_bytes(8, "big") + bytes(32)
    with pytest.raises(BadTag):
        b.open(forged, 0.0)
    assert b.forged == 1 and b._window.highest == 0
    assert b.open(early, 0.0) == b"early"


@pytest.mark.parametrize("offset,value", [(2, 0x23), (9, 0x01), (14, 0x01), (-1, 0x01)])
def test_tampered_frame_fails_tag(offset, value):
    a, b = keypairs()
    frame = bytearray(a.seal(b"payload", 0.0))
    frame[offset] ^= value  # index, counter (AAD), ciphertext, tag
    with pytest.raises((BadTag, LocalProtocolError)):
        b.open(bytes(frame), 0.0)


def test_counters_past_reject_after_messages_refused():
    a, b = keypairs()
    a._send_counter = REJECT_AFTER_MESSAGES - 1
    assert b.open(a.seal(b"last", 0.0), 0.0) == b"last"
    with pytest.raises(KeypairExpired):
        a.seal(b"one too many", 0.0)
    # A validly tagged frame at the limit (sealed by hand) is refused before decryption.
    header = bytes.fromhex("0123" + "00000022") + REJECT_AFTER_MESSAGES.to_bytes(8, "big")
    nonce = b"\x00" * 4 + REJECT_AFTER_MESSAGES.to_bytes(8, "little")
    frame = header + ChaCha20Poly1305(b"\x01" * 32).encrypt(nonce, b"x", header)
    with pytest.raises(ExpiredFrame):
        b.open(frame, 0.0)


def test_rekey_due_by_messages_and_time():
    a, b = keypairs(now=100.0)
    assert not a.rekey_due(100.0) and not b.rekey_due(100.0)
    assert a.rekey_due(100.0 + REKEY_AFTER_TIME)          # only the initiator, on time
    assert not b.rekey_due(100.0 + REKEY_AFTER_TIME)
    assert b.rekey_due(100.0 + REJECT_AFTER_TIME)         # anyone, once it cannot seal
    b._send_counter = REKEY_AFTER_MESSAGES
    assert b.rekey_due(100.0)


def test_keypair_older_than_reject_after_time_refused():
    a, b = keypairs(now=10.0)
    late = 10.0 + REJECT_AFTER_TIME
    frame = a.seal(b"x", late - 0.001)
    with pytest.raises(ExpiredFrame):
        b.open(frame, late)
    with pytest.raises(KeypairExpired):
        a.seal(b"x", late)
    assert b.open(frame, late - 0.001) == b"x"


def test_repr_hides_keys():
    a, _ = keypairs()
    text = repr(a)
    assert "redacted" in text and "0101" not in text and "\\x01" not in text


def test_keys_must_be_32_bytes():
    init, _ = handshake(1, 1, 2)
    with pytest.raises(LocalProtocolError):
        Keypair(HandshakeResult(1, 2, b"k" * 16, init.recv_key, PUB_B, True, b""), 0.0)


# --- key ring ----------------------------------------------------------------------

def rings():
    return KeyRing(), KeyRing()  # A (initiates), B (responds)


def indices(ring, peer):
    """``(previous, current, next)`` local indices, None for an empty slot."""
    return tuple(kp and kp.local_index for kp in ring.keypairs(peer))


def test_ring_first_session_confirms_responder_on_first_data():
    ra, rb = rings()
    i1, r1 = handshake(1, 0x11, 0x22)
    assert ra.install(i1, 0.0) == [] and rb.install(r1, 0.0) == []
    kp_b = rb.keypairs(PUB_A)[2]
    assert rb.keypairs(PUB_A) == (None, None, kp_b)       # responder waits in next
    with pytest.raises(NoKeypair):
        rb.seal(PUB_A, b"too early", 0.0)
    assert ra.keypairs(PUB_B)[1].local_index == 0x11      # initiator: current at once
    assert rb.open(ra.seal(PUB_B, b"hello", 0.1), 0.1) == (PUB_A, b"hello")
    assert rb.keypairs(PUB_A) == (None, kp_b, None)       # confirmed
    assert ra.open(rb.seal(PUB_A, b"back", 0.2), 0.2) == (PUB_B, b"back")


def test_ring_rotation_previous_current_next():
    ra, rb = rings()
    i1, r1 = handshake(1, 0x11, 0x22)
    ra.install(i1, 0.0), rb.install(r1, 0.0)
    rb.open(ra.seal(PUB_B, b"confirm", 0.0), 0.0)
    # Rekey at 120 s: A starts handshake 2.
    assert ra.rekey_due(PUB_B, REKEY_AFTER_TIME) and not rb.rekey_due(PUB_A, REKEY_AFTER_TIME)
    i2, r2 = handshake(2, 0x33, 0x44)
    rb.install(r2, 120.0)
    in_flight = rb.seal(PUB_A, b"old keys", 120.0)        # B still sends under current
    ra.install(i2, 120.1)
    assert indices(ra, PUB_B) == (0x11, 0x33, None)
    assert ra.open(in_flight, 120.1) == (PUB_B, b"old keys")  # via previous
    assert indices(rb, PUB_A) == (None, 0x22, 0x44)
    rb.open(ra.seal(PUB_B, b"new keys", 120.2), 120.2)
    assert indices(rb, PUB_A) == (0x22, 0x44, None)
    # Handshake 3 pushes keypair 1 out of both rings: its index is released.
    i3, r3 = handshake(3, 0x55, 0x66)
    assert ra.install(i3, 240.0) == [ReleaseIndex(0x11)]
    assert rb.install(r3, 240.0) == [ReleaseIndex(0x22)]  # responder: previous goes at once
    assert indices(rb, PUB_A) == (None, 0x44, 0x66)
    rb.open(ra.seal(PUB_B, b"third", 240.1), 240.1)
    assert indices(rb, PUB_A) == (0x44, 0x66, None)
    assert len(ra) == 2 and len(rb) == 2


def test_ring_responder_drops_unconfirmed_next_and_previous():
    _, rb = rings()
    i1, r1 = handshake(1, 0x11, 0x22)
    rb.install(r1, 0.0)
    _, r2 = handshake(2, 0x33, 0x44)
    assert rb.install(r2, 1.0) == [ReleaseIndex(0x22)]    # the never-confirmed next
    with pytest.raises(UnknownReceiver):
        rb.open(Keypair(i1, 0.0).seal(b"late", 1.0), 1.0)
    assert rb.rejected["unknown_index"] == 1


def test_ring_initiator_install_over_pending_next():
    """Both ends initiated at once: our responder keypair (next) becomes previous."""
    ra = KeyRing()
    i1, _ = handshake(1, 0x11, 0x22)
    ra.install(i1, 0.0)
    _, r2 = handshake(2, 0x33, 0x44)        # B initiated too: A responded
    r2 = HandshakeResult(r2.local_index, r2.remote_index, r2.send_key, r2.recv_key, PUB_B,
                         False, r2.transcript_hash)
    ra.install(r2, 1.0)
    i3, _ = handshake(3, 0x55, 0x66)
    assert indices(ra, PUB_B) == (None, 0x11, 0x44)
    assert ra.install(i3, 2.0) == [ReleaseIndex(0x11)]   # the old current goes
    assert indices(ra, PUB_B) == (0x44, 0x55, None)


def test_ring_counts_rejections():
    ra, rb = rings()
    i1, r1 = handshake(1, 0x11, 0x22)
    ra.install(i1, 0.0), rb.install(r1, 0.0)
    frame = ra.seal(PUB_B, b"x", 0.0)
    rb.open(frame, 0.0)
    with pytest.raises(ReplayedFrame):
        rb.open(frame, 0.0)
    fresh = ra.seal(PUB_B, b"z", 0.0)
    with pytest.raises(BadTag):
        rb.open(fresh[:-1] + bytes([fresh[-1] ^ 1]), 0.0)
    late = ra.seal(PUB_B, b"y", 1.0)
    with pytest.raises(ExpiredFrame):
        rb.open(late, REJECT_AFTER_TIME)
    assert rb.rejected == {"unknown_index": 0, "replayed": 1, "forged": 1, "expired": 1}


def test_ring_index_collision_refused():
    ring = KeyRing()
    i1, _ = handshake(1, 0x11, 0x22)
    ring.install(i1, 0.0)
    with pytest.raises(LocalProtocolError):
        ring.install(handshake(2, 0x11, 0x44)[0], 0.0)


def test_ring_timers_expire_keypairs_and_release_indices():
    ra, rb = rings()
    assert ra.next_deadline() is None and ra.on_timer(0.0) == []
    i1, r1 = handshake(1, 0x11, 0x22)
    ra.install(i1, 5.0), rb.install(r1, 5.0)
    assert ra.next_deadline() == 5.0 + REJECT_AFTER_TIME
    assert ra.on_timer(100.0) == []
    assert ra.on_timer(5.0 + REJECT_AFTER_TIME) == [ReleaseIndex(0x11)]
    assert ra.keypairs(PUB_B) == (None, None, None) and ra.next_deadline() is None
    assert ra.rekey_due(PUB_B, 200.0)
    with pytest.raises(NoKeypair):
        ra.seal(PUB_B, b"x", 200.0)


def test_ring_passive_keepalive():
    ra, rb = rings()
    i1, r1 = handshake(1, 0x11, 0x22)
    ra.install(i1, 0.0), rb.install(r1, 0.0)
    rb.open(ra.seal(PUB_B, b"", 1.0), 1.0)            # a keepalive asks for no answer
    assert rb.next_deadline() == REJECT_AFTER_TIME
    rb.open(ra.seal(PUB_B, b"data", 2.0), 2.0)
    assert rb.next_deadline() == 2.0 + KEEPALIVE_TIMEOUT
    assert rb.on_timer(2.0 + KEEPALIVE_TIMEOUT) == [SendKeepalive(PUB_A)]
    assert rb.on_timer(30.0) == []                     # once per data burst
    rb.open(ra.seal(PUB_B, b"more", 31.0), 31.0)
    rb.seal(PUB_A, b"reply", 32.0)                     # we answered: no keepalive
    assert rb.on_timer(31.0 + KEEPALIVE_TIMEOUT) == []


def test_ring_remove_peer():
    ra, _ = rings()
    ra.install(handshake(1, 0x11, 0x22)[0], 0.0)
    assert ra.remove_peer(PUB_B) == [ReleaseIndex(0x11)]
    assert ra.remove_peer(PUB_B) == [] and len(ra) == 0
    assert "KeyRing(peers=0" in repr(ra)


@given(st.binary(max_size=80))
def test_fuzz_ring_open_raises_only_remote_errors(data):
    ra, rb = rings()
    i1, r1 = handshake(1, 0x11, 0x22)
    ra.install(i1, 0.0), rb.install(r1, 0.0)
    for frame in (data, bytes.fromhex("0123") + data, bytes.fromhex("012300000022") + data):
        with pytest.raises(RemoteProtocolError):
            rb.open(frame, 0.0)
