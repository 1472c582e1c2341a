"""Routed frame and payload codecs: golden bytes written from the layouts, roundtrips, fuzz."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.routed import (MAX_ROUTED_PAYLOAD, PAYLOADS, MessageAck,
                                                 MAX_TRACE_RECORDS, MessageChunk, Ping, Pong,
                                                 Proto, Routed, TraceRecord, TraceReply,
                                                 TraceRequest, Unreachable, UnreachableReason,
                                                 decode_payload, pack_address)

SRC = bytes.fromhex("06" + "11" * 15)
DST = bytes.fromhex("07" + "22" * 15)

GOLDEN_FRAMES = [
    (Routed(SRC, DST, 64, 0, Proto.PING, b"\xaa\xbb"),
     "0130" + SRC.hex() + DST.hex() + "40" + "00" + "03" + "aabb"),
    (Routed(SRC, DST, 1, 255, 200, b""),
     "0130" + SRC.hex() + DST.hex() + "01" + "ff" + "c8"),
]

GOLDEN_PAYLOADS = [
    (MessageChunk(0x0102030405060708, "ab", 1, 3, 2500, 30000, 9, b"xyz"),
     "0102030405060708" + "02" + "6162" + "0001" + "0003" + "000009c4" + "00007530"
     + "0000000000000009" + "78797a"),
    (MessageChunk(1, "", 0, 1, 0, 0),
     "0000000000000001" + "00" + "0000" + "0001" + "00000000" + "00000000" + "00" * 8),
    (MessageAck.of(7, 10, {0, 2, 9}),
     "0000000000000007" + "00" + "000a" + "05" + "02"),
    (MessageAck(7, 0, b"", flags=1), "0000000000000007" + "01" + "0000"),
    (Ping(0xDEADBEEF, 0x1122334455667788), "deadbeef" + "1122334455667788"),
    (Pong(1, 2), "00000001" + "0000000000000002"),
    (Unreachable(DST, UnreachableReason.NO_ROUTE), DST.hex() + "01"),
    (TraceRequest(0x01020304), "01020304" + "00" + "00"),
    (TraceRequest(9, (TraceRecord.of(SRC, b"\x33" * 32, 1.5, 0.02, 3.25, 7),), 1),
     "00000009" + "01" + "01" + SRC.hex() + "33" * 32
     + "000005dc" + "00004e20" + "00000cb2" + "00000007"),
    (TraceReply(9, (TraceRecord(DST, b"\x44" * 32),)),
     "00000009" + "00" + "01" + DST.hex() + "44" * 32 + "ffffffff" * 4),
]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN_FRAMES)
def test_routed_golden(msg, hexbytes):
    assert wire.encode_frame(msg) == bytes.fromhex(hexbytes)
    assert wire.decode_frame(bytes.fromhex(hexbytes)) == msg


@pytest.mark.parametrize("msg,hexbytes", GOLDEN_PAYLOADS)
def test_payload_golden(msg, hexbytes):
    assert msg.encode() == bytes.fromhex(hexbytes)
    assert type(msg).decode(bytes.fromhex(hexbytes)) == msg
    assert decode_payload(msg.PROTO, bytes.fromhex(hexbytes)) == msg


def test_registered_and_enums():
    assert wire.registered_types()[0x30] is Routed
    r = wire.decode_frame(wire.encode_frame(Routed(SRC, DST, 3, 0, 5)))
    assert r.proto is Proto.UNREACHABLE
    assert wire.decode_frame(wire.encode_frame(Routed(SRC, DST, 3, 0, 99))).proto == 99
    assert Unreachable.decode(DST + b"\x02").reason is UnreachableReason.HOP_LIMIT_EXCEEDED
    assert MessageAck.of(1, 10, {0, 2, 9}).received() == {0, 2, 9}
    assert MessageAck(1, 0, b"", 1).refused


def test_routed_payload_cap_fits_the_frame_cap():
    big = Routed(SRC, DST, 1, 0, 7, b"\0" * MAX_ROUTED_PAYLOAD)
    assert len(wire.encode_frame(big)) == wire.MAX_FRAME_SIZE
    with pytest.raises(LocalProtocolError):
        Routed(SRC, DST, 1, 0, 7, b"\0" * (MAX_ROUTED_PAYLOAD + 1))


def test_pack_address_forms():
    import ipaddress
    assert pack_address(SRC) == SRC
    assert pack_address(ipaddress.IPv6Address(SRC)) == SRC
    assert pack_address(str(ipaddress.IPv6Address(SRC))) == SRC
    for bad in (b"x", "nope"):
        with pytest.raises(LocalProtocolError):
            pack_address(bad)


@pytest.mark.parametrize("bad", [
    "0130" + SRC.hex(),                               # cut in dst
    "0130" + SRC.hex() + DST.hex() + "40" + "00",     # no proto
])
def test_malformed_routed(bad):
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex(bad))


@pytest.mark.parametrize("cls,bad", [
    (MessageChunk, "00" * 7),
    (MessageChunk, "00" * 8 + "05" + "61"),                                   # topic cut
    (MessageChunk, "00" * 8 + "00" + "0001" + "0001" + "00" * 16),            # index == count
    (MessageChunk, "00" * 8 + "00" + "0000" + "0000" + "00" * 16),            # count 0
    (MessageChunk, "00" * 8 + "00" + "0000" + "0001" + "00000001" + "00" * 12 + "6162"),
    (MessageChunk, "00" * 8 + "01" + "ff" + "0000" + "0001" + "00" * 16),     # bad UTF-8
    (MessageAck, "00" * 8 + "00" + "0009" + "ff"),                            # bitmap short
    (MessageAck, "00" * 8 + "00" + "0004" + "ff"),                            # bits past count
    (MessageAck, "00" * 8 + "00" + "0001" + "01" + "00"),                     # trailing
    (Ping, "00" * 11),
    (Pong, "00" * 13),
    (Unreachable, DST.hex()),
    (TraceRequest, "00000001" + "00"),                                         # no count
    (TraceRequest, "00000001" + "00" + "01" + "00" * 63),                      # record cut
    (TraceReply, "00000001" + "00" + "00" + "00"),                             # trailing
    (TraceReply, "00000001" + "00" + "41" + "00" * 64 * 65),                   # 65 records
    (TraceRequest, "00000001" + "00" + "01" + "00" * 52 + "000f4241" + "00" * 8),  # loss > 1
])
def test_malformed_payloads(cls, bad):
    with pytest.raises(DecodeError):
        cls.decode(bytes.fromhex(bad))


def test_unknown_proto_has_no_codec():
    with pytest.raises(DecodeError):
        decode_payload(7, b"")


@pytest.mark.parametrize("make", [
    lambda: Routed(SRC[:15], DST, 1, 0, 1),
    lambda: Routed(SRC, DST, 256, 0, 1),
    lambda: Routed(SRC, DST, 1, -1, 1),
    lambda: MessageChunk(2**64, "t", 0, 1, 0, 0),
    lambda: MessageChunk(1, "t" * 256, 0, 1, 0, 0),
    lambda: MessageChunk(1, "t", 1, 1, 0, 0),
    lambda: MessageChunk(1, "t", 0, 1, 1, 0, 0, b"ab"),
    lambda: MessageAck(1, 9, b"\0"),
    lambda: Ping(2**32, 0),
    lambda: Unreachable(b"x", 1),
    lambda: TraceRecord(SRC, b"x" * 31),
    lambda: TraceRecord(SRC[:15], b"x" * 32),
    lambda: TraceRecord(SRC, b"x" * 32, rtt_us=2**32),
    lambda: TraceRequest(2**32),
    lambda: TraceRequest(1, (TraceRecord(SRC, b"x" * 32),) * (MAX_TRACE_RECORDS + 1)),
    lambda: TraceReply(1, ("not a record",)),
])
def test_constructors_refuse_bad_fields(make):
    with pytest.raises(LocalProtocolError):
        make()


addrs = st.binary(min_size=16, max_size=16)
u8 = st.integers(0, 255)


@st.composite
def chunks(draw):
    count = draw(st.integers(1, 0xFFFF))
    data = draw(st.binary(max_size=64))
    return MessageChunk(draw(st.integers(0, 2**64 - 1)), draw(st.text(max_size=40)),
                        draw(st.integers(0, count - 1)), count,
                        draw(st.integers(len(data), 2**32 - 1)),
                        draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**64 - 1)), data)


@st.composite
def acks(draw):
    count = draw(st.integers(0, 300))
    got = draw(st.sets(st.integers(0, max(count - 1, 0)), max_size=count)) if count else set()
    return MessageAck.of(draw(st.integers(0, 2**64 - 1)), count, got, draw(u8))


u32 = st.integers(0, 2**32 - 1)
records = st.builds(TraceRecord, addrs, st.binary(min_size=32, max_size=32), u32,
                    st.one_of(st.integers(0, 1_000_000), st.just(2**32 - 1)), u32, u32)
traces = st.builds(TraceRequest, u32, st.lists(records, max_size=5).map(tuple), u8)

payloads = st.one_of(
    chunks(), acks(), traces,
    st.builds(TraceReply, u32, st.lists(records, max_size=3).map(tuple), u8),
    st.builds(Ping, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.builds(Pong, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.builds(Unreachable, addrs, u8),
)


@given(st.builds(Routed, addrs, addrs, u8, u8, u8, st.binary(max_size=300)))
def test_routed_roundtrip(msg):
    assert wire.decode_frame(wire.encode_frame(msg)) == msg


@given(payloads)
def test_payload_roundtrip(msg):
    assert type(msg).decode(msg.encode()) == msg


@given(st.binary(max_size=400))
def test_fuzz_routed_frames(body):
    try:
        msg = wire.decode_frame(bytes((wire.VERSION, 0x30)) + body)
    except DecodeError:
        return
    assert wire.decode_frame(wire.encode_frame(msg)) == msg


@given(st.binary(max_size=300))
def test_fuzz_payloads_raise_only_decode_error(data):
    for proto, cls in PAYLOADS.items():
        try:
            msg = decode_payload(proto, data)
        except DecodeError:
            continue
        assert cls.decode(msg.encode()) == msg


def test_trace_record_figures_roundtrip_in_fixed_point():
    r = TraceRecord.of(SRC, b"\x01" * 32, rtt_ms=0.7234, loss=0.0125, cost=1.72, metric=12)
    assert (r.rtt_ms, r.loss, r.cost, r.route_metric) == (0.723, 0.0125, 1.72, 12)
    unknown = TraceRecord.of(SRC, b"\x01" * 32)
    assert (unknown.rtt_ms, unknown.loss, unknown.cost, unknown.route_metric) == (None,) * 4
    big = TraceRecord.of(SRC, b"\x01" * 32, rtt_ms=1e12, loss=2.0, cost=float("nan"))
    assert big.rtt_us == 2**32 - 2 and big.loss == 1.0 and big.cost is None
    full = TraceRequest(1, (r,) * MAX_TRACE_RECORDS, 1)
    assert len(full.encode()) == 6 + 64 * MAX_TRACE_RECORDS <= MAX_ROUTED_PAYLOAD
    assert TraceRequest.decode(full.encode()).truncated
