"""ICMPv6 errors the data path answers with (protocols/datapath/icmp6.py)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, strategies as st

from sporenet.protocols.datapath import icmp6
from sporenet.protocols.errors import DecodeError, LocalProtocolError

ME = ipaddress.IPv6Address("600:1::1").packed
SRC = ipaddress.IPv6Address("601:2::7").packed
DST = ipaddress.IPv6Address("602:3::9").packed


def ipv6(src=SRC, dst=DST, next_header=17, payload=b"x" * 100) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, src, dst) + payload


def sums_to_ones(src: bytes, dst: bytes, body: bytes) -> bool:
    """A valid checksum makes the ones' complement sum over everything 0xFFFF."""
    data = src + dst + struct.pack("!I3xB", len(body), 58) + body
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_no_route_goes_back_to_the_sender_from_us_quoting_the_packet():
    offending = ipv6()
    err = icmp6.destination_unreachable(ME, offending)
    src, dst = icmp6.ipv6_addresses(err)
    assert (src, dst) == (ME, SRC)
    assert err[6] == 58 and struct.unpack_from("!H", err, 4)[0] == len(err) - 40
    body = err[40:]
    assert body[0] == icmp6.TYPE_DEST_UNREACHABLE and body[1] == icmp6.CODE_NO_ROUTE
    assert body[8:] == offending
    assert sums_to_ones(ME, SRC, body)


def test_packet_too_big_carries_the_mtu_and_fits_the_minimum_mtu():
    offending = ipv6(payload=b"y" * 60_000)
    err = icmp6.packet_too_big(ME, offending, 1420)
    assert len(err) == icmp6.IPV6_MIN_MTU
    body = err[40:]
    assert body[0] == icmp6.TYPE_PACKET_TOO_BIG
    assert struct.unpack_from("!I", body, 4)[0] == 1420
    assert sums_to_ones(ME, SRC, body)
    with pytest.raises(LocalProtocolError):
        icmp6.packet_too_big(ME, offending, 1000)


def test_errors_are_never_answered_with_errors():
    err = icmp6.destination_unreachable(ME, ipv6())
    assert not icmp6.should_answer(err)
    echo = ipv6(next_header=58, payload=bytes([128, 0, 0, 0]) + b"ping")
    assert icmp6.should_answer(echo)                       # an echo request is not an error
    assert not icmp6.should_answer(ipv6(src=ipaddress.IPv6Address("ff02::1").packed))
    assert not icmp6.should_answer(ipv6(src=bytes(16)))
    assert not icmp6.should_answer(ipv6(dst=ipaddress.IPv6Address("ff02::2").packed))
    assert not icmp6.should_answer(b"\x60short")


def test_short_or_non_ipv6_packets_are_decode_errors():
    with pytest.raises(DecodeError):
        icmp6.ipv6_addresses(b"\x60" + bytes(10))
    with pytest.raises(DecodeError):
        icmp6.ipv6_addresses(b"\x45" + bytes(60))
    with pytest.raises(DecodeError):
        icmp6.ip_version(b"")


@given(st.binary(min_size=0, max_size=3000))
def test_checksum_verifies_for_any_payload(payload):
    body = icmp6.destination_unreachable(ME, ipv6(payload=payload))[40:]
    assert sums_to_ones(ME, SRC, body)
