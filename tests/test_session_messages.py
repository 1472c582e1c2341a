"""Session handshake codecs: golden bytes from the layouts, roundtrips, fuzz, mac spans."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.sessions.messages import (CookieReply, HandshakeInit, HandshakeResp,
                                                 SESSION_TYPES)

E = bytes(range(32))
ES = bytes(range(0x40, 0x70))  # 48
ET = bytes(range(0x80, 0x9C))  # 28
M1 = b"\x11" * 16
M2 = b"\x22" * 16
TAG = bytes(range(0xA0, 0xB0))
NONCE = bytes(range(0xC0, 0xD8))  # 24
EC = bytes(range(0xE0, 0x100))  # 32

GOLDEN = [
    (HandshakeInit(0x01020304, E, ES, ET, M1, M2),
     "0120" + "01020304" + E.hex() + ES.hex() + ET.hex() + M1.hex() + M2.hex()),
    (HandshakeInit(0, E, ES, ET), "0120" + "00000000" + E.hex() + ES.hex() + ET.hex()
     + "00" * 32),
    (HandshakeResp(0xA0B0C0D0, 7, E, TAG, M1, M2),
     "0121" + "a0b0c0d0" + "00000007" + E.hex() + TAG.hex() + M1.hex() + M2.hex()),
    (CookieReply(0xFFFFFFFF, NONCE, EC), "0122" + "ffffffff" + NONCE.hex() + EC.hex()),
]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_encoding(msg, hexbytes):
    assert wire.encode_frame(msg) == bytes.fromhex(hexbytes)


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_decoding(msg, hexbytes):
    assert wire.decode_frame(bytes.fromhex(hexbytes)) == msg


def test_sizes_are_wireguard_sizes_minus_reserved_bytes():
    # WG: 148 / 92 / 64 bytes with a 4-byte type|reserved header; ours is 2 bytes.
    assert [len(wire.encode_frame(m)) for m, _ in GOLDEN] == [146, 146, 90, 62]
    assert [c.SIZE for c in SESSION_TYPES] == [146, 90, 62]


def test_types_are_registered_in_session_range():
    reg = wire.registered_types()
    for t, cls in [(0x20, HandshakeInit), (0x21, HandshakeResp), (0x22, CookieReply)]:
        assert reg[t] is cls


def test_mac_spans_cover_the_frame_up_to_each_mac():
    msg, hexbytes = GOLDEN[0]
    frame = bytes.fromhex(hexbytes)
    assert msg.mac1_span() == frame[:-32] and msg.mac2_span() == frame[:-16]
    assert msg.mac2_span() == msg.mac1_span() + M1
    assert msg.mac1_span()[:2] == b"\x01\x20"  # header bound in, as WG's type byte


@pytest.mark.parametrize("bad", [
    "0120" + "01020304" + E.hex() + ES.hex() + ET.hex() + M1.hex() + M2.hex()[:-2],
    "0120" + "01020304" + E.hex() + ES.hex() + ET.hex() + M1.hex() + M2.hex() + "00",
    "0120" + "010203",
    "0120",
    "0121" + "a0b0c0d0" + "00000007" + E.hex() + TAG.hex() + M1.hex(),
    "0121" + "a0b0c0d0" + "00000007" + E.hex() + TAG.hex() + M1.hex() + M2.hex() + "ff",
    "0122" + "ffffffff" + NONCE.hex() + EC.hex()[:-2],
    "0122" + "ffffffff" + NONCE.hex() + EC.hex() + "00",
])
def test_malformed_frames_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex(bad))


@pytest.mark.parametrize("make", [
    lambda: HandshakeInit(-1, E, ES, ET),
    lambda: HandshakeInit(1 << 32, E, ES, ET),
    lambda: HandshakeInit(0, E[:31], ES, ET),
    lambda: HandshakeInit(0, E, ES[:47], ET),
    lambda: HandshakeInit(0, E, ES, ET + b"\0"),
    lambda: HandshakeInit(0, E, ES, ET, M1[:15]),
    lambda: HandshakeResp(0, 1 << 32, E, TAG),
    lambda: HandshakeResp(0, 0, E, TAG[:15]),
    lambda: HandshakeResp(0, 0, E, TAG, M1, M2 + b"\0"),
    lambda: CookieReply(0, NONCE[:23], EC),
    lambda: CookieReply(0, NONCE, EC[:31]),
    lambda: CookieReply(-5, NONCE, EC),
])
def test_constructors_refuse_bad_fields(make):
    with pytest.raises(LocalProtocolError):
        make()


@given(st.binary(max_size=200))
def test_fuzz_session_bodies(body):
    for t in (0x20, 0x21, 0x22):
        try:
            msg = wire.decode_frame(bytes((wire.VERSION, t)) + body)
        except DecodeError:
            continue
        assert wire.decode_frame(wire.encode_frame(msg)) == msg


def _b(n):
    return st.binary(min_size=n, max_size=n)


messages = st.one_of(
    st.builds(HandshakeInit, st.integers(0, 0xFFFFFFFF), _b(32), _b(48), _b(28), _b(16), _b(16)),
    st.builds(HandshakeResp, st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), _b(32),
              _b(16), _b(16), _b(16)),
    st.builds(CookieReply, st.integers(0, 0xFFFFFFFF), _b(24), _b(32)),
)


@given(messages)
def test_roundtrip(msg):
    assert wire.decode_frame(wire.encode_frame(msg)) == msg
