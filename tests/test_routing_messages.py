"""Routing codecs: golden bytes written from the layouts, roundtrips, fuzz, seqno arithmetic."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.identity import Identity, verify_signature
from sporenet.protocols.routing.messages import (INFINITY, RouteRequest, RouteUpdate,
                                                 SeqnoRequest, route_transcript, seqno_ge,
                                                 seqno_newer)

PUB = bytes(range(32))
SIG = b"\x55" * 64
NID = bytes(range(0x40, 0x60))

GOLDEN = [
    (RouteUpdate(PUB, 0x0102, 0x0304, "", 0, SIG),
     "0110" + PUB.hex() + "0102" + "0304" + "0000" + "00" + "00" + SIG.hex()),
    (RouteUpdate(PUB, 0xFFFF, INFINITY, "eu", 1, SIG, interval=0x0a0b),
     "0110" + PUB.hex() + "ffff" + "ffff" + "0a0b" + "02" + "6575" + "01" + SIG.hex()),
    (SeqnoRequest(NID, 0x1234, 16), "0111" + NID.hex() + "1234" + "10"),
    (RouteRequest(), "0112"),
]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_encoding(msg, hexbytes):
    assert wire.encode_frame(msg) == bytes.fromhex(hexbytes)


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_decoding(msg, hexbytes):
    assert wire.decode_frame(bytes.fromhex(hexbytes)) == msg


def test_types_are_registered_in_routing_range():
    reg = wire.registered_types()
    for t, cls in [(0x10, RouteUpdate), (0x11, SeqnoRequest), (0x12, RouteRequest)]:
        assert reg[t] is cls


def test_transcript_layout_and_signature():
    assert route_transcript(PUB, 0x0102, "eu") == (b"sporenet-route-v1\0" + PUB + b"\x01\x02"
                                                   + b"\x02eu")
    ident = Identity(b"\x07" * 32)
    sig = ident.sign(route_transcript(ident.public_key, 5, "eu"))
    upd = RouteUpdate(ident.public_key, 5, 100, "eu", 0, sig)
    verify_signature(upd.origin_pub, upd.transcript(), upd.signature)
    # metric and flags are per hop: not in the transcript
    assert RouteUpdate(ident.public_key, 5, 7, "eu", 1, sig).transcript() == upd.transcript()
    assert upd.crossed is False and RouteUpdate(PUB, 1, INFINITY, "", 1, SIG).is_retraction


@pytest.mark.parametrize("bad", [
    "0110" + PUB.hex() + "0102" + "0304" + "0000" + "00" + "00" + SIG.hex()[:-2],  # short sig
    "0110" + PUB.hex() + "0102" + "0304" + "0000" + "00" + "00" + SIG.hex() + "00",  # trailing
    "0110" + PUB.hex() + "0102" + "0304" + "0000" + "05" + "6162",        # region cut
    "0110" + PUB.hex() + "0102" + "0304" + "0000" + "02" + "fffe" + "00" + SIG.hex(),  # UTF-8
    "0110" + PUB.hex() + "0102" + "0304" + "00",                          # interval cut
    "0110" + PUB.hex() + "0102" + "0304" + "0000" + "21" + "61" * 33 + "00" + SIG.hex(),  # 33 B
    "0110" + PUB.hex()[:-2],
    "0111" + NID.hex() + "1234",
    "0111" + NID.hex() + "1234" + "10" + "00",
    "0112" + "00",
])
def test_malformed_frames_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex(bad))


@pytest.mark.parametrize("make", [
    lambda: RouteUpdate(PUB[:31], 0, 0, "", 0, SIG),
    lambda: RouteUpdate(PUB, 0, 0, "", 0, SIG[:63]),
    lambda: RouteUpdate(PUB, 0x10000, 0, "", 0, SIG),
    lambda: RouteUpdate(PUB, 0, -1, "", 0, SIG),
    lambda: RouteUpdate(PUB, 0, 0, "", 256, SIG),
    lambda: RouteUpdate(PUB, 0, 0, "r" * 33, 0, SIG),
    lambda: RouteUpdate(PUB, 0, 0, "", 0, SIG, interval=0x10000),
    lambda: SeqnoRequest(NID[:31], 0, 0),
    lambda: SeqnoRequest(NID, 0x10000, 0),
    lambda: SeqnoRequest(NID, 0, 256),
])
def test_constructors_refuse_bad_fields(make):
    with pytest.raises(LocalProtocolError):
        make()


def test_seqno_comparison_across_wrap():
    assert seqno_newer(1, 0) and seqno_newer(0, 0xFFFF) and seqno_newer(5, 0xFFF0)
    assert not seqno_newer(0xFFFF, 0) and not seqno_newer(3, 3)
    assert seqno_newer(0x7FFF, 0) and not seqno_newer(0x8000, 0)  # half-way is not newer
    assert seqno_ge(3, 3) and seqno_ge(0, 0xFFFF) and not seqno_ge(0xFFFF, 0)


@given(st.integers(0, 0xFFFF), st.integers(1, 0x7FFF))
def test_seqno_newer_property(base, step):
    later = (base + step) & 0xFFFF
    assert seqno_newer(later, base)
    assert not seqno_newer(base, later)
    assert seqno_ge(later, base) and not seqno_ge(base, later)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_seqno_newer_is_antisymmetric(a, b):
    assert not (seqno_newer(a, b) and seqno_newer(b, a))


@given(st.binary(max_size=200))
def test_fuzz_routing_bodies(body):
    for t in (0x10, 0x11, 0x12):
        try:
            msg = wire.decode_frame(bytes((wire.VERSION, t)) + body)
        except DecodeError:
            continue
        assert wire.decode_frame(wire.encode_frame(msg)) == msg


messages = st.one_of(
    st.builds(RouteUpdate, st.binary(min_size=32, max_size=32), st.integers(0, 0xFFFF),
              st.integers(0, 0xFFFF), st.text(max_size=8), st.integers(0, 0xFF),
              st.binary(min_size=64, max_size=64), st.integers(0, 0xFFFF)),
    st.builds(SeqnoRequest, st.binary(min_size=32, max_size=32), st.integers(0, 0xFFFF),
              st.integers(0, 0xFF)),
    st.just(RouteRequest()),
)


@given(messages)
def test_roundtrip(msg):
    assert wire.decode_frame(wire.encode_frame(msg)) == msg


def test_a_region_over_32_utf8_bytes_is_refused_when_the_update_is_made():
    # 32 bytes is the most the frame (and the signed transcript) carries; counted in
    # UTF-8 bytes, not characters. Refused where it is made, naming the field, rather
    # than as an oversized frame after the route was signed.
    ok = RouteUpdate(PUB, 1, 10, "é" * 16, 0, SIG)  # 32 bytes
    assert wire.decode_frame(wire.encode_frame(ok)) == ok
    for region in ("x" * 33, "é" * 17):
        with pytest.raises(LocalProtocolError, match="region longer than 32 bytes"):
            RouteUpdate(PUB, 1, 10, region, 0, SIG)
