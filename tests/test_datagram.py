"""The datagram connection protocol (``protocols/link/datagram.py``) over a simulated
network on a virtual clock: loss, duplication and reordering that a real loopback
seldom shows, restarts, strangers and floods."""

from __future__ import annotations

import heapq
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sporenet.protocols.link import datagram as dg

MAX_FRAME = 70_000


class Net:
    """Endpoints joined by a lossy, duplicating, reordering network; virtual time."""

    def __init__(self, seed: int = 1, loss: float = 0.0, dup: float = 0.0,
                 jitter: float = 0.0, delay: float = 0.001) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.loss, self.dup, self.jitter, self.delay = loss, dup, jitter, delay
        self.eps: dict[tuple, dg.DatagramEndpoint] = {}
        self.events: dict[tuple, list] = {}
        self.flight: list = []
        self.seq = itertools.count()
        self.ids = itertools.count(1)
        self.sent: list[tuple[tuple, tuple, bytes]] = []  # (src, dst, datagram)
        self.drop = None  # optional filter (src, dst, data) -> True to lose it

    def add(self, addr: tuple, **kw) -> dg.DatagramEndpoint:
        kw.setdefault("max_frame", MAX_FRAME)
        ep = dg.DatagramEndpoint(rng=random.Random(hash(addr) & 0xFFFF), new_id=lambda: next(self.ids),
                                 source_of=lambda a: a[0], **kw)
        self.eps[addr], self.events[addr] = ep, []
        return ep

    def _pump(self) -> None:
        for src, ep in self.eps.items():
            for dst, data in ep.transmit(self.now):
                self.sent.append((src, dst, data))
                if self.drop is not None and self.drop(src, dst, data):
                    continue
                if self.rng.random() < self.loss:
                    continue
                for _ in range(2 if self.rng.random() < self.dup else 1):
                    at = self.now + self.delay + self.rng.random() * self.jitter
                    heapq.heappush(self.flight, (at, next(self.seq), src, dst, data))
            self.events[src].extend(ep.events())

    def run(self, until: float, done=None) -> bool:
        """Advance to ``until`` (virtual seconds from now) or until ``done()``."""
        end = self.now + until
        while True:
            self._pump()
            if done is not None and done():
                return True
            due = [d for ep in self.eps.values() if (d := ep.next_deadline()) is not None]
            nxt = min(due + ([self.flight[0][0]] if self.flight else []), default=end)
            last = nxt >= end
            self.now = max(self.now, min(nxt, end))
            while self.flight and self.flight[0][0] <= self.now:
                _, _, src, dst, data = heapq.heappop(self.flight)
                if dst in self.eps:
                    self.eps[dst].receive(src, data, self.now)
            for ep in self.eps.values():
                ep.handle_timer(self.now)
            if last:
                self._pump()
                return done() if done is not None else False

    def of(self, addr: tuple, kind: type) -> list:
        return [e for e in self.events[addr] if isinstance(e, kind)]

    def frames(self, addr: tuple, conn_id: int) -> list[bytes]:
        return [e.frame for e in self.events[addr] if isinstance(e, dg.Received) and e.conn_id == conn_id]


A, B = ("10.0.0.1", 1000), ("10.0.0.2", 2000)


def pair(net: Net, **kw) -> tuple[dg.DatagramEndpoint, dg.DatagramEndpoint, int, int]:
    a, b = net.add(A, **kw), net.add(B, listening=True, **kw)
    ca = a.connect(B, net.now)
    assert net.run(30, lambda: net.of(A, dg.Opened) and net.of(B, dg.Opened)), net.events
    cb = net.of(B, dg.Opened)[0].conn_id
    b.confirm(cb)
    return a, b, ca, cb


@pytest.mark.parametrize("loss,dup,jitter", [(0.0, 0.0, 0.0), (0.2, 0.0, 0.0),
                                             (0.05, 0.1, 0.02), (0.3, 0.05, 0.01)])
def test_stream_frames_arrive_whole_and_in_order_over_a_bad_network(loss, dup, jitter):
    net = Net(seed=7, loss=loss, dup=dup, jitter=jitter)
    a, b, ca, cb = pair(net)
    rng = random.Random(3)
    sent = [rng.randbytes(rng.choice((1, 17, 1_399, 1_400, 1_401, 9_000, MAX_FRAME)))
            for _ in range(300)]
    back = [b"r%d" % i for i in range(300)]
    queue, i = list(sent), 0
    while queue or i < len(back):  # as fast as the send buffer takes them
        assert net.now < 300, (len(queue), i, a.conns and vars(a.conns[ca]).keys())
        while queue and a.send(ca, queue[0]):
            queue.pop(0)
        if i < len(back) and b.send(cb, back[i]):
            i += 1
        net.run(0.05)
    assert net.run(120, lambda: len(net.frames(B, cb)) == len(sent)
                   and len(net.frames(A, ca)) == len(back))
    assert net.frames(B, cb) == sent and net.frames(A, ca) == back
    if loss:
        assert a.counters["retransmits"] > 0
    assert not net.of(A, dg.Closed) and not net.of(B, dg.Closed)


def test_datagrams_are_sent_once_and_lost_ones_stay_lost():
    net = Net(seed=2, loss=0.1)
    a, b, ca, cb = pair(net)
    before = a.counters["retransmits"]
    for i in range(1_000):
        assert a.send_datagram(ca, b"d%d" % i)
    net.run(1)
    got = net.frames(B, cb)
    assert 850 < len(got) < 950  # ~10 % lost, none recovered
    assert set(got) <= {b"d%d" % i for i in range(1_000)}
    assert a.counters["retransmits"] == before
    assert not a.send_datagram(ca, b"x" * (a.mss + 100))  # does not fit one datagram
    assert a.counters["dgram_too_big"] == 1


def test_close_delivers_the_queue_then_the_reason_and_a_lost_final_ack_is_repeated():
    net = Net(seed=4, loss=0.15)
    a, b, ca, cb = pair(net)
    sent = [bytes([i + 1]) * 5_000 for i in range(100)]
    for f in sent:
        assert a.send(ca, f)
    a.close(ca, "done here", net.now)
    with pytest.raises(KeyError):
        a.send(ca, b"after close")
    assert net.run(60, lambda: net.of(A, dg.Closed) and net.of(B, dg.Closed))
    assert net.frames(B, cb) == sent
    (mine,), (theirs,) = net.of(A, dg.Closed), net.of(B, dg.Closed)
    assert (mine.reason, mine.broken) == ("done here", False)
    assert theirs.reason == "closed by peer: done here" and not theirs.broken
    assert not a.conns and not b.conns


def test_a_restarted_peer_resets_the_connection_it_no_longer_knows():
    net = Net()
    a, b, ca, cb = pair(net)
    net.add(B, listening=True)  # b restarts on the same address: a fresh endpoint
    assert a.send(ca, b"anyone there?")
    assert net.run(10, lambda: net.of(A, dg.Closed))
    (closed,) = net.of(A, dg.Closed)
    assert closed.broken and "reset by peer" in closed.reason and "restarted" in closed.reason
    # and a new dial to it works at once
    a.connect(B, net.now)
    assert net.run(10, lambda: len(net.of(A, dg.Opened)) == 2)


def test_a_silent_peer_is_declared_dead_and_a_dial_to_nobody_fails():
    net = Net()
    a, b, ca, cb = pair(net, dead_after=6.0)
    del net.eps[B]  # b vanishes without a word
    assert net.run(20, lambda: net.of(A, dg.Closed))
    (closed,) = net.of(A, dg.Closed)
    assert closed.broken and "silent" in closed.reason
    assert 6.0 <= net.now < 10.0
    cid = a.connect(("10.0.0.9", 9), net.now)
    assert net.run(10, lambda: net.of(A, dg.OpenFailed))
    assert net.of(A, dg.OpenFailed)[0].conn_id == cid and "no answer" in net.of(A, dg.OpenFailed)[0].reason


def test_a_paused_reader_stops_the_sender_and_a_lost_window_update_is_probed_for():
    net = Net()
    a, b, ca, cb = pair(net, send_buffer=1024 * 1024, window=64)
    b.pause(cb, True)
    accepted = 0
    while a.send(ca, b"p" * 60_000):
        accepted += 1
        net.run(0.01)
    assert accepted < 40 and a.conns[ca].drops == 1
    net.run(2)
    assert not net.frames(B, cb)
    # the window update on resume is lost: the sender's zero-window probe finds it open
    net.drop = lambda src, dst, data: src == B and data[0] == dg.ACK and data[10:12] != b"\0\0"
    b.pause(cb, False)
    net.run(0.01)
    net.drop = None
    assert net.run(30, lambda: len(net.frames(B, cb)) == accepted)
    assert a.send(ca, b"after")
    assert net.run(5, lambda: net.frames(B, cb)[-1:] == [b"after"])


def test_connections_waiting_for_their_hello_are_bounded_and_time_out():
    net = Net()
    b = net.add(B, listening=True, max_pending=8, max_pending_per_source=4, hello_timeout=3.0)
    attackers = [net.add(("10.0.1.1", 3000 + i)) for i in range(6)]
    for ep in attackers:
        ep.connect(B, net.now)
    net.run(0.5)
    assert b.pending == 4  # one source address: 4 at most
    assert b.counters["pending_evicted"] == 2
    others = [net.add((f"10.0.2.{i}", 4000)) for i in range(10)]
    for ep in others:
        ep.connect(B, net.now)
    net.run(0.5)
    assert b.pending == 8 and len(b.conns) == 8
    net.run(5)
    assert b.pending == 0 and not b.conns
    assert b.counters["handshake_timeouts"] == 8


def test_strangers_get_no_larger_answer_than_they_sent():
    net = Net()
    b = net.add(B, listening=True)
    stranger = ("10.0.3.3", 5)
    probes = [bytes([dg.CONNECT, 0, 0, 0, 7, dg.VERSION]) + bytes(dg.CONNECT_SIZE - 6),
              bytes([dg.CONNECT, 0, 0, 0, 8, 99]) + bytes(dg.CONNECT_SIZE - 6),
              bytes([dg.DATA]) + bytes(100),
              bytes([dg.ACK]) + bytes(30),
              bytes([dg.DGRAM]) + bytes(8),
              bytes([dg.RESET, 0, 0, 0, 1, 0])]
    for p in probes:
        net.sent.clear()
        b.receive(stranger, p, net.now)
        answers = b.transmit(net.now)
        assert sum(len(d) for _, d in answers) <= len(p), (p[:1], answers)
    b.receive(stranger, bytes([dg.CONNECT]) + bytes(10), net.now)  # short: not a connect
    assert b.counters["malformed"] == 1


def test_answers_to_a_spoofed_flood_are_rate_limited_and_a_real_dial_still_gets_in():
    net = Net()
    b = net.add(B, listening=True)
    rng = random.Random(1)
    answers = 0
    for i in range(2_000):  # one virtual second of strangers' data, from many "sources"
        b.receive((f"10.8.{i % 250}.{i // 250}", 9), bytes([dg.DATA]) + rng.randbytes(60),
                  net.now + i / 2_000)
        answers += len(b.transmit(net.now + i / 2_000))
    assert answers <= dg.ANSWER_BURST + dg.ANSWER_RATE + 1, answers
    assert b.counters["answers_suppressed"] >= 2_000 - answers - 1
    net.now += 1.0
    a = net.add(A)
    a.connect(B, net.now)
    assert net.run(5, lambda: net.of(A, dg.Opened))


def test_a_packet_from_the_wrong_address_is_ignored():
    net = Net()
    a, b, ca, cb = pair(net)
    token = b.conns[cb].token
    forged = bytes([dg.RESET]) + token.to_bytes(4, "big") + b"\0" + b"spoofed"
    b.receive(("10.6.6.6", 666), forged, net.now)
    assert b.counters["wrong_source"] == 1 and cb in b.conns
    assert a.send(ca, b"still up")
    assert net.run(2, lambda: net.frames(B, cb) == [b"still up"])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_garbage_never_raises_and_never_harms_a_connection(junk):
    net = Net()
    a, b, ca, cb = pair(net)
    b.receive(A, junk, net.now)
    b.receive(("10.9.9.9", 9), junk, net.now)
    b.transmit(net.now)
    if cb in b.conns:
        assert a.send(ca, b"ok")
        assert net.run(2, lambda: b"ok" in net.frames(B, cb))


# ----- chunked frames (the data path's superpackets) ------------------------------------

def _send_chunked(net: Net, ep: dg.DatagramEndpoint, conn_id: int, frames: list[bytes],
                  per_step: int = 8) -> None:
    for i in range(0, len(frames), per_step):
        for frame in frames[i:i + per_step]:
            assert ep.send_chunked(conn_id, frame, net.now)
        net.run(0.0005)


@pytest.mark.parametrize("loss,dup,jitter", [(0.0, 0.0, 0.0), (0.02, 0.0, 0.0),
                                             (0.1, 0.05, 0.0005)])
def test_chunked_frames_arrive_whole_once_each_and_lost_chunks_are_repaired(loss, dup, jitter):
    net = Net(seed=11, loss=loss, dup=dup, jitter=jitter)
    a, b, ca, cb = pair(net)
    rng = random.Random(5)
    sent = [i.to_bytes(2, "big") + rng.randbytes(rng.choice((0, 100, a.chunk_size - 2,
                                                            a.chunk_size, 20_000, 62_000)))
            for i in range(400)]
    _send_chunked(net, a, ca, sent)
    net.run(3)
    got = net.frames(B, cb)
    assert len(got) == len(set(got))  # never twice, whatever the network duplicated
    assert set(got) <= set(sent)
    if loss <= 0.02:  # at 2 % about 60 % of the 62 KB frames lose a chunk in flight
        assert sorted(got) == sorted(sent)
    else:
        assert len(got) >= 0.98 * len(sent), (len(got), b.counters)
    if loss:
        assert a.counters["chunks_repaired"] > 0 and b.counters["nacks_sent"] > 0
    else:
        assert got == sent and b.counters["nacks_sent"] == 0
    assert a.counters["retransmits"] == 0  # the stream was not used


def test_a_chunked_frame_is_one_batch_of_equal_datagrams_but_the_last():
    net = Net()
    a, b, ca, cb = pair(net)
    frame = random.Random(1).randbytes(62_100)
    assert a.send_chunked(ca, frame, net.now)
    out, batches = a.transmit_batches(net.now)
    assert out == [] and len(batches) == 1
    addr, data, stride = batches[0]
    assert addr == B and stride == a.mss + dg.DATA_HEADER  # as long as a full DATA packet
    assert len(data) == len(frame) + -(-len(frame) // a.chunk_size) * dg.CHUNK_HEADER
    assert len(data) <= 65_000  # one UDP_SEGMENT send
    for i in range(0, len(data), stride):
        b.receive(A, memoryview(data)[i:i + stride], net.now)
    assert [e.frame for e in b.events() if isinstance(e, dg.Received)] == [frame]


def test_a_frame_over_64_chunks_is_refused_and_a_closed_connection_takes_none():
    net = Net()
    a, b, ca, cb = pair(net)
    assert not a.send_chunked(ca, b"x" * (dg.MAX_CHUNKS * a.chunk_size + 1), net.now)
    assert a.counters["chunked_too_big"] == 1
    assert a.send_chunked(ca, b"x" * (dg.MAX_CHUNKS * a.chunk_size), net.now)
    assert not a.send_chunked(999, b"x", net.now)


def test_frames_lost_whole_are_asked_for_by_their_id_and_repaired():
    net = Net()
    a, b, ca, cb = pair(net)
    small = [b"p%d" % i for i in range(20)]
    unlucky = {3, 4, 5, 6, 7}  # one-chunk frames the network loses entirely, once each

    def drop(src, dst, d: bytes) -> bool:
        if d[0] != dg.CHUNK:
            return False
        fid = int.from_bytes(d[5:9], "big")
        if fid in unlucky:
            unlucky.discard(fid)
            return True
        return False
    net.drop = drop
    _send_chunked(net, a, ca, small, per_step=1)
    net.run(1)
    assert sorted(net.frames(B, cb)) == sorted(small), b.counters
    assert a.counters["chunks_repaired"] == 5 and not unlucky


def test_a_receiver_holds_few_incomplete_frames_and_a_sender_holds_little_to_repair():
    net = Net()
    a, b, ca, cb = pair(net)
    token = b.conns[cb].token
    # a peer that starts 500 frames and finishes none: B keeps at most MAX_PARTIAL of them
    for fid in range(500):
        b.receive(A, dg._CHUNK.pack(dg.CHUNK, token, fid, 0, 64) + b"z" * 1_000, net.now)
    assert len(b.conns[cb].partial) <= dg.MAX_PARTIAL
    assert b.counters["chunked_lost"] >= 500 - dg.MAX_PARTIAL - 1
    # a sender keeps at most HOLD_BYTES of what it sent, and nothing older than HOLD_TIME
    frame = b"y" * 60_000
    for _ in range(400):
        assert a.send_chunked(ca, frame, net.now)
    assert a.conns[ca].held_bytes <= dg.HOLD_BYTES
    net.now += dg.HOLD_TIME + 0.1
    assert a.send_chunked(ca, b"late", net.now)
    assert len(a.conns[ca].held) == 1


def test_chunks_before_the_link_hello_are_dropped_unheld():
    net = Net()
    a, b = net.add(A), net.add(B, listening=True)
    ca = a.connect(B, net.now)
    assert net.run(5, lambda: net.of(A, dg.Opened) and net.of(B, dg.Opened))
    cb = net.of(B, dg.Opened)[0].conn_id  # not confirmed: the link hello has not run
    _send_chunked(net, a, ca, [b"q" * 5_000] * 4)
    net.run(0.5)
    assert net.frames(B, cb) == [] and not b.conns[cb].partial
    assert b.counters["chunks_unconfirmed"] > 0


def test_frame_ids_wrap_around_and_frames_across_the_wrap_are_repaired():
    net = Net()
    a, b, ca, cb = pair(net)
    a.conns[ca].tx_id = 2**32 - 10
    unlucky = {2**32 - 2, 2**32 - 1, 0, 1}  # chunk 1 of these is lost once

    def drop(src, dst, d: bytes) -> bool:
        fid = int.from_bytes(d[5:9], "big")
        if d[0] == dg.CHUNK and int.from_bytes(d[9:11], "big") == 1 and fid in unlucky:
            unlucky.discard(fid)
            return True
        return False
    net.drop = drop
    frames = [b"w%d" % i * 3_000 for i in range(30)]
    _send_chunked(net, a, ca, frames, per_step=2)
    net.run(2)
    assert sorted(net.frames(B, cb)) == sorted(frames), b.counters
    assert not unlucky and a.counters["chunks_repaired"] == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([dg.CHUNK, dg.NACK]))
def test_garbage_chunks_and_nacks_never_raise_and_never_harm_a_connection(junk, kind):
    net = Net()
    a, b, ca, cb = pair(net)
    token = b.conns[cb].token
    b.receive(A, bytes([kind]) + token.to_bytes(4, "big") + junk, net.now)
    b.handle_timer(net.now + 1)
    b.transmit(net.now)
    assert cb in b.conns
    assert a.send_chunked(ca, b"ok" * 2_000, net.now)
    assert net.run(2, lambda: b"ok" * 2_000 in net.frames(B, cb))
