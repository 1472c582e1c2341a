"""Reply flows (protocols/datapath/flows.py): what the contract's directional rules let
back through the TUN points, on hand-built IPv6 packets."""

import struct

from sporenet.protocols.datapath.flows import FLOW_IDLE, ReplyFlows

PEER = b"\x06\x01" + bytes(6)


def ip6(proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + bytes(32) + l4


def tcp(src: int, dst: int) -> bytes:
    return ip6(6, struct.pack("!HH", src, dst) + bytes(16))


def echo(kind: int, ident: int) -> bytes:
    return ip6(58, struct.pack("!BBHHH", kind, 0, 0, ident, 1))


def test_only_replies_of_a_flow_the_peer_opened_go_back():
    f = ReplyFlows()
    f.saw_inbound(tcp(40000, 22), PEER, 0.0)          # the peer opened :22 from :40000
    assert f.is_reply(tcp(22, 40000), PEER, 1.0)      # our answer goes back
    assert not f.is_reply(tcp(22, 40001), PEER, 1.0)  # not to another port
    assert not f.is_reply(tcp(5555, 40000), PEER, 1.0)
    assert not f.is_reply(tcp(22, 40000), b"\x06\x02" + bytes(6), 1.0)  # nor another peer
    assert not f.is_reply(tcp(22, 40000), PEER, FLOW_IDLE + 1)  # idle flows are forgotten


def test_echo_replies_pass_both_ways_but_requests_do_not():
    f = ReplyFlows()
    f.saw_outbound(echo(128, 7), PEER, 0.0)          # we pinged a peer that may not reach us
    assert f.is_reply_in(echo(129, 7), PEER, 0.5)
    assert not f.is_reply_in(echo(128, 7), PEER, 0.5)  # its own request is not a reply
    assert not f.is_reply_in(echo(129, 8), PEER, 0.5)
    assert not f.is_reply(echo(129, 7), PEER, 0.5)     # the other direction's table


def test_the_table_is_bounded_and_forgets_revoked_peers():
    f = ReplyFlows(limit=10)
    for port in range(50):
        f.saw_inbound(tcp(port, 22), PEER, 0.0)
    assert len(f) == 10 and f.refused_full == 40
    f.forget(frozenset())
    assert len(f) == 0 and not f.is_reply(tcp(22, 1), PEER, 0.1)
