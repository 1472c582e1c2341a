"""The frame framework itself: header, version, registry, size caps, Reader bounds."""

import struct
from dataclasses import dataclass
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError, UnknownFrameType
from sporenet.protocols.link.messages import Probe


@dataclass(frozen=True, slots=True)
class _Blob(wire.Message):
    """A test-only type in a range nobody uses (0xf0+), registered once per session."""

    TYPE: ClassVar[int] = 0xF7
    MAX_SIZE: ClassVar[int] = 10
    data: bytes

    def encode_body(self) -> bytes:
        return wire.Writer().bytes8(self.data).getvalue()

    @classmethod
    def decode_body(cls, r):
        data = r.bytes8()
        r.end()
        return cls(data)


wire.register(_Blob)


@dataclass(frozen=True, slots=True)
class _Faulty(wire.Message):
    """A test-only codec with the bug the net in ``decode_frame`` is for: its decoder
    (or the dataclass it builds) raises something other than ``DecodeError`` on bad
    input. The body's first byte picks what it raises."""

    TYPE: ClassVar[int] = 0xF6
    MAX_SIZE: ClassVar[int] = 10
    RAISES: ClassVar[tuple] = (struct.error("unpack requires a buffer of 4 bytes"),
                               ValueError("bad value"), TypeError("bad type"),
                               IndexError("index out of range"),
                               LocalProtocolError("hop limit out of range"))

    def encode_body(self) -> bytes:
        return b""

    @classmethod
    def decode_body(cls, r):
        raise cls.RAISES[r.u8()]


wire.register(_Faulty)


def test_header_is_version_then_type():
    assert wire.encode_frame(_Blob(b"hi")) == bytes([wire.VERSION, 0xF7, 2]) + b"hi"
    assert wire.decode_frame(bytes([1, 0xF7, 1, 0x41])) == _Blob(b"A")


@pytest.mark.parametrize("data", [b"", b"\x01"])
def test_frames_shorter_than_header_are_refused(data):
    with pytest.raises(DecodeError):
        wire.decode_frame(data)


def test_other_versions_are_refused():
    for version in (0, 2, 255):
        with pytest.raises(DecodeError, match="version"):
            wire.decode_frame(bytes([version, 0x03, 0, 0, 0, 1]))


def test_unknown_type_raises_unknown_frame_type_a_decode_error():
    with pytest.raises(UnknownFrameType) as info:
        wire.decode_frame(bytes([wire.VERSION, 0xEE, 1, 2, 3]))
    assert info.value.frame_type == 0xEE
    assert isinstance(info.value, DecodeError)


def test_size_caps_per_type_and_global():
    with pytest.raises(LocalProtocolError):
        wire.encode_frame(_Blob(b"x" * 9))  # 2 + 1 + 9 > 10
    with pytest.raises(DecodeError, match="cap"):
        wire.decode_frame(bytes([1, 0xF7, 9]) + b"x" * 9)
    with pytest.raises(DecodeError, match="cap"):
        wire.decode_frame(bytes([1, 0xF7]) + b"\0" * wire.MAX_FRAME_SIZE)


def test_register_refuses_a_taken_type_and_out_of_range_types():
    @dataclass(frozen=True, slots=True)
    class Clash(wire.Message):
        TYPE: ClassVar[int] = Probe.TYPE

    with pytest.raises(LocalProtocolError):
        wire.register(Clash)

    @dataclass(frozen=True, slots=True)
    class TooBig(wire.Message):
        TYPE: ClassVar[int] = 0x100

    with pytest.raises(LocalProtocolError):
        wire.register(TooBig)
    assert wire.register(_Blob) is _Blob  # registering the same class twice is harmless


@pytest.mark.parametrize("which", range(len(_Faulty.RAISES)),
                         ids=[type(e).__name__ for e in _Faulty.RAISES])
def test_a_decoder_raising_anything_else_still_gives_a_decode_error(which):
    # Peers' bytes must never crash the reader of a frame: whatever a decoder slips
    # (a missed length check, a dataclass refusing a field) is the peer's fault.
    with pytest.raises(DecodeError, match=f"bad _Faulty: {_Faulty.RAISES[which]}"):
        wire.decode_frame(bytes([wire.VERSION, _Faulty.TYPE, which]))


def test_reader_fields_and_bounds():
    w = wire.Writer().u8(1).u16(2).u32(3).u64(4).f64(0.5).bytes8(b"ab").bytes16(b"c").text8("é")
    r = wire.Reader(w.getvalue() + b"tail")
    assert (r.u8(), r.u16(), r.u32(), r.u64(), r.f64()) == (1, 2, 3, 4, 0.5)
    assert (r.bytes8(), r.bytes16(), r.text8()) == (b"ab", b"c", "é")
    with pytest.raises(DecodeError):
        r.end()
    assert r.rest() == b"tail" and r.remaining == 0
    r.end()
    for read in (r.u8, r.u16, r.u32, r.u64, r.f64, r.bytes8):
        with pytest.raises(DecodeError):
            read()
    with pytest.raises(DecodeError):
        wire.Reader(b"abc").take(-1)


def test_reader_refuses_declared_lengths_beyond_the_buffer():
    with pytest.raises(DecodeError):
        wire.Reader(b"\x05abc").bytes8()
    with pytest.raises(DecodeError):
        wire.Reader(b"\xff\xffabc").bytes16()
    with pytest.raises(DecodeError):
        wire.Reader(b"\x02\xff\xfe").text8()


def test_reader_tlvs():
    w = wire.Writer().tlv(1, b"a").tlv(200, b"").tlv(2, b"bc")
    assert list(wire.Reader(w.getvalue()).tlvs()) == [(1, b"a"), (200, b""), (2, b"bc")]
    with pytest.raises(DecodeError):
        list(wire.Reader(b"\x01\x00\x05ab").tlvs())


def test_writer_refuses_fields_too_long_for_their_prefix():
    with pytest.raises(LocalProtocolError):
        wire.Writer().bytes8(b"x" * 256)
    with pytest.raises(LocalProtocolError):
        wire.Writer().bytes16(b"x" * 65536)


@given(st.binary(max_size=300))
def test_reader_only_raises_decode_error(data):
    r = wire.Reader(data)
    try:
        while True:
            r.bytes8()
            r.u16()
            list(r.tlvs())
    except DecodeError:
        pass
