"""The virtio_net_hdr (protocols/datapath/vnet.py): parse, build, and the sanitizing of
headers that come from peers before our kernel sees them."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sporenet.protocols.datapath import vnet
from sporenet.protocols.datapath.vnet import BadVnetHeader, VnetHeader

V6 = b"\x60" + bytes(39) + bytes(20) + b"d" * 2000   # IPv6 + TCP header + data
V4 = b"\x45" + bytes(19) + bytes(20) + b"d" * 2000
TSO6 = VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV6, 60, 1408, 40, 16)


@given(st.builds(VnetHeader, *(st.integers(0, 255),) * 2, *(st.integers(0, 65535),) * 4),
       st.binary(max_size=64))
def test_parse_gives_back_what_was_built(hdr, packet):
    got, rest = vnet.parse(hdr.encode() + packet)
    assert got == hdr and bytes(rest) == packet


def test_a_kernel_superpacket_header_passes():
    assert vnet.sanitize(TSO6, V6) is TSO6
    assert vnet.sanitize(vnet.PLAIN, V4) is vnet.PLAIN
    ecn = VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4 | vnet.GSO_ECN, 40, 1400, 20, 16)
    assert vnet.sanitize(ecn, V4) is ecn


@pytest.mark.parametrize("bad,packet", [
    (VnetHeader(flags=0x04), V6),                                             # unknown flag
    (VnetHeader(vnet.F_NEEDS_CSUM, 3, 60, 1408, 40, 6), V6),                 # UFO
    (VnetHeader(vnet.F_NEEDS_CSUM, 5, 60, 1408, 40, 6), V6),                 # UDP_L4
    (VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 60, 1408, 40, 16), V6),   # v4 GSO on v6
    (VnetHeader(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV6, 60, 0, 40, 16), V6),      # no segment size
    (VnetHeader(0, vnet.GSO_TCPV6, 60, 1408, 40, 16), V6),                   # GSO without csum
    (VnetHeader(gso_type=vnet.GSO_ECN), V6),                                 # ECN alone
    (VnetHeader(vnet.F_NEEDS_CSUM, 0, 0, 0, len(V6) - 17, 16), V6),          # csum past the end
    (VnetHeader(hdr_len=len(V6) + 1), V6),
    (vnet.PLAIN, b"\x70" + bytes(60)),                                       # not IP
    (vnet.PLAIN, b""),
])
def test_a_peer_header_our_kernel_must_not_see_is_refused(bad, packet):
    with pytest.raises(BadVnetHeader):
        vnet.sanitize(bad, packet)


def test_a_frame_shorter_than_the_header_is_refused():
    with pytest.raises(BadVnetHeader):
        vnet.parse(b"\x00" * 9)
