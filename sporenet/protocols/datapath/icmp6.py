"""ICMPv6 errors the node sends back into its own TUN (RFC 4443), and the IPv6 header
fields the data path reads.

When a packet that left our TUN cannot go on, the sending program must hear why, as
from any router: Destination Unreachable code 0 ("no route") when the overlay has no
route to the destination, Packet Too Big with the MTU when the packet exceeds it.
The error goes from the overlay's own address of this node (or, for no route, from
the node's address: we are the router that gave up) to the packet's source, and
quotes as much of the offending packet as fits in the IPv6 minimum MTU of 1,280
bytes (RFC 4443 §2.4 (c)).

Never answer an ICMPv6 error with an error, nor a packet whose source is not a
unicast address (RFC 4443 §2.4 (e)): ``should_answer`` says whether to.
"""

from __future__ import annotations

import ipaddress
import struct

from ..errors import DecodeError, LocalProtocolError

IPV6_HEADER_SIZE = 40
IPV6_MIN_MTU = 1280
NEXT_HEADER_ICMPV6 = 58
HOP_LIMIT = 64

TYPE_DEST_UNREACHABLE = 1
TYPE_PACKET_TOO_BIG = 2
CODE_NO_ROUTE = 0
CODE_ADMIN_PROHIBITED = 1  # the contract's rules forbid this destination
_ERROR_TYPES_MAX = 127     # types 0-127 are errors (RFC 4443 §2.1)

_HEADER = struct.Struct("!IHBB16s16s")  # ver/class/flow, payload length, next, hops, src, dst


def ip_version(packet: bytes | memoryview) -> int:
    if not packet:
        raise DecodeError("empty IP packet")
    return packet[0] >> 4


def ipv6_addresses(packet: bytes | memoryview) -> tuple[bytes, bytes]:
    """``(src, dst)``, 16 bytes each, of an IPv6 packet."""
    if len(packet) < IPV6_HEADER_SIZE:
        raise DecodeError(f"IPv6 packet of {len(packet)} bytes is shorter than its header")
    if packet[0] >> 4 != 6:
        raise DecodeError(f"not IPv6: version {packet[0] >> 4}")
    return bytes(packet[8:24]), bytes(packet[24:40])


def _is_icmp_error(packet: bytes | memoryview) -> bool:
    # Only a first header of ICMPv6 is looked at: an error behind extension headers
    # is answered like any packet, which RFC 4443 allows ("should not").
    return (len(packet) > IPV6_HEADER_SIZE and packet[6] == NEXT_HEADER_ICMPV6
            and packet[IPV6_HEADER_SIZE] <= _ERROR_TYPES_MAX)


def should_answer(packet: bytes | memoryview) -> bool:
    """May an ICMPv6 error answer this packet? Not an ICMPv6 error itself, not sent
    to a multicast group, and from a unicast address (not unspecified, multicast)."""
    try:
        src, dst = ipv6_addresses(packet)
    except DecodeError:
        return False
    addr = ipaddress.IPv6Address(src)
    if addr.is_multicast or addr.is_unspecified or dst[0] == 0xFF:  # §2.4 (e.3): not to multicast
        return False
    return not _is_icmp_error(packet)


def checksum(src: bytes, dst: bytes, body: bytes) -> int:
    """The ICMPv6 checksum: ones' complement sum over the pseudo-header and ``body``
    (with its checksum field zero)."""
    pseudo = src + dst + struct.pack("!I3xB", len(body), NEXT_HEADER_ICMPV6)
    data = pseudo + body
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _error(icmp_type: int, code: int, word: int, router: bytes, offending: bytes | memoryview) -> bytes:
    if len(router) != 16:
        raise LocalProtocolError("router address must be 16 bytes")
    src, _ = ipv6_addresses(offending)
    quoted = bytes(offending[:IPV6_MIN_MTU - IPV6_HEADER_SIZE - 8])
    body = struct.pack("!BBHI", icmp_type, code, 0, word) + quoted
    body = body[:2] + struct.pack("!H", checksum(router, src, body)) + body[4:]
    header = _HEADER.pack(6 << 28, len(body), NEXT_HEADER_ICMPV6, HOP_LIMIT, router, src)
    return header + body


def destination_unreachable(router: bytes, offending: bytes | memoryview,
                            code: int = CODE_NO_ROUTE) -> bytes:
    """The whole IPv6 packet of an ICMPv6 Destination Unreachable for ``offending``."""
    return _error(TYPE_DEST_UNREACHABLE, code, 0, router, offending)


def packet_too_big(router: bytes, offending: bytes | memoryview, mtu: int) -> bytes:
    """The whole IPv6 packet of an ICMPv6 Packet Too Big carrying ``mtu``."""
    if not IPV6_MIN_MTU <= mtu <= 0xFFFF_FFFF:
        raise LocalProtocolError(f"MTU {mtu} below the IPv6 minimum {IPV6_MIN_MTU}")
    return _error(TYPE_PACKET_TOO_BIG, 0, mtu, router, offending)
