"""The ``virtio_net_hdr`` in front of every packet of a TUN opened with IFF_VNET_HDR.

With offloads on (``TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6)``) the kernel
hands over TCP superpackets of up to 64 KiB: one read, one seal, one frame, one
write at the far end, where the kernel segments them again (docs/datapath.md;
../shared/research/dataplane.md measured 3-4 Gbit/s this way against 0.4-0.6 per
packet). The header says how to segment and checksum the packet.

Layout (10 bytes, native little-endian on the hosts we run on, ``<BBHHHH``):
``flags`` (1 NEEDS_CSUM, 2 DATA_VALID), ``gso_type`` (0 none, 1 TCPv4, 4 TCPv6,
0x80 ECN), ``hdr_len``, ``gso_size`` (the segment size), ``csum_start``,
``csum_offset``.

A header that arrives from a peer is written into OUR kernel, whose
``virtio_net_hdr_to_skb`` path has had bugs: ``sanitize`` lets through only what a
well-behaved sender's kernel produces, and raises ``BadVnetHeader`` (the peer's
fault: drop and count) for anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import DecodeError

HEADER = struct.Struct("<BBHHHH")
SIZE = HEADER.size  # 10

F_NEEDS_CSUM = 0x01
F_DATA_VALID = 0x02
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
MAX_PACKET = 65_535 + 40  # an IPv6 jumbo is not ours: payload length fits u16


class BadVnetHeader(DecodeError):
    """A peer's virtio_net_hdr that our kernel must not see."""


@dataclass(frozen=True, slots=True)
class VnetHeader:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def encode(self) -> bytes:
        return HEADER.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                           self.csum_start, self.csum_offset)

    @property
    def is_gso(self) -> bool:
        return self.gso_type & ~GSO_ECN != GSO_NONE


PLAIN = VnetHeader()  # one ordinary packet, checksum complete


def parse(frame: bytes | memoryview) -> tuple[VnetHeader, memoryview]:
    """``(header, packet)`` of a TUN read or a peer's plaintext (no copy of the packet)."""
    if len(frame) < SIZE:
        raise BadVnetHeader(f"{len(frame)} bytes are shorter than the virtio_net_hdr")
    return VnetHeader(*HEADER.unpack_from(frame)), memoryview(frame)[SIZE:]


def sanitize(hdr: VnetHeader, packet: bytes | memoryview) -> VnetHeader:
    """``hdr`` if our kernel may take it in front of ``packet``; else ``BadVnetHeader``."""
    n = len(packet)
    if not 0 < n <= MAX_PACKET:
        raise BadVnetHeader(f"packet of {n} bytes")
    version = packet[0] >> 4
    if version not in (4, 6):
        raise BadVnetHeader(f"IP version {version}")
    if hdr.flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        raise BadVnetHeader(f"unknown flags {hdr.flags:#04x}")
    gso = hdr.gso_type & ~GSO_ECN
    if gso not in (GSO_NONE, GSO_TCPV4, GSO_TCPV6):
        raise BadVnetHeader(f"gso type {hdr.gso_type:#04x}")
    if gso != GSO_NONE:
        if gso != (GSO_TCPV4 if version == 4 else GSO_TCPV6):
            raise BadVnetHeader(f"gso type {gso} on an IPv{version} packet")
        if not 0 < hdr.gso_size <= n or not hdr.flags & F_NEEDS_CSUM:
            raise BadVnetHeader(f"gso size {hdr.gso_size} (flags {hdr.flags:#04x})")
    elif hdr.gso_type & GSO_ECN:
        raise BadVnetHeader("ECN flag without segmentation")
    if hdr.hdr_len > n:
        raise BadVnetHeader(f"hdr_len {hdr.hdr_len} beyond the {n}-byte packet")
    if hdr.flags & F_NEEDS_CSUM and hdr.csum_start + hdr.csum_offset + 2 > n:
        raise BadVnetHeader(f"checksum at {hdr.csum_start}+{hdr.csum_offset} beyond {n} bytes")
    return hdr
