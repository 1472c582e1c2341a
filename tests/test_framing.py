"""Length-prefix stream framing (sporenet/protocols/link/framing.py): golden bytes, any chunking,
fault on bad prefixes before buffering, dead after an error."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.link.framing import (PREFIX_SIZE, FrameDecoder, encode_length_prefixed,
                                        encode_prefix)
from sporenet.protocols.wire import MAX_FRAME_SIZE


def test_golden_bytes():
    assert encode_length_prefixed(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_prefix(MAX_FRAME_SIZE) == (66560).to_bytes(4, "big")


def test_encode_refuses_empty_and_oversize():
    with pytest.raises(LocalProtocolError):
        encode_length_prefixed(b"")
    with pytest.raises(LocalProtocolError):
        encode_length_prefixed(b"x" * (MAX_FRAME_SIZE + 1))
    assert len(encode_length_prefixed(b"x" * MAX_FRAME_SIZE)) == MAX_FRAME_SIZE + PREFIX_SIZE


def test_partial_prefix_and_partial_body_wait():
    d = FrameDecoder()
    assert d.feed(b"\x00\x00") == []
    assert d.feed(b"\x00\x02a") == []
    assert d.buffered == 5
    assert d.feed(b"b\x00") == [b"ab"]
    assert d.buffered == 1


@pytest.mark.parametrize("prefix", [0, MAX_FRAME_SIZE + 1, 0xFFFFFFFF])
def test_bad_prefix_raises_at_once_and_kills_the_decoder(prefix):
    d = FrameDecoder()
    with pytest.raises(DecodeError, match="length prefix"):
        d.feed(prefix.to_bytes(4, "big"))  # no body needed: refused on the prefix alone
    assert d.dead and d.buffered == 0
    with pytest.raises(DecodeError, match="dead"):
        d.feed(encode_length_prefixed(b"ok"))


def test_bad_prefix_after_good_frames_in_one_chunk_raises():
    d = FrameDecoder()
    with pytest.raises(DecodeError):
        d.feed(encode_length_prefixed(b"ok") + b"\x00\x00\x00\x00")


def test_holds_only_bytes_that_arrived():
    d = FrameDecoder()
    d.feed(MAX_FRAME_SIZE.to_bytes(4, "big") + b"x")
    assert d.buffered == 5  # no buffer sized by the declared length


def test_custom_cap():
    d = FrameDecoder(max_frame=10)
    assert d.feed(encode_length_prefixed(b"x" * 10, max_frame=10)) == [b"x" * 10]
    with pytest.raises(DecodeError):
        d.feed((11).to_bytes(4, "big"))


frames_st = st.lists(st.binary(min_size=1, max_size=300), max_size=30)


@settings(deadline=None)  # the machine is shared: no per-example time limit
@given(frames=frames_st, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_chunking_decodes_to_the_same_frames(frames, cuts):
    stream = b"".join(encode_length_prefixed(f) for f in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    d = FrameDecoder()
    out = []
    for lo, hi in zip(points, points[1:]):
        out += d.feed(stream[lo:hi])
    assert out == frames
    assert d.buffered == 0


@settings(deadline=None)
@given(frames=frames_st, chunk=st.integers(min_value=1, max_value=17))
def test_fixed_size_chunks_with_memoryview_input(frames, chunk):
    stream = bytearray(b"".join(encode_length_prefixed(f) for f in frames))
    d = FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        out += d.feed(memoryview(stream)[i : i + chunk])
    assert out == frames


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), split=st.integers(min_value=0, max_value=200))
def test_fuzz_only_decode_error_escapes(data, split):
    d = FrameDecoder(max_frame=64)
    try:
        frames = d.feed(data[:split]) + d.feed(data[split:])
    except DecodeError:
        return
    assert all(1 <= len(f) <= 64 for f in frames)
    assert sum(len(f) + PREFIX_SIZE for f in frames) + d.buffered == len(data)


@settings(deadline=None)
@given(length=st.integers(min_value=65, max_value=0xFFFFFFFF))
def test_oversize_prefix_raises_for_every_length(length):
    with pytest.raises(DecodeError):
        FrameDecoder(max_frame=64).feed(length.to_bytes(4, "big"))
