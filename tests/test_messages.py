"""Link-control codecs: golden bytes written from the spec, roundtrips, fuzz."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.link.messages import (Close, CloseCode, Hello, HelloProof, Probe, ProbeAck,
                                         hello_transcript, truncate_utf8)

PUB = bytes(range(32))
NONCE = bytes(range(0xA0, 0xB0))

# Golden frames, written by hand from the layouts in messages.py.
GOLDEN = [
    (Hello(PUB, NONCE),
     "0101" + PUB.hex() + NONCE.hex()),
    (Hello(PUB, NONCE, endpoint="tcp://h:1", name="ab"),
     "0101" + PUB.hex() + NONCE.hex()
     + "01" + "0009" + "7463703a2f2f683a31"  # TLV 1, len 9, "tcp://h:1"
     + "02" + "0002" + "6162"),               # TLV 2, len 2, "ab"
    (HelloProof(b"\x55" * 64), "0102" + "55" * 64),
    (Probe(0x01020304), "0103" + "01020304"),
    (ProbeAck(0xFFFFFFFE), "0104" + "fffffffe"),
    (Close(CloseCode.DUPLICATE, "dup"), "0105" + "03" + "03" + "647570"),
    (Close(CloseCode.NORMAL), "0105" + "00" + "00"),
]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_encoding(msg, hexbytes):
    assert wire.encode_frame(msg) == bytes.fromhex(hexbytes)


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_decoding(msg, hexbytes):
    assert wire.decode_frame(bytes.fromhex(hexbytes)) == msg


def test_types_are_registered_in_link_control_range():
    reg = wire.registered_types()
    for t, cls in [(1, Hello), (2, HelloProof), (3, Probe), (4, ProbeAck), (5, Close)]:
        assert reg[t] is cls


def test_close_code_decodes_as_enum_and_unknown_code_as_int():
    msg = wire.decode_frame(bytes.fromhex("0105" + "02" + "00"))
    assert msg.code is CloseCode.AUTH_FAILED
    newer = wire.decode_frame(bytes.fromhex("0105" + "c8" + "00"))
    assert newer.code == 200 and not isinstance(newer.code, CloseCode)


def test_hello_skips_unknown_tlvs():
    frame = ("0101" + PUB.hex() + NONCE.hex()
             + "09" + "0003" + "ffffff"            # unknown TLV 9: skipped
             + "02" + "0001" + "7a"
             + "fe" + "0000")                      # unknown, empty
    assert wire.decode_frame(bytes.fromhex(frame)) == Hello(PUB, NONCE, name="z")


@pytest.mark.parametrize("bad", [
    "0101" + PUB.hex() + NONCE.hex()[:-2],                          # short nonce
    "0101" + PUB.hex() + NONCE.hex() + "01" + "0005" + "6162",      # TLV longer than data
    "0101" + PUB.hex() + NONCE.hex() + "01",                        # TLV header cut
    "0101" + PUB.hex() + NONCE.hex() + "02" + "0002" + "ff fe".replace(" ", ""),  # bad UTF-8
    "0101" + PUB.hex() + NONCE.hex() + "02" + "0041" + "61" * 65,   # name of 65 bytes
    "0101" + PUB.hex() + NONCE.hex() + "02" + "0001" + "61" + "02" + "0001" + "62",  # repeated
    "0102" + "55" * 63,
    "0102" + "55" * 65,
    "0103" + "010203",
    "0103" + "0102030405",
    "0104",
    "0105",
    "0105" + "00" + "05" + "6162",
    "0105" + "00" + "01" + "61" + "00",
])
def test_malformed_frames_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex(bad))


def test_oversize_frames_are_refused_both_ways():
    big = Hello(PUB, NONCE, endpoint="x" * 1000)
    with pytest.raises(LocalProtocolError):
        wire.encode_frame(big)
    raw = bytes.fromhex("0101") + PUB + NONCE + b"\x01" + (990).to_bytes(2, "big") + b"x" * 990
    assert len(raw) > Hello.MAX_SIZE
    with pytest.raises(DecodeError):
        wire.decode_frame(raw)
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex("0103") + b"\0" * 4 + b"\0" * 100)


@pytest.mark.parametrize("make", [
    lambda: Hello(PUB[:31], NONCE),
    lambda: Hello(PUB, NONCE + b"x"),
    lambda: Hello(PUB, NONCE, name="n" * 65),
    lambda: HelloProof(b"x" * 63),
    lambda: Probe(-1),
    lambda: ProbeAck(2**32),
    lambda: Close(256),
    lambda: Close(0, "r" * 256),
])
def test_constructors_refuse_bad_fields(make):
    with pytest.raises(LocalProtocolError):
        make()


def test_transcript_layout_binds_both_nonces_and_keys():
    a_pub, a_nonce, b_pub, b_nonce = b"A" * 32, b"a" * 16, b"B" * 32, b"b" * 16
    t = hello_transcript(a_pub, a_nonce, b_pub, b_nonce)
    assert t == b"sporenet-link-v1\0" + b_nonce + a_nonce + b_pub + a_pub
    assert t != hello_transcript(b_pub, b_nonce, a_pub, a_nonce)


def test_truncate_utf8_never_splits_a_character():
    assert truncate_utf8("abc", 10) == "abc"
    assert truncate_utf8("é" * 10, 5) == "éé"
    assert len(truncate_utf8("x" * 300, 255).encode()) == 255


@given(st.binary(max_size=70000))
def test_fuzz_decode_frame_raises_only_decode_error(data):
    try:
        wire.decode_frame(data)
    except DecodeError:
        pass


@given(st.binary(max_size=200))
def test_fuzz_link_control_bodies(body):
    # Random bytes rarely hit a known type; aim every body at each link-control type.
    for t in range(1, 6):
        try:
            msg = wire.decode_frame(bytes((wire.VERSION, t)) + body)
        except DecodeError:
            continue
        assert wire.decode_frame(wire.encode_frame(msg)) == msg


texts = st.text(max_size=40)
names = st.text(max_size=16)  # at most 64 UTF-8 bytes
messages = st.one_of(
    st.builds(Hello, st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16),
              texts, names),
    st.builds(HelloProof, st.binary(min_size=64, max_size=64)),
    st.builds(Probe, st.integers(0, 2**32 - 1)),
    st.builds(ProbeAck, st.integers(0, 2**32 - 1)),
    st.builds(Close, st.sampled_from(list(CloseCode)), st.text(max_size=60)),
)


@given(messages)
def test_roundtrip_generated(msg):
    assert wire.decode_frame(wire.encode_frame(msg)) == msg
