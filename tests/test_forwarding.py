"""Forwarder: chains of nodes with hand-written FIBs, driven by an in-test pump."""

from collections import deque

import pytest

from sporenet.protocols import wire
from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.overlay.forwarding import (DeliverLocal, Forwarder, RoutedReceived,
                                           SendToNeighbour, prefix_fib, prefix_of,
                                           prefix_of_node)
from sporenet.protocols.identity import Identity
from sporenet.protocols.routed import (MAX_ROUTED_PAYLOAD, TRACE_TRUNCATED, Proto,
                                                 Routed, TraceRecord, TraceRequest,
                                                 Unreachable, UnreachableReason)


def make_nodes(n):
    ids = [Identity(bytes([i + 1]) * 32) for i in range(n)]
    return ids, [Forwarder(i) for i in ids]


def line(n):
    """Nodes 0..n-1 in a line; FIBs route every prefix along the line."""
    ids, fwd = make_nodes(n)
    for i, f in enumerate(fwd):
        neigh = {}
        if i > 0:
            neigh[ids[i - 1].node_id] = prefix_of(ids[i - 1].address)
        if i < n - 1:
            neigh[ids[i + 1].node_id] = prefix_of(ids[i + 1].address)
        f.set_neighbours(neigh)
        f.set_fib({prefix_of(ids[j].address): ids[i + 1 if j > i else i - 1].node_id
                   for j in range(n) if j != i and abs(j - i) > 1})
    return ids, fwd


class Pump:
    """Carries SendToNeighbour actions as wire frames; collects local deliveries."""

    def __init__(self, ids, fwd):
        self.by_id = {i.node_id: f for i, f in zip(ids, fwd)}
        self.name = {i.node_id: k for k, i in enumerate(ids)}
        self.delivered = {k: [] for k in range(len(ids))}
        self.queue = deque()
        self.hops = 0

    def run(self, node, actions, now=0.0):
        self.queue.extend((node, a) for a in actions)
        while self.queue:
            at, a = self.queue.popleft()
            if isinstance(a, DeliverLocal):
                self.delivered[at].append(a.packet)
            else:
                assert isinstance(a, SendToNeighbour)
                self.hops += 1
                assert self.hops < 10_000
                nxt = self.name[a.node_id]
                frame = wire.encode_frame(a.packet)
                from_id = [k for k, v in self.name.items() if v == at][0]
                out = self.by_id[a.node_id].route_frame(frame, from_id, now)
                self.queue.extend((nxt, x) for x in out)


def test_five_node_line_delivers_across_four_hops():
    ids, fwd = line(5)
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(ids[4].address, Proto.PING, b"hi"))
    [pkt] = pump.delivered[4]
    assert pkt.src == ids[0].address.packed and pkt.payload == b"hi"
    assert pkt.hops_taken == 4 and pkt.hop_limit == 64 - 4
    assert [f.counters["forwarded"] for f in fwd] == [0, 1, 1, 1, 0]
    assert fwd[4].counters["delivered"] == 1 and fwd[0].counters["originated"] == 1
    # and back, using the same code
    pump.run(4, fwd[4].originate(str(ids[0].address), Proto.PONG, b""))
    assert pump.delivered[0][0].hops_taken == 4


def test_direct_neighbour_reachable_without_fib_entry():
    ids, fwd = make_nodes(2)
    fwd[0].set_neighbours({ids[1].node_id: prefix_of(ids[1].address)})
    [a] = fwd[0].originate(ids[1].address, Proto.PING, b"")
    assert a == SendToNeighbour(ids[1].node_id, Routed(ids[0].address.packed,
                                                       ids[1].address.packed, 63, 1, Proto.PING))


def test_missing_route_sends_unreachable_back_to_sender():
    ids, fwd = line(4)
    stranger = Identity(b"\x99" * 32)
    # nodes 0 and 1 route the stranger's /64 toward node 2, which has no route for it
    fwd[0].set_fib({**fwd[0]._fib, prefix_of(stranger.address): ids[1].node_id})
    fwd[1].set_fib({**fwd[1]._fib, prefix_of(stranger.address): ids[2].node_id})
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(stranger.address, Proto.MESSAGE_CHUNK, b"x"))
    [notice] = pump.delivered[0]
    assert notice.proto == Proto.UNREACHABLE and notice.src == ids[2].address.packed
    assert Unreachable.decode(notice.payload) == Unreachable(stranger.address.packed,
                                                             UnreachableReason.NO_ROUTE)
    assert fwd[2].counters["no_route"] == 1 and fwd[2].counters["unreachable_sent"] == 1


def test_originating_without_route_delivers_unreachable_locally():
    ids, fwd = make_nodes(2)
    [a] = fwd[0].originate(ids[1].address, Proto.PING, b"")
    assert isinstance(a, DeliverLocal) and a.packet.proto == Proto.UNREACHABLE


def test_no_unreachable_about_an_unreachable():
    ids, fwd = make_nodes(3)
    pkt = Routed(ids[1].address.packed, ids[2].address.packed, 5, 1, Proto.UNREACHABLE,
                 Unreachable(ids[0].address.packed, 1).encode())
    assert fwd[0].route(pkt, ids[1].node_id, 0.0) == []
    assert fwd[0].counters["unreachable_dropped"] == 1
    assert fwd[0].counters["unreachable_sent"] == 0


def test_fib_loop_is_stopped_by_hop_limit_and_counted():
    ids, fwd = make_nodes(3)
    target = Identity(b"\x77" * 32)
    p = prefix_of(target.address)
    fwd[0].set_fib({p: ids[1].node_id})
    fwd[1].set_fib({p: ids[2].node_id, prefix_of(ids[0].address): ids[0].node_id})
    fwd[2].set_fib({p: ids[1].node_id, prefix_of(ids[0].address): ids[1].node_id})
    for k in range(3):  # neighbours on the 0-1-2 line
        fwd[k].set_neighbours({ids[j].node_id: prefix_of(ids[j].address)
                               for j in range(3) if abs(j - k) == 1})
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(target.address, Proto.PING, b""))
    exceeded = sum(f.counters["hop_limit_exceeded"] for f in fwd)
    assert exceeded == 1
    assert pump.hops < 64 + 64  # the packet's 64 hops plus the notice's way back
    [notice] = pump.delivered[0]
    assert Unreachable.decode(notice.payload).reason == UnreachableReason.HOP_LIMIT_EXCEEDED


def test_dst_inside_our_slash64_but_not_our_address_is_dropped():
    ids, fwd = make_nodes(2)
    wrong = ids[1].address.packed[:15] + bytes([ids[1].address.packed[15] ^ 1])
    pkt = Routed(ids[0].address.packed, wrong, 10, 1, Proto.PING)
    assert fwd[1].route(pkt, ids[0].node_id, 0.0) == []
    assert fwd[1].counters["dst_not_ours"] == 1


def test_malformed_frames_dropped_and_counted():
    ids, fwd = make_nodes(1)
    assert fwd[0].route_frame(b"\x01\x30\x00", b"n", 0.0) == []
    assert fwd[0].route_frame(b"\x01\x03\x00\x00\x00\x01", b"n", 0.0) == []  # a Probe
    assert fwd[0].counters["malformed"] == 2


def test_hop_limit_zero_arriving_for_us_is_still_delivered():
    ids, fwd = make_nodes(2)
    pkt = Routed(ids[0].address.packed, ids[1].address.packed, 0, 64, Proto.PING)
    assert fwd[1].handle(RoutedReceived(ids[0].node_id, pkt), 0.0) == [DeliverLocal(pkt)]


def test_unreachables_are_rate_limited():
    ids, fwd = make_nodes(2)
    f = Forwarder(ids[0], unreachable_rate=1.0, unreachable_burst=2.0)
    f.set_neighbours({ids[1].node_id: prefix_of(ids[1].address)})
    lost = Identity(b"\x55" * 32).address.packed
    pkt = Routed(ids[1].address.packed, lost, 9, 1, Proto.PING)
    sent = [bool(f.route(pkt, ids[1].node_id, 0.0)) for _ in range(4)]
    assert sent == [True, True, False, False]
    assert f.counters["unreachable_suppressed"] == 2
    assert f.route(pkt, ids[1].node_id, 1.5)  # a token came back


def test_fib_is_kept_by_reference_and_bad_config_refused():
    ids, fwd = make_nodes(2)
    fib = {}
    fwd[0].set_fib(fib)
    fib[prefix_of(ids[1].address)] = ids[1].node_id
    assert isinstance(fwd[0].originate(ids[1].address, 1, b"")[0], SendToNeighbour)
    with pytest.raises(LocalProtocolError):
        Forwarder(ids[0], hop_limit=0)
    with pytest.raises(LocalProtocolError):
        fwd[0].set_neighbours({b"n": b"short"})


def test_router_snapshot_keyed_by_node_id_converts_to_prefixes():
    ids, fwd = make_nodes(3)
    assert prefix_of_node(ids[2].node_id) == prefix_of(ids[2].address)
    fwd[0].set_fib(prefix_fib({ids[2].node_id: ids[1].node_id}))
    [a] = fwd[0].originate(ids[2].address, Proto.PING, b"")
    assert a.node_id == ids[1].node_id


def traced_line(n, **kw):
    """``line(n)`` whose forwarders know per-link figures and route metrics: the link
    from node i to node j measures rtt 10*i + j ms, loss j/100, cost 100*i + j; node
    i's metric to anything is 1000 + i."""
    ids, fwd = line(n)
    index = {x.node_id: k for k, x in enumerate(ids)}
    for i, f in enumerate(fwd):
        f.link_stats = (lambda i: lambda nid: (10.0 * i + index[nid], index[nid] / 100,
                                               100.0 * i + index[nid]))(i)
        f.route_metric = (lambda i: lambda dst: 1000 + i)(i)
        f.max_trace_records = kw.get("max_records", f.max_trace_records)
    return ids, fwd


def test_trace_request_gets_a_record_at_every_forwarding_node():
    ids, fwd = traced_line(5)
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(ids[4].address, Proto.TRACE_REQUEST, TraceRequest(7).encode()))
    [pkt] = pump.delivered[4]
    req = TraceRequest.decode(pkt.payload)
    assert req.trace_id == 7 and not req.truncated and pkt.hops_taken == 4
    assert [r.address for r in req.records] == [i.address.packed for i in ids[:4]]
    assert [r.next_hop for r in req.records] == [i.node_id for i in ids[1:]]
    assert [(r.rtt_ms, r.loss, r.cost, r.route_metric) for r in req.records] == [
        (10.0 * i + i + 1, (i + 1) / 100, 100.0 * i + i + 1, 1000 + i) for i in range(4)]
    assert [f.counters["trace_recorded"] for f in fwd] == [1, 1, 1, 1, 0]
    # other protos are never touched
    pump.run(0, fwd[0].originate(ids[4].address, Proto.PING, TraceRequest(7).encode()))
    assert pump.delivered[4][-1].payload == TraceRequest(7).encode()


def test_trace_without_lookups_records_unknowns():
    ids, fwd = line(3)
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(ids[2].address, Proto.TRACE_REQUEST, TraceRequest(1).encode()))
    recs = TraceRequest.decode(pump.delivered[2][0].payload).records
    assert [r.next_hop for r in recs] == [ids[1].node_id, ids[2].node_id]
    assert all(r.rtt_ms is None and r.cost is None and r.route_metric is None for r in recs)


def test_full_trace_is_truncated_with_a_flag_and_counted():
    ids, fwd = traced_line(5, max_records=2)
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(ids[4].address, Proto.TRACE_REQUEST, TraceRequest(3).encode()))
    req = TraceRequest.decode(pump.delivered[4][0].payload)
    assert len(req.records) == 2 and req.flags == TRACE_TRUNCATED and req.truncated
    assert [f.counters["trace_truncated"] for f in fwd] == [0, 0, 1, 1, 0]
    assert len(TraceRequest(1, (TraceRecord(ids[0].address.packed, bytes(32)),) * 64)
               .encode()) < MAX_ROUTED_PAYLOAD


def test_malformed_trace_request_is_forwarded_unchanged_and_counted():
    ids, fwd = traced_line(3)
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(ids[2].address, Proto.TRACE_REQUEST, b"\x01"))
    assert pump.delivered[2][0].payload == b"\x01"
    assert fwd[0].counters["trace_malformed"] == 1 and fwd[1].counters["trace_malformed"] == 1


def test_trace_loop_is_stopped_by_hop_limit():
    ids, fwd = make_nodes(2)
    target = Identity(b"\x77" * 32)
    p = prefix_of(target.address)
    fwd[0].set_fib({p: ids[1].node_id})
    fwd[1].set_fib({p: ids[0].node_id, prefix_of(ids[0].address): ids[0].node_id})
    for k in range(2):
        fwd[k].set_neighbours({ids[1 - k].node_id: prefix_of(ids[1 - k].address)})
    pump = Pump(ids, fwd)
    pump.run(0, fwd[0].originate(target.address, Proto.TRACE_REQUEST, TraceRequest(5).encode()))
    assert sum(f.counters["hop_limit_exceeded"] for f in fwd) == 1
    assert sum(f.counters["trace_truncated"] for f in fwd) == 0
    assert sum(f.counters["trace_recorded"] for f in fwd) == 64  # one per hop, within the cap
    [notice] = pump.delivered[0]
    assert Unreachable.decode(notice.payload).reason == UnreachableReason.HOP_LIMIT_EXCEEDED
