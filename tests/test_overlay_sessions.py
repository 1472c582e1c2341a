"""Overlay composites with session managers on a line A-T-B (sans-IO, hand-advanced clock).

Messages ride end-to-end sessions: the transit only ever forwards session frames;
ping and trace stay cleartext; cleartext message chunks from other nodes are dropped.
"""

import random
from collections import deque

import pytest

from sporenet.protocols.base import Publish
from sporenet.protocols.overlay.forwarding import Forwarder, RoutedReceived, SendToNeighbour, prefix_of
from sporenet.protocols.identity import Identity
from sporenet.protocols.overlay.messaging import (MessageDelivered, MessageEndpoint, MessageFailed,
                                          MessageReceived, PingResult)
from sporenet.protocols.overlay.layer import Overlay
from sporenet.protocols.routed import MessageChunk, Proto, Routed
from sporenet.protocols.sessions.pq import mlkem_available
from sporenet.protocols.routing.table import Fib
from sporenet.protocols.sessions.events import SessionEstablished
from sporenet.protocols.sessions.manager import SessionManager
from sporenet.protocols.overlay.trace import TraceResult

T0 = 1_800_000_000.0  # the handshake's TAI64N stamps need Unix-like times
IDS = A, T, B = [Identity(bytes([0x60 + i]) * 32) for i in range(3)]
SECRET = b"a distinctive payload no transit may read"


class Line:
    def __init__(self, pq=False, keys=True):
        self.ovs = [Overlay(Forwarder(i), MessageEndpoint(i, rng=random.Random(k)),
                            sessions=SessionManager(i, rng=random.Random(50 + k), pq=pq))
                    for k, i in enumerate(IDS)]
        for k, ov in enumerate(self.ovs):
            ov.forwarder.set_neighbours({IDS[j].node_id: prefix_of(IDS[j].address)
                                         for j in range(3) if abs(j - k) == 1})
            far = [j for j in (0, 2) if abs(j - k) == 2]
            routes = {IDS[j].node_id: IDS[1].node_id for j in far}
            pubs = {IDS[j].node_id: IDS[j].public_key for j in far} if keys else {}
            ov.set_fib(Fib(routes, 1, pubs), 1)
            ov.set_neighbour_keys([IDS[j].public_key for j in range(3) if abs(j - k) == 1])
        self.now = T0
        self.links = deque()  # (from index, to index, Routed)
        self.on_transit = []  # packets that crossed T
        self.out = {k: [] for k in range(3)}

    def act(self, k, actions):
        for a in actions:
            if isinstance(a, SendToNeighbour):
                self.links.append((k, [i.node_id for i in IDS].index(a.node_id), a.packet))
            else:
                self.out[k].append(a)

    def run(self, seconds=2.0, step=0.01):
        end = self.now + seconds
        while self.now < end:
            while self.links:
                src, dst, packet = self.links.popleft()
                if dst == 1:
                    self.on_transit.append(packet)
                self.act(dst, self.ovs[dst].handle(RoutedReceived(IDS[src].node_id, packet),
                                                   self.now))
            for k, ov in enumerate(self.ovs):
                due = ov.next_deadline()
                if due is not None and due <= self.now:
                    self.act(k, ov.on_timer(self.now))
            self.now += step

    def of(self, k, kind):
        return [a for a in self.out[k] if isinstance(a, kind)]


def test_message_and_reply_ride_a_session_the_transit_cannot_open():
    line = Line()
    a, t, b = line.ovs
    msg_id, acts = a.send(B.address, "chat", SECRET, line.now)
    line.act(0, acts)
    line.run()
    [got] = line.of(2, MessageReceived)
    assert (got.src_address, got.topic, got.data) == (A.address, "chat", SECRET)
    assert line.of(0, MessageDelivered) == [MessageDelivered(msg_id)]
    reply_id, acts = b.endpoint.reply(got, b"and back", line.now)
    line.act(2, b._run(acts, line.now))
    line.run()
    [back] = line.of(0, MessageReceived)
    assert back.data == b"and back" and back.reply_to == msg_id
    assert {p.proto for p in line.on_transit} == {Proto.SESSION_HANDSHAKE, Proto.E2E_DATA}
    assert not any(SECRET[:12] in p.payload or b"and back" in p.payload for p in line.on_transit)
    assert t.sessions.sessions(line.now) == [] and len(t.sessions.keyring) == 0
    [ra] = a.sessions.sessions(line.now)
    [rb] = b.sessions.sessions(line.now)
    assert ra.peer == B.public_key and rb.peer == A.public_key
    assert ra.bytes_out > len(SECRET) and ra.bytes_in > 0 and rb.bytes_in == ra.bytes_out
    assert any(isinstance(x, Publish) and isinstance(x.message, SessionEstablished)
               for x in line.out[0])


@pytest.mark.skipif(not mlkem_available(), reason="ML-KEM-768 unavailable")
def test_with_pq_both_ends_end_up_on_a_pq_keypair():
    line = Line(pq=True)
    a, _, b = line.ovs
    line.act(0, a.send(B.address, "", SECRET, line.now)[1])
    line.run(3.0)
    assert line.of(2, MessageReceived)
    assert [r.pq for r in a.sessions.sessions(line.now)] == [True]
    assert [r.pq for r in b.sessions.sessions(line.now)] == [True]


def test_ping_and_trace_stay_cleartext_diagnostics():
    line = Line()
    a = line.ovs[0]
    line.act(0, a.ping(B.address, line.now)[1])
    line.act(0, a.trace(B.address, line.now)[1])
    line.run(0.5)
    assert line.of(0, PingResult) and line.of(0, TraceResult)
    assert {p.proto for p in line.on_transit} == {Proto.PING, Proto.PONG, Proto.TRACE_REQUEST,
                                                  Proto.TRACE_REPLY}
    assert all(ov.sessions.sessions(line.now) == [] for ov in line.ovs)


def test_cleartext_chunk_from_another_node_is_dropped():
    line = Line()
    b = line.ovs[2]
    chunk = MessageChunk(7, "chat", 0, 1, 6, 10_000, 0, b"forged")
    forged = Routed(A.address.packed, B.address.packed, 64, 1, Proto.MESSAGE_CHUNK,
                    chunk.encode())
    assert b.handle(RoutedReceived(T.node_id, forged), line.now) == []
    assert b.counters["cleartext_dropped"] == 1 and b.endpoint.counters["chunks_received"] == 0


def test_message_to_ourselves_stays_local():
    line = Line()
    a = line.ovs[0]
    msg_id, acts = a.send(A.address, "", b"note to self", line.now)
    assert MessageDelivered(msg_id) in acts
    assert [x.data for x in acts if isinstance(x, MessageReceived)] == [b"note to self"]
    assert a.sessions.sessions(line.now) == []


def test_without_a_known_key_nothing_leaves_and_the_message_fails_at_its_deadline():
    line = Line(keys=False)
    a = line.ovs[0]
    msg_id, acts = a.send(B.address, "", SECRET, line.now, deadline=1.0)
    assert acts == [] and a.counters["no_public_key"] == 1
    line.run(1.5)
    assert line.of(0, MessageFailed) == [MessageFailed(msg_id, "deadline")]
    assert not line.on_transit


@pytest.mark.parametrize("pq", [False, pytest.param(True, marks=pytest.mark.skipif(
    not mlkem_available(), reason="ML-KEM-768 unavailable"))])
def test_a_restarted_peer_gets_a_new_handshake_when_its_answers_stop(pq):
    line = Line(pq=pq)
    a, _, b = line.ovs
    line.act(0, a.send(B.address, "", b"before", line.now)[1])
    line.run(1.0)
    assert line.of(0, MessageDelivered)
    b.sessions = SessionManager(B, rng=random.Random(99), pq=pq)  # B restarts: keys lost
    msg_id, acts = a.send(B.address, "", b"after", line.now, deadline=30.0)
    line.act(0, acts)
    line.run(25.0, step=0.05)
    assert [m.data for m in line.of(2, MessageReceived)] == [b"before", b"after"]
    assert MessageDelivered(msg_id) in line.of(0, MessageDelivered)
    assert a.counters["no_answer_rekey"] >= 1
