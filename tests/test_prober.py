"""The prober against a hand-driven echoing peer on a hand clock."""

import heapq
import random

import pytest

from sporenet.protocols.base import Publish
from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.link.messages import Hello, Probe, ProbeAck
from sporenet.protocols.notices import LinkMeasured
from sporenet.protocols.link.prober import (DeclareDead, FrameFromPeer, LinkAdded, LinkRemoved, Prober,
                                       SendToPeer, link_cost)

PEER = b"P" * 32


class Echo:
    """A peer that acks probe number ``i`` after ``delay(i)`` seconds, or never if ``drop(i)``."""

    def __init__(self, prober, delay=lambda i: 0.05, drop=lambda i: False):
        self.prober, self.delay, self.drop = prober, delay, drop
        self.acks = []  # heap of (arrival, order, seq)
        self.probes = []  # send times
        self.measured, self.dead, self.now = [], [], 0.0

    def execute(self, actions):
        for act in actions:
            match act:
                case SendToPeer(msg=Probe(seq=seq)):
                    i = len(self.probes)
                    self.probes.append(self.now)
                    if not self.drop(i):
                        heapq.heappush(self.acks, (self.now + self.delay(i), i, seq))
                case Publish(message=LinkMeasured() as m):
                    self.measured.append((self.now, m))
                case DeclareDead():
                    self.dead.append((self.now, act))

    def run(self, until):
        while True:
            deadline = self.prober.next_deadline()
            ack_at = self.acks[0][0] if self.acks else None
            t = min(x for x in (deadline, ack_at, until + 1) if x is not None)
            if t > until:
                self.now = until
                return
            self.now = t
            if ack_at is not None and ack_at == t:
                _, _, seq = heapq.heappop(self.acks)
                self.execute(self.prober.handle(FrameFromPeer(PEER, ProbeAck(seq)), t))
            else:
                self.execute(self.prober.on_timer(t))


def start(seed=1, **kw):
    prober = Prober(rng=random.Random(seed), **kw)
    return prober


def test_first_probe_goes_out_when_the_link_is_added():
    p = start()
    (act,) = p.handle(LinkAdded(PEER), 10.0)
    assert isinstance(act, SendToPeer) and isinstance(act.msg, Probe) and act.node_id == PEER
    assert p.handle(LinkAdded(PEER), 10.0) == []  # idempotent


def test_probe_is_answered_immediately_even_for_unknown_link():
    p = start()
    assert p.handle(FrameFromPeer(b"Q" * 32, Probe(42)), 0.0) == [SendToPeer(b"Q" * 32, ProbeAck(42))]
    assert p.handle(FrameFromPeer(PEER, Hello(b"k" * 32, b"n" * 16)), 0.0) == []


def test_rtt_converges_to_a_constant_delay():
    p = start()
    e = Echo(p, delay=lambda i: 0.080)
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(30.0)
    last = e.measured[-1][1]
    assert last.rtt_ms == pytest.approx(80.0, rel=1e-9)
    assert last.jitter_ms < 0.5 and last.loss == 0.0
    assert last.samples == len(e.measured) >= 27
    assert p.stats(PEER).srtt == pytest.approx(0.080)


def test_rtt_follows_a_delay_change_smoothly():
    p = start()
    e = Echo(p, delay=lambda i: 0.020 if i < 10 else 0.120)
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(60.0)
    by_samples = {m.samples: m.rtt_ms for _, m in e.measured}
    assert by_samples[10] == pytest.approx(20.0)
    assert 20.0 < by_samples[11] < by_samples[12] < 120.0  # an EWMA, not a jump
    assert by_samples[max(by_samples)] == pytest.approx(120.0, rel=0.01)


def test_two_probes_lost_in_a_row_do_not_kill_a_link():
    for seed in range(20):
        p = start(seed)
        e = Echo(p, delay=lambda i: 0.3, drop=lambda i: i % 5 in (3, 4))
        e.execute(p.handle(LinkAdded(PEER), 0.0))
        e.run(60.0)
        assert e.dead == []


def test_jitter_reflects_delay_variation():
    p = start()
    e = Echo(p, delay=lambda i: 0.040 if i % 2 else 0.060)
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(40.0)
    m = e.measured[-1][1]
    assert m.rtt_ms == pytest.approx(50.0, abs=2.0)
    assert 5.0 < m.jitter_ms < 15.0


def test_probes_are_jittered_within_ten_percent_and_differ_by_seed():
    gaps = {}
    for seed in (1, 2):
        p = start(seed)
        e = Echo(p)
        e.execute(p.handle(LinkAdded(PEER), 0.0))
        e.run(50.0)
        gaps[seed] = [b - a for a, b in zip(e.probes, e.probes[1:])]
        assert all(0.9 - 1e-9 <= g <= 1.1 + 1e-9 for g in gaps[seed])
        assert max(gaps[seed]) - min(gaps[seed]) > 0.05  # not lockstep
    assert gaps[1] != gaps[2]


def test_loss_fraction_over_the_window():
    p = start(window=20)
    e = Echo(p, drop=lambda i: i % 4 == 3)  # every 4th probe lost
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(60.0)
    m = e.measured[-1][1]
    assert m.loss == pytest.approx(0.25, abs=0.05)
    assert m.cost == pytest.approx(link_cost(m.rtt_ms, m.loss))
    assert e.dead == []


def test_loss_recovers_when_the_window_slides_past_the_losses():
    p = start(window=10)
    e = Echo(p, drop=lambda i: 5 <= i < 7)
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(10.0)
    assert e.measured[-1][1].loss > 0.0
    e.run(30.0)
    assert e.measured[-1][1].loss == 0.0


def test_dead_link_is_declared_within_dead_after_of_the_last_ack():
    p = start(interval=1.0)
    e = Echo(p, drop=lambda i: i >= 5)
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(30.0)
    (when, act), = e.dead
    last_ack = max(t for t, _ in e.measured if _.loss == 0.0 and not _.suspect)
    assert act.node_id == PEER
    assert when == pytest.approx(last_ack + p.dead_after)
    assert p.dead_after == 4.0 and p.links() == [] and p.next_deadline() is None


def test_link_that_never_answers_is_dead_after_the_bound():
    p = start(interval=0.5)
    e = Echo(p, drop=lambda i: True)
    e.execute(p.handle(LinkAdded(PEER), 100.0))
    e.run(200.0)
    assert [w for w, _ in e.dead] == [pytest.approx(102.0)]
    assert e.measured == []  # no RTT sample, nothing to publish


def test_late_ack_is_ignored_and_counted_lost():
    p = start(probe_timeout=0.5, window=20)
    e = Echo(p, delay=lambda i: 0.9 if i == 3 else 0.1)
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(20.0)
    assert p.counters["late_acks"] == 1
    assert all(m.rtt_ms == pytest.approx(100.0) for _, m in e.measured)
    assert e.measured[-1][1].loss == pytest.approx(1 / 20)


def test_duplicate_and_unknown_acks_are_ignored():
    p = start()
    (probe,) = p.handle(LinkAdded(PEER), 0.0)
    seq = probe.msg.seq
    assert len(p.handle(FrameFromPeer(PEER, ProbeAck(seq)), 0.01)) == 1
    assert p.handle(FrameFromPeer(PEER, ProbeAck(seq)), 0.02) == []
    assert p.handle(FrameFromPeer(PEER, ProbeAck((seq + 7) % 2**32)), 0.02) == []
    assert p.handle(FrameFromPeer(b"Q" * 32, ProbeAck(seq)), 0.02) == []
    assert p.counters["late_acks"] == 2 and p.counters["stray_acks"] == 1


def test_removed_link_is_forgotten():
    p = start()
    p.handle(LinkAdded(PEER), 0.0)
    assert p.next_deadline() is not None
    p.handle(LinkRemoved(PEER), 0.5)
    assert p.next_deadline() is None and p.stats(PEER) is None and p.on_timer(5.0) == []


def test_sequence_numbers_wrap_at_u32():
    class Rng(random.Random):
        def getrandbits(self, k):
            return 2**32 - 1

    p = Prober(rng=Rng(1))
    (first,) = p.handle(LinkAdded(PEER), 0.0)
    (second,) = p.on_timer(p.next_deadline())
    assert (first.msg.seq, second.msg.seq) == (2**32 - 1, 0)


@pytest.mark.parametrize("rtt", [0.0, 1.0, 10.0, 100.0, 1000.0])
def test_cost_is_strictly_increasing_in_loss_below_the_cap(rtt):
    costs = [link_cost(rtt, loss / 100) for loss in range(0, 91)]
    assert all(a < b for a, b in zip(costs, costs[1:]))
    assert link_cost(rtt, 1.0) == link_cost(rtt, 0.9) < float("inf")


@pytest.mark.parametrize("loss", [0.0, 0.1, 0.5, 0.9])
def test_cost_is_strictly_increasing_in_rtt(loss):
    costs = [link_cost(rtt, loss) for rtt in (0.0, 0.1, 1.0, 5.0, 50.0, 500.0)]
    assert all(a < b for a, b in zip(costs, costs[1:]))


def test_cost_values():
    assert link_cost(9.0, 0.0) == 10.0  # rtt + 1 ms per hop
    assert link_cost(9.0, 0.5) == 40.0 + 500.0  # / 0.5^2, + 1000 ms x 0.5
    assert link_cost(9.0, 0.02) == pytest.approx(10.0 / 0.98 ** 2 + 20.0)
    # the price of loss does not shrink with the link: 2 % costs 20 ms on any link
    assert link_cost(0.5, 0.02) - link_cost(0.5, 0.0) > 20.0
    assert link_cost(100.0, 0.02) - link_cost(100.0, 0.0) > 20.0
    assert link_cost(0.0, 0.0) == 1.0


def test_bad_parameters_and_events_are_local_errors():
    with pytest.raises(LocalProtocolError):
        Prober(rng=random.Random(1), interval=0)
    with pytest.raises(LocalProtocolError):
        start().handle(object(), 0.0)


def test_a_silent_link_is_suspect_before_it_is_dead_and_recovers_on_an_ack():
    from sporenet.protocols.link.prober import SUSPECT_COST
    p = start()
    e = Echo(p, drop=lambda i: 10 <= i < 12)  # two probes in a row unanswered
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(30.0)
    suspect = [(t, m) for t, m in e.measured if m.suspect]
    assert len(suspect) >= 1 and p.counters["suspected"] == 1 and e.dead == []
    t_suspect, first = suspect[0]
    last_ack = max(t for t, m in e.measured if t < t_suspect and not m.suspect)
    assert t_suspect == pytest.approx(last_ack + 2.5)           # 2.5 intervals of silence
    assert first.cost == SUSPECT_COST and first.rtt_ms == pytest.approx(50.0)
    after = [m for t, m in e.measured if t > t_suspect and not m.suspect]
    assert after and after[0].cost == pytest.approx(link_cost(after[0].rtt_ms, after[0].loss))


def test_one_lost_probe_does_not_make_a_link_suspect():
    p = start()
    e = Echo(p, drop=lambda i: i % 10 == 5)                    # 10 % loss, never two in a row
    e.execute(p.handle(LinkAdded(PEER), 0.0))
    e.run(120.0)
    assert p.counters["suspected"] == 0 and not any(m.suspect for _, m in e.measured)
