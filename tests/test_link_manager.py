"""The link manager: link table plus dialer, two managers wired back to back, no sockets.

A small in-memory network carries the managers' actions: ``Dial`` opens a
connection to the node listening at that endpoint (or fails), ``SendFrame`` queues a
frame to the far end, ``CloseConnection`` closes both ends. Each end of each
connection is a FIFO of events; ``flush`` may interleave different FIFOs in a seeded
random order. The clock is advanced by hand to each manager's ``next_deadline()``.
"""

import itertools
import random
from collections import defaultdict, deque

import pytest

from sporenet.protocols import wire
from sporenet.protocols.base import Publish
from sporenet.protocols.link.dialer import Dial
from sporenet.protocols.identity import Identity
from sporenet.protocols.link.table import (BytesReceived, CloseConnection, ConnectionLost,
                                     ConnectionOpened, SendFrame)
from sporenet.protocols.link.manager import DialFailed, LinkManager
from sporenet.protocols.link.messages import CloseCode, Hello
from sporenet.protocols.notices import LinkCounters, PeerDown, PeerUp

IDS = {name: Identity(bytes([i + 1]) * 32) for i, name in enumerate("abm")}


def ep(name):
    return f"mem://{name}"


class Net:
    """Link managers joined by in-memory connections, under one hand-advanced clock."""

    def __init__(self, peers, *, seed=None, listening=None):
        self.now = 0.0
        self.mgrs = {n: LinkManager(IDS[n], peers=list(p), rng=random.Random(i), now=0.0,
                                    listen_endpoint=ep(n), name=n)
                     for i, (n, p) in enumerate(peers.items())}
        self.listening = set(self.mgrs if listening is None else listening)
        self.rng = random.Random(seed) if seed is not None else None
        self.peer_of = {}  # (side, conn) -> (side, conn) while both ends are open
        self.chans = defaultdict(deque)  # (side, key) -> events for that side, in order
        self.log = defaultdict(list)  # side -> [(now, action)]
        self.conn_ids = itertools.count(1)
        self.nonces = itertools.count(1)
        self.held = set()  # channels flush leaves alone (a slow path), until released

    # -- executing actions --------------------------------------------------------

    def nonce(self):
        return next(self.nonces).to_bytes(16, "big")

    def execute(self, side, actions):
        for act in actions:
            self.log[side].append((self.now, act))
            match act:
                case Dial(endpoint=target):
                    self.dial(side, target)
                case SendFrame(conn=conn, msg=msg):
                    far = self.peer_of.get((side, conn))
                    if far is not None:
                        self.chans[far].append(BytesReceived(far[1], wire.encode_frame(msg)))
                case CloseConnection(conn=conn):
                    # Like the carrier: the closer hears Disconnected at once and drops
                    # what it had not read; the far end reads what was sent, then EOF.
                    far = self.peer_of.pop((side, conn), None)
                    if far is not None:
                        del self.peer_of[far]
                        self.chans[far].append(ConnectionLost(far[1], "closed by peer"))
                    self.chans[(side, conn)] = deque([ConnectionLost(conn, "closed")])

    def dial(self, side, target):
        name = target.removeprefix("mem://")
        if name not in self.listening:
            self.chans[(side, "dial")].append(DialFailed(target, "connection refused"))
            return
        mine, theirs = (side, next(self.conn_ids)), (name, next(self.conn_ids))
        self.peer_of[mine], self.peer_of[theirs] = theirs, mine
        self.chans[mine].append(ConnectionOpened(mine[1], True, target, self.nonce()))
        self.chans[theirs].append(ConnectionOpened(theirs[1], False, f"mem://{side}/in{mine[1]}",
                                                   self.nonce()))

    def open_raw(self, side):
        """An inbound connection whose far end the test writes by hand; returns its id."""
        conn = next(self.conn_ids)
        self.feed(side, ConnectionOpened(conn, False, "mem://stranger", self.nonce()))
        return conn

    def feed(self, side, event):
        actions = self.mgrs[side].handle(event, self.now)
        self.execute(side, actions)
        return actions

    def break_link(self, side, conn):
        """The network drops a connection: both ends hear ConnectionLost, nothing else."""
        far = self.peer_of.pop((side, conn))
        del self.peer_of[far]
        self.chans[(side, conn)].append(ConnectionLost(conn, "reset"))
        self.chans[far].append(ConnectionLost(far[1], "reset"))

    def flush(self):
        while True:
            ready = [k for k, q in self.chans.items() if q and k not in self.held]
            if not ready:
                return
            key = self.rng.choice(ready) if self.rng else ready[0]
            self.feed(key[0], self.chans[key].popleft())

    # -- the clock ------------------------------------------------------------------

    def run_until(self, t):
        self.flush()
        while True:
            dues = [d for d in (m.next_deadline() for m in self.mgrs.values()) if d is not None]
            if not dues or min(dues) > t:
                break
            self.now = max(self.now, min(dues))
            for side, m in self.mgrs.items():
                d = m.next_deadline()
                if d is not None and d <= self.now:
                    self.execute(side, m.on_timer(self.now))
            self.flush()
        self.now = max(self.now, t)

    # -- what happened --------------------------------------------------------------

    def actions(self, side, kind):
        return [(t, a) for t, a in self.log[side] if isinstance(a, kind)]

    def dials(self, side):
        return [t for t, _ in self.actions(side, Dial)]

    def notices(self, side, kind=(PeerUp, PeerDown)):
        return [a.message for _, a in self.log[side]
                if isinstance(a, Publish) and isinstance(a.message, kind)]

    def peers(self, side):
        return {p.node_id for p in self.mgrs[side].table.peers()}


def assert_linked(net, a, b):
    assert net.peers(a) == {IDS[b].node_id} and net.peers(b) == {IDS[a].node_id}
    (pa,), (pb,) = net.mgrs[a].table.peers(), net.mgrs[b].table.peers()
    assert pa.outbound != pb.outbound  # the two ends of one connection
    assert net.mgrs[a].table.connections() == 1 and net.mgrs[b].table.connections() == 1


def test_configured_peer_is_dialled_at_start():
    m = LinkManager(IDS["a"], peers=[ep("b")], rng=random.Random(1), now=3.0,
                    listen_endpoint=ep("a"))
    assert m.next_deadline() == 3.0
    assert m.on_timer(3.0) == [Dial(ep("b"))]
    assert m.next_deadline() is None  # waiting for the dial's outcome
    assert m.on_timer(10.0) == []


def test_no_peers_no_dials():
    m = LinkManager(IDS["a"], peers=[], rng=random.Random(1), now=0.0)
    assert m.next_deadline() is None and m.on_timer(100.0) == []


def test_failed_dial_is_retried_with_growing_backoff():
    net = Net({"a": [ep("b")], "b": []}, listening={"a"})
    net.run_until(20.0)
    times = net.dials("a")
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
    assert times[0] == 0.0
    assert 0.4 <= gaps[0] <= 0.6  # min backoff 0.5 s +-20%
    assert all(g2 > g1 for g1, g2 in itertools.pairwise(gaps))  # doubling beats the jitter
    assert 5 <= len(times) <= 7  # 0.5 + 1 + 2 + 4 + 8 = 15.5 s (+-20%)
    assert net.mgrs["a"].table.connections() == 0 and net.notices("a") == []

    # b comes up: the next scheduled dial makes the link, and dialling stops.
    net.listening.add("b")
    net.run_until(200.0)
    assert_linked(net, "a", "b")
    after = [t for t in net.dials("a") if t > 20.0]
    assert len(after) == 1 and after[0] <= 20.0 + 16 * 1.2
    assert net.notices("a") == [PeerUp(IDS["b"].node_id, IDS["b"].public_key,
                                       str(IDS["b"].address), ep("b"), True, "b")]
    assert net.mgrs["a"].next_deadline() is None


def test_link_up_means_no_more_dials():
    net = Net({"a": [ep("b")], "b": []})
    net.run_until(300.0)
    assert net.dials("a") == [0.0] and net.dials("b") == []
    assert_linked(net, "a", "b")
    assert [type(n) for n in net.notices("a")] == [PeerUp]
    assert [type(n) for n in net.notices("b")] == [PeerUp]
    assert all(v == 0 for v in net.mgrs["a"].table.counters.values())
    assert net.mgrs["a"].next_deadline() is None and net.mgrs["b"].next_deadline() is None


def the_conn(net, side):
    (conn,) = [c for (s, c) in net.peer_of if s == side]
    return conn


@pytest.mark.parametrize("how", ["network", "peer_closes", "we_close"])
def test_lost_link_is_redialled(how):
    net = Net({"a": [ep("b")], "b": []})
    net.run_until(10.0)
    assert_linked(net, "a", "b")
    if how == "network":
        net.break_link("a", the_conn(net, "a"))
    else:  # the closer's prober declared the other end dead
        side, other = ("b", "a") if how == "peer_closes" else ("a", "b")
        m = net.mgrs[side]
        actions = m.table.disconnect(IDS[other].node_id, CloseCode.DEAD, "dead")
        net.execute(side, m.after(actions, net.now))
    net.flush()
    assert net.peers("a") == set() and net.peers("b") == set()
    due = net.mgrs["a"].next_deadline()
    assert due is not None and 10.0 < due <= 10.0 + 0.6  # soon, with backoff
    net.run_until(100.0)
    assert net.dials("a") == [0.0, due]
    assert net.dials("b") == []
    assert_linked(net, "a", "b")
    assert [type(n) for n in net.notices("a")] == [PeerUp, PeerDown, PeerUp]


def test_link_flapping_backs_off():
    net = Net({"a": [ep("b")], "b": []})
    net.run_until(1.0)
    for _ in range(5):
        net.break_link("a", the_conn(net, "a"))
        net.run_until(net.now + 40.0)
        assert_linked(net, "a", "b")
    times = net.dials("a")
    assert len(times) == 6
    # Each loss right after the redial: the gaps after each loss keep growing.
    losses = [1.0 + 40.0 * i for i in range(5)]
    delays = [t - lost for t, lost in zip(times[1:], losses)]
    assert all(d2 > d1 for d1, d2 in itertools.pairwise(delays))


def test_stable_link_resets_backoff():
    net = Net({"a": [ep("b")], "b": []})
    net.run_until(1.0)
    for _ in range(3):  # quick losses grow the backoff
        net.break_link("a", the_conn(net, "a"))
        net.run_until(net.now + 10.0)
    net.run_until(net.now + 100.0)  # up for longer than stable_after (60 s)
    lost = net.now
    net.break_link("a", the_conn(net, "a"))
    net.flush()
    assert net.mgrs["a"].next_deadline() - lost <= 0.6


@pytest.mark.parametrize("seed", range(40))
def test_simultaneous_dial_settles_on_one_link_without_redial_loop(seed):
    net = Net({"a": [ep("b")], "b": [ep("a")]}, seed=seed)
    net.run_until(60.0)
    assert_linked(net, "a", "b")
    # Both dialled at once; the tie-break closed one connection, and no one redialled.
    assert net.dials("a") == [0.0] and net.dials("b") == [0.0]
    dups = net.mgrs["a"].table.counters["duplicates"] + net.mgrs["b"].table.counters["duplicates"]
    assert dups >= 1
    for side in "ab":
        ups = net.notices(side)
        assert [type(n) for n in ups] == [PeerUp]
        assert net.mgrs[side].next_deadline() is None
    # The link that stayed is the one the lower node id dialled.
    low = min("ab", key=lambda n: IDS[n].node_id)
    (info,) = net.mgrs[low].table.peers()
    assert info.outbound


def bridging(before, after, actions):
    """The peer closed our live link as a duplicate, and the link it kept is not up here
    yet: the peer left ``peers()`` without a PeerDown (the table waits for the successor)."""
    return before and not after and not any(
        isinstance(a, Publish) and isinstance(a.message, PeerDown) for a in actions)


def run_with_slow_successor(seed, hold):
    """Simultaneous dial; on the first side the peer bridges, hold every event on its way
    to that side for ``hold`` seconds. Returns the net and that side (or None)."""
    net = Net({"a": [ep("b")], "b": [ep("a")]}, seed=seed)
    feed, hit = net.feed, []

    def slow_feed(side, event):
        before = net.peers(side)
        actions = feed(side, event)
        if not hit and bridging(before, net.peers(side), actions):
            hit.append(side)
            net.held |= {k for k in net.chans if k[0] == side}
        return actions

    net.feed = slow_feed
    net.run_until(hold)
    net.held.clear()
    net.run_until(120.0)
    return net, (hit[0] if hit else None)


def test_slow_successor_after_duplicate_close_causes_no_redial():
    """The peer closed our live link as a duplicate; the link it kept is still handshaking
    on our side (a slow path) for longer than the redial backoff. No dial while we wait."""
    seen = 0
    for seed in range(40):
        net, side = run_with_slow_successor(seed, hold=3.0)  # > backoff, < 5 s timeout
        assert_linked(net, "a", "b")
        if side is not None:
            seen += 1
            assert (net.dials("a"), net.dials("b")) == ([0.0], [0.0]), seed
            assert [type(n) for n in net.notices(side)] == [PeerUp]
    assert seen >= 5


def test_successor_that_never_comes_ends_in_peer_down_and_a_redial():
    seen = 0
    for seed in range(40):
        net, side = run_with_slow_successor(seed, hold=8.0)  # > 5 s handshake timeout
        assert_linked(net, "a", "b")
        if side is not None:
            seen += 1
            assert [type(n) for n in net.notices(side)] == [PeerUp, PeerDown, PeerUp]
            assert len(net.dials(side)) <= 3 and len(net.dials("b" if side == "a" else "a")) <= 3
    assert seen >= 5


@pytest.mark.parametrize("seed", range(20))
def test_simultaneous_dial_then_losses_stay_bounded(seed):
    """Links dropped by the network again and again: one link each time, dials bounded."""
    net = Net({"a": [ep("b")], "b": [ep("a")]}, seed=seed)
    net.run_until(1.0)
    for _ in range(4):
        net.break_link("a", the_conn(net, "a"))
        net.run_until(net.now + 30.0)
        assert_linked(net, "a", "b")
    for side in "ab":
        assert len(net.dials(side)) <= 5  # one at start, at most one per loss
        kinds = [type(n) for n in net.notices(side)]
        assert kinds == [PeerUp] + [PeerDown, PeerUp] * 4


def test_counters_change_publishes_link_counters():
    net = Net({"a": [], "b": []})
    conn = net.open_raw("a")
    actions = net.feed("a", BytesReceived(conn, b"\x01"))  # a truncated frame header
    (pub,) = [a.message for a in actions if isinstance(a, Publish)]
    assert isinstance(pub, LinkCounters)
    assert pub.counters["malformed"] == 1
    assert set(pub.counters) == set(net.mgrs["a"].table.counters)
    assert any(isinstance(a, CloseConnection) for a in actions)

    # Nothing changed: no new notice.
    conn2 = net.open_raw("a")
    m = IDS["m"]
    hello = wire.encode_frame(Hello(m.public_key, b"\x07" * 16))
    actions = net.feed("a", BytesReceived(conn2, hello))
    assert not any(isinstance(a, Publish) for a in actions)

    # A handshake timeout is a counter too, and it comes from on_timer.
    assert net.mgrs["a"].next_deadline() == 5.0
    net.run_until(5.0)
    pubs = net.notices("a", LinkCounters)  # one per change, none for the hello
    assert [p.counters["handshake_timeouts"] for p in pubs] == [0, 1]
    assert pubs[-1].counters["malformed"] == 1


def test_duplicate_is_counted_and_published():
    net = Net({"a": [ep("b")], "b": [ep("a")]}, seed=3)
    net.run_until(10.0)
    total = 0
    for side in "ab":
        pubs = net.notices(side, LinkCounters)
        dup = net.mgrs[side].table.counters["duplicates"]
        total += dup
        if dup:
            assert pubs and pubs[-1].counters["duplicates"] == dup
        assert pubs == [] or pubs[-1].counters == net.mgrs[side].table.counters
    assert total >= 1
