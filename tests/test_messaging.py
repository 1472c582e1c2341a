"""MessageEndpoint over an in-test lossy pump on a hand-advanced clock (no sleeping)."""

import heapq
import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.overlay.forwarding import (DeliverLocal, Forwarder, RoutedReceived,
                                           SendToNeighbour, prefix_of)
from sporenet.protocols.identity import Identity
from sporenet.protocols.overlay.messaging import (MIB, DestinationUnreachable, MessageDelivered,
                                          MessageEndpoint, MessageFailed, MessageReceived,
                                          PacketReceived, PingFailed, PingResult, SendPacket)
from sporenet.protocols.overlay.layer import Overlay
from sporenet.protocols.routed import MessageChunk, Proto, TraceReply, TraceRequest
from sporenet.protocols.overlay.trace import TraceFailed, TraceResult, Tracer

IDS = [Identity(bytes([0x40 + i]) * 32) for i in range(5)]
A, B, C = (i.address for i in IDS[:3])


class Net:
    """Endpoints joined by direct, lossy, 10 ms paths; packets travel through a heap."""

    def __init__(self, n=2, loss=0.0, seed=1, latency=0.010, **kw):
        self.rng = random.Random(seed)
        self.eps = {IDS[i].address: MessageEndpoint(IDS[i], rng=random.Random(seed + i), **kw)
                    for i in range(n)}
        self.loss = loss
        self.latency = latency
        self.dead: set = set()  # addresses whose incoming packets are all lost
        self.heap = []
        self.seq = 0
        self.now = 0.0
        self.events = {a: [] for a in self.eps}
        self.packets = 0

    def emit(self, at, actions):
        for a in actions:
            if isinstance(a, SendPacket):
                self.packets += 1
                if a.dst_address in self.dead or self.rng.random() < self.loss:
                    continue
                if a.dst_address not in self.eps:
                    continue
                self.seq += 1
                ev = PacketReceived(at, a.proto, a.payload, 1)
                heapq.heappush(self.heap, (self.now + self.latency, self.seq, a.dst_address, ev))
            else:
                self.events[at].append(a)

    def run(self, until):
        while True:
            deadlines = [(d, a) for a, e in self.eps.items()
                         if (d := e.next_deadline()) is not None]
            t_timer, who = min(deadlines) if deadlines else (float("inf"), None)
            t_pkt = self.heap[0][0] if self.heap else float("inf")
            t = min(t_timer, t_pkt)
            if t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            if t_pkt <= t_timer:
                _, _, dst, ev = heapq.heappop(self.heap)
                self.emit(dst, self.eps[dst].handle(ev, self.now))
            else:
                self.emit(who, self.eps[who].on_timer(self.now))

    def of(self, addr, kind):
        return [e for e in self.events[addr] if isinstance(e, kind)]


def test_100kb_message_over_20_percent_loss():
    net = Net(loss=0.2, seed=7)
    data = random.Random(3).randbytes(100_000)
    msg_id, actions = net.eps[A].send(B, "files", data, net.now)
    net.emit(A, actions)
    net.run(30.0)
    [got] = net.of(B, MessageReceived)
    assert (got.src_address, got.topic, got.data, got.msg_id, got.reply_to) == (
        A, "files", data, msg_id, 0)
    assert net.of(A, MessageDelivered) == [MessageDelivered(msg_id)]
    assert net.eps[A].counters["retransmits"] > 0
    assert net.eps[A].in_flight == 0 and net.eps[B].next_deadline() is None


def test_deadline_failure_when_path_is_dead():
    net = Net()
    net.dead.add(B)
    msg_id, actions = net.eps[A].send(B, "t", b"hello", 0.0, deadline=5.0)
    net.emit(A, actions)
    net.run(20.0)
    assert net.of(A, MessageFailed) == [MessageFailed(msg_id, "deadline")]
    assert net.of(B, MessageReceived) == []
    # backoff: about log2 retransmissions, not one per 0.5 s
    assert 3 <= net.eps[A].counters["retransmits"] <= 6
    assert net.eps[A].next_deadline() is None


def test_reply_path_reaches_the_original_sender():
    net = Net(loss=0.2, seed=11)
    q_id, actions = net.eps[A].send(B, "rpc", b"question", 0.0)
    net.emit(A, actions)
    net.run(5.0)
    [q] = net.of(B, MessageReceived)
    r_id, actions = net.eps[B].reply(q, b"answer", net.now)
    net.emit(B, actions)
    net.run(15.0)
    [r] = net.of(A, MessageReceived)
    assert (r.src_address, r.topic, r.data, r.reply_to, r.msg_id) == (
        B, "rpc", b"answer", q_id, r_id)
    assert MessageDelivered(r_id) in net.of(B, MessageDelivered)


def test_topic_allowlist_drops_other_senders():
    net = Net(n=3)
    net.eps[C].allow("ops", {A})
    net.eps[C].allow("net", [ipaddress.IPv6Network(f"{B}/64", strict=False)])
    for src, topic in ((A, "ops"), (B, "ops"), (B, "net"), (A, "net"), (B, "free")):
        _, actions = net.eps[src].send(C, topic, topic.encode(), net.now, deadline=3.0)
        net.emit(src, actions)
    net.run(10.0)
    got = sorted((m.src_address, m.topic) for m in net.of(C, MessageReceived))
    assert got == sorted([(A, "ops"), (B, "net"), (B, "free")])
    assert net.eps[C].counters["refused_sender"] >= 2
    assert len(net.of(A, MessageFailed)) == 1 and len(net.of(B, MessageFailed)) == 1
    net.eps[C].allow("ops", None)  # open to everyone
    _, actions = net.eps[B].send(C, "ops", b"now", net.now)
    net.emit(B, actions)
    net.run(20.0)
    assert (B, "ops") in [(m.src_address, m.topic) for m in net.of(C, MessageReceived)]


def test_default_deny():
    net = Net(default_accept=False)
    _, actions = net.eps[A].send(B, "x", b"1", 0.0, deadline=1.0)
    net.emit(A, actions)
    net.run(5.0)
    assert net.of(B, MessageReceived) == [] and len(net.of(A, MessageFailed)) == 1


def test_duplicate_chunks_are_idempotent_and_never_deliver_twice():
    ep = MessageEndpoint(IDS[1], rng=random.Random(1))
    chunks = [MessageChunk(5, "t", i, 3, 5, 10_000, 0, d)
              for i, d in enumerate([b"ab", b"cd", b"e"])]
    ev = [PacketReceived(A, Proto.MESSAGE_CHUNK, c.encode()) for c in chunks]
    out = ep.handle(ev[0], 0.0) + ep.handle(ev[0], 0.1) + ep.handle(ev[2], 0.2)
    out += ep.handle(ev[1], 0.3) + ep.handle(ev[1], 0.4) + ep.handle(ev[0], 0.5)
    received = [a for a in out if isinstance(a, MessageReceived)]
    assert [r.data for r in received] == [b"abcde"]
    assert all(isinstance(a, SendPacket) and a.proto == Proto.MESSAGE_ACK
               for a in out if not isinstance(a, MessageReceived))
    assert ep.counters["duplicate_chunks"] == 3
    # after the sender's deadline the memory is dropped
    ep.on_timer(100.0)
    assert not ep._done


def test_duplicate_messages_over_a_duplicating_path():
    net = Net(loss=0.3, seed=5)
    data = bytes(range(256)) * 40
    msg_id, actions = net.eps[A].send(B, "dup", data, 0.0)
    net.emit(A, actions * 2)  # every first chunk sent twice
    net.run(30.0)
    assert [m.data for m in net.of(B, MessageReceived)] == [data]
    assert net.of(A, MessageDelivered) == [MessageDelivered(msg_id)]


def test_size_limits():
    ep = MessageEndpoint(A, rng=random.Random(1))
    with pytest.raises(LocalProtocolError, match="exceeds"):
        ep.send(B, "t", b"\0" * (MIB + 1), 0.0)
    with pytest.raises(LocalProtocolError):
        ep.send(B, "t" * 256, b"", 0.0)
    with pytest.raises(LocalProtocolError):
        MessageEndpoint(A, rng=random.Random(1), chunk_size=8)  # 1 MiB > 65535 chunks
    # a receiver refuses a declared size over its limit, and the sender gives up at once
    small = Net(max_message=1000, chunk_size=500)
    big = MessageEndpoint(A, rng=random.Random(2))
    small.eps[A] = big
    msg_id, actions = big.send(B, "t", b"x" * 5000, 0.0)
    small.emit(A, actions)
    small.run(5.0)
    assert small.of(A, MessageFailed) == [MessageFailed(msg_id, "refused")]


def test_per_peer_reassembly_budget():
    ep = MessageEndpoint(B, rng=random.Random(1), max_reassembly_per_peer=10_000)

    def first_chunk(msg_id, total, src=A):
        c = MessageChunk(msg_id, "t", 0, 20, total, 10_000, 0, b"x")
        return ep.handle(PacketReceived(src, Proto.MESSAGE_CHUNK, c.encode()), 0.0)

    assert first_chunk(1, 600_000)        # alone: admitted although over the budget
    assert first_chunk(2, 100) == []      # nothing more from A while that is open
    assert first_chunk(3, 100, src=C)     # other peers have their own budget
    assert ep.counters["reassembly_full"] == 1
    ep.on_timer(100.0)                    # expiry frees the budget
    assert ep.counters["reassembly_expired"] == 2
    assert first_chunk(2, 100)


def test_ping_reports_rtt_and_hops_and_times_out():
    net = Net()
    ping_id, actions = net.eps[A].ping(B, 0.0)
    net.emit(A, actions)
    net.run(1.0)
    [r] = net.of(A, PingResult)
    assert r.ping_id == ping_id and r.dst_address == B and r.rtt == pytest.approx(0.020)
    net.dead.add(B)
    ping_id, actions = net.eps[A].ping(B, net.now, timeout=2.0)
    net.emit(A, actions)
    net.run(10.0)
    assert net.of(A, PingFailed) == [PingFailed(ping_id, B, "timeout")]


def test_bad_payloads_are_counted():
    ep = MessageEndpoint(A, rng=random.Random(1))
    assert ep.handle(PacketReceived(B, Proto.MESSAGE_CHUNK, b"\x01"), 0.0) == []
    assert ep.handle(PacketReceived(B, 99, b""), 0.0) == []
    assert ep.counters["malformed"] == 1 and ep.counters["unknown_proto"] == 1


def test_empty_message():
    net = Net()
    msg_id, actions = net.eps[A].send(B, "", b"", 0.0)
    net.emit(A, actions)
    net.run(2.0)
    assert [(m.data, m.topic) for m in net.of(B, MessageReceived)] == [(b"", "")]
    assert net.of(A, MessageDelivered) == [MessageDelivered(msg_id)]


chunk_st = st.builds(MessageChunk, st.integers(1, 4), st.sampled_from(["a", "b"]),
                     st.integers(0, 3), st.integers(4, 4), st.integers(4, 12),
                     st.integers(0, 5000), st.integers(0, 2), st.binary(max_size=4))


@given(st.lists(st.tuples(st.sampled_from([A, C]), st.one_of(
    chunk_st.map(lambda c: (Proto.MESSAGE_CHUNK, c.encode())),
    st.tuples(st.integers(0, 8), st.binary(max_size=40)))), max_size=40))
def test_fuzz_endpoint_never_raises_and_frees_its_budget(packets):
    ep = MessageEndpoint(B, rng=random.Random(1), max_reassembly_per_peer=8)
    for k, (src, (proto, payload)) in enumerate(packets):
        for a in ep.handle(PacketReceived(src, proto, payload, 1), k * 0.01):
            if isinstance(a, MessageReceived):
                assert len(a.data) <= 12
    ep.on_timer(10_000.0)
    assert not ep._in and ep._total_bytes == 0 and not ep._peer_bytes
    assert ep.next_deadline() is None


def test_over_forwarders_five_node_line():
    """The endpoints ride the real Forwarder: ping hops and an unreachable notice."""
    fwd = [Forwarder(i) for i in IDS]
    for k, f in enumerate(fwd):
        f.set_neighbours({IDS[j].node_id: prefix_of(IDS[j].address)
                          for j in range(5) if abs(j - k) == 1})
        f.set_fib({prefix_of(IDS[j].address): IDS[k + 1 if j > k else k - 1].node_id
                   for j in range(5) if abs(j - k) > 1})
    eps = [MessageEndpoint(i, rng=random.Random(k)) for k, i in enumerate(IDS)]
    by_id = {i.node_id: k for k, i in enumerate(IDS)}
    results = {k: [] for k in range(5)}

    def run(k, actions, now):
        todo = [(k, a) for a in actions]
        while todo:
            at, a = todo.pop(0)
            if isinstance(a, SendPacket):
                todo += [(at, x) for x in fwd[at].originate(a.dst_address, a.proto, a.payload, now)]
            elif isinstance(a, SendToNeighbour):
                nxt = by_id[a.node_id]
                todo += [(nxt, x) for x in fwd[nxt].route(a.packet, IDS[at].node_id, now)]
            elif isinstance(a, DeliverLocal):
                todo += [(at, x) for x in eps[at].handle(PacketReceived.from_routed(a.packet), now)]
            else:
                results[at].append(a)

    _, actions = eps[0].ping(IDS[4].address, 0.0)
    run(0, actions, 0.0)
    [r] = results[0]
    assert isinstance(r, PingResult) and r.hops == 4
    msg_id, actions = eps[0].send(IDS[4].address, "t", b"y" * 5000, 0.0)
    run(0, actions, 0.0)
    assert [m.data for m in results[4] if isinstance(m, MessageReceived)] == [b"y" * 5000]
    assert MessageDelivered(msg_id) in results[0]
    fwd[2].set_fib({})  # node 2 loses its route toward node 4 (and node 0)
    fwd[2].set_neighbours({IDS[1].node_id: prefix_of(IDS[1].address)})
    fwd[2].set_fib({prefix_of(IDS[0].address): IDS[1].node_id})
    results[0].clear()
    ping_id, actions = eps[0].ping(IDS[4].address, 1.0)
    run(0, actions, 1.0)
    assert DestinationUnreachable(IDS[4].address, 1, IDS[2].address) in results[0]
    assert PingFailed(ping_id, IDS[4].address, "unreachable") in results[0]


def overlay_line(n=5, **fwd_kw):
    """Overlay composites (forwarder + endpoint + tracer) on a line, with a runner."""
    ovs = [Overlay(Forwarder(i, **fwd_kw), MessageEndpoint(i, rng=random.Random(k)),
                   Tracer(rng=random.Random(100 + k))) for k, i in enumerate(IDS[:n])]
    for k, ov in enumerate(ovs):
        ov.forwarder.set_neighbours({IDS[j].node_id: prefix_of(IDS[j].address)
                                     for j in range(n) if abs(j - k) == 1})
        ov.set_fib({IDS[j].node_id: IDS[k + 1 if j > k else k - 1].node_id
                    for j in range(n) if abs(j - k) > 1})
    by_id = {i.node_id: k for k, i in enumerate(IDS)}
    results = {k: [] for k in range(n)}

    def run(k, actions, now):
        todo = [(k, a) for a in actions]
        while todo:
            at, a = todo.pop(0)
            if isinstance(a, SendToNeighbour):
                nxt = by_id[a.node_id]
                todo += [(nxt, x) for x in ovs[nxt].handle(
                    RoutedReceived(IDS[at].node_id, a.packet), now + 0.001)]
            else:
                results[at].append(a)
    return ovs, run, results


def test_trace_over_overlay_line_reports_every_hop():
    ovs, run, results = overlay_line(5, link_stats=lambda nid: (1.0, 0.0, 2.0),
                                     route_metric=lambda dst: 10)
    trace_id, actions = ovs[0].trace(IDS[4].address, 0.0)
    run(0, actions, 0.0)
    [r] = results[0]
    assert isinstance(r, TraceResult) and r.trace_id == trace_id and not r.truncated
    assert r.dst_address == IDS[4].address and r.rtt == pytest.approx(0.001)
    assert [x.next_hop for x in r.records] == [i.node_id for i in IDS[1:5]]
    assert [x.address for x in r.records] == [i.address.packed for i in IDS[:4]]
    assert all((x.rtt_ms, x.loss, x.cost, x.route_metric) == (1.0, 0.0, 2.0, 10)
               for x in r.records)
    assert ovs[4].tracer.counters["traces_answered"] == 1
    assert ovs[0].next_deadline() is None
    # the request and reply never reach the message endpoints
    assert all(ov.endpoint.counters["not_for_messages"] == 0 for ov in ovs)


def test_trace_fails_on_unreachable_and_on_timeout():
    ovs, run, results = overlay_line(5)
    ovs[2].set_fib({IDS[0].node_id: IDS[1].node_id}, version=99)  # node 2 loses node 4
    ovs[2].forwarder.set_neighbours({IDS[1].node_id: prefix_of(IDS[1].address)})
    trace_id, actions = ovs[0].trace(IDS[4].address, 0.0)
    run(0, actions, 0.0)
    assert TraceFailed(trace_id, IDS[4].address, "unreachable") in results[0]
    assert DestinationUnreachable(IDS[4].address, 1, IDS[2].address) in results[0]
    results[0].clear()
    ovs2, run2, results2 = overlay_line(2)
    trace_id, actions = ovs2[0].trace(IDS[1].address, 0.0, timeout=2.0)
    assert len(actions) == 1  # sent, and lost: nobody runs it
    assert ovs2[0].next_deadline() == 2.0
    assert ovs2[0].on_timer(1.9) == []
    assert ovs2[0].on_timer(2.0) == [TraceFailed(trace_id, IDS[1].address, "timeout")]
    with pytest.raises(LocalProtocolError):
        ovs2[0].trace(IDS[1].address, 0.0, timeout=0)


def test_tracer_ignores_strays_and_junk():
    t = Tracer(rng=random.Random(1))
    assert t.handle(PacketReceived(B, Proto.TRACE_REPLY, TraceReply(5).encode()), 0.0) == []
    assert t.handle(PacketReceived(B, Proto.TRACE_REQUEST, b"\x00"), 0.0) == []
    trace_id, _ = t.trace(B, 0.0)
    assert t.handle(PacketReceived(C, Proto.TRACE_REPLY, TraceReply(trace_id).encode()), 0.1) == []
    assert t.counters["stray_replies"] == 2 and t.counters["malformed"] == 1
    [res] = t.handle(PacketReceived(B, Proto.TRACE_REPLY, TraceReply(trace_id, (), 1).encode()),
                     0.25)
    assert res == TraceResult(trace_id, B, (), 0.25, True)
    # the message endpoint counts trace payloads it is handed and goes on
    ep = MessageEndpoint(A, rng=random.Random(1))
    assert ep.handle(PacketReceived(B, Proto.TRACE_REQUEST, TraceRequest(1).encode()), 0.0) == []
    assert ep.counters["not_for_messages"] == 1
