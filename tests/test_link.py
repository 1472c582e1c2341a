"""The link table: signed hello between two tables wired back to back, no sockets."""

import random
from collections import defaultdict, deque

import pytest

from sporenet.protocols import wire
from sporenet.protocols.base import Publish
from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.identity import Identity
from sporenet.protocols.link.table import (BytesReceived, CloseConnection, ConnectionLost,
                                     ConnectionOpened, DeliverFrame, LinkTable, SendFrame)
from sporenet.protocols.link.messages import Close, CloseCode, Hello, HelloProof, Probe
from sporenet.protocols.notices import PeerDown, PeerUp

IDS = {name: Identity(bytes([i + 1]) * 32) for i, name in enumerate("abcm")}


def nonce(tag: int) -> bytes:
    return bytes([tag]) * 16


class Pump:
    """Carries frames between link tables over in-memory connections.

    Each direction of each connection is a FIFO (carriers keep order); ``flush``
    may interleave different directions in a seeded random order.
    """

    def __init__(self, *names, rng=None):
        self.tables = {n: LinkTable(IDS[n], listen_endpoint=f"mem://{n}", name=n) for n in names}
        self.peer_of = {}  # (side, conn) -> (side, conn)
        self.queues = defaultdict(deque)  # destination (side, conn) -> frames (None = lost)
        self.log = defaultdict(list)
        self.rng = rng

    def connect(self, a, conn_a, b, conn_b, now=0.0):
        self.peer_of[(a, conn_a)], self.peer_of[(b, conn_b)] = (b, conn_b), (a, conn_a)
        self.run(a, ConnectionOpened(conn_a, True, f"mem://{b}", nonce(conn_a)), now)
        self.run(b, ConnectionOpened(conn_b, False, f"mem://{a}/in", nonce(conn_b)), now)

    def run(self, side, event, now=0.0):
        self.execute(side, self.tables[side].handle(event, now))

    def execute(self, side, actions):
        for act in actions:
            self.log[side].append(act)
            match act:
                case SendFrame(conn=conn, msg=msg):
                    if (side, conn) in self.peer_of:
                        self.queues[self.peer_of[(side, conn)]].append(wire.encode_frame(msg))
                case CloseConnection(conn=conn):
                    other = self.peer_of.pop((side, conn), None)
                    if other is not None:
                        self.peer_of.pop(other)
                        self.queues[other].append(None)

    def inject(self, side, conn, frame, now=0.0):
        self.run(side, BytesReceived(conn, frame), now)

    def flush(self, now=0.0):
        while any(self.queues.values()):
            ready = [dst for dst, q in self.queues.items() if q]
            dst = self.rng.choice(ready) if self.rng else ready[0]
            frame = self.queues[dst].popleft()
            side, conn = dst
            ev = ConnectionLost(conn, "carrier closed") if frame is None else BytesReceived(conn, frame)
            self.run(side, ev, now)

    def notices(self, side, kind=(PeerUp, PeerDown)):
        return [a.message for a in self.log[side]
                if isinstance(a, Publish) and isinstance(a.message, kind)]

    def sent(self, side, kind):
        return [a.msg for a in self.log[side] if isinstance(a, SendFrame) and isinstance(a.msg, kind)]

    def closes(self, side):
        return [a for a in self.log[side] if isinstance(a, CloseConnection)]


def up_pair():
    p = Pump("a", "b")
    p.connect("a", 1, "b", 2)
    p.flush()
    return p


def test_handshake_brings_both_peers_up():
    p = up_pair()
    (up_b,) = p.notices("a")
    (up_a,) = p.notices("b")
    assert up_b == PeerUp(IDS["b"].node_id, IDS["b"].public_key, str(IDS["b"].address),
                          "mem://b", True, "b")
    assert up_a.node_id == IDS["a"].node_id and up_a.outbound is False
    (info,) = p.tables["a"].peers()
    assert (info.node_id, info.listen_endpoint, info.name, info.since) == (
        IDS["b"].node_id, "mem://b", "b", 0.0)
    assert all(v == 0 for v in p.tables["a"].counters.values())
    assert p.tables["a"].next_deadline() is None


def test_frames_of_other_protocols_flow_between_authenticated_peers():
    p = up_pair()
    p.execute("a", p.tables["a"].send_to(IDS["b"].node_id, Probe(7)))
    p.flush()
    assert [a for a in p.log["b"] if isinstance(a, DeliverFrame)] == [
        DeliverFrame(IDS["a"].node_id, Probe(7))]


def test_send_to_unknown_peer_is_dropped_and_link_frames_are_refused():
    t = LinkTable(IDS["a"])
    assert t.send_to(IDS["b"].node_id, Probe(1)) == []
    assert t.counters["send_dropped"] == 1
    with pytest.raises(LocalProtocolError):
        t.send_to(IDS["b"].node_id, Close(0))


def attacker_session(p, side="a", conn=1, now=0.0):
    """``side`` gets an inbound connection whose far end the test writes by hand."""
    p.run(side, ConnectionOpened(conn, False, "mem://attacker", nonce(conn)), now)


def assert_closed(p, side, code, counter):
    (close,) = p.closes(side)
    assert close.code == code
    assert p.sent(side, Close)[-1].code == code  # the Close frame went out first
    assert p.tables[side].counters[counter] == 1
    assert p.notices(side) == [] and p.tables[side].peers() == []
    assert p.tables[side].connections() == 0


def test_bad_signature_is_refused():
    p = Pump("a")
    attacker_session(p)
    m = IDS["m"]
    p.inject("a", 1, wire.encode_frame(Hello(m.public_key, nonce(9))))
    p.inject("a", 1, wire.encode_frame(HelloProof(m.sign(b"something else"))))
    assert_closed(p, "a", CloseCode.AUTH_FAILED, "auth_failed")


def test_proof_replayed_from_another_session_is_refused():
    p = up_pair()  # session 1: record what b sent a
    hello_b, proof_b = p.sent("b", Hello)[0], p.sent("b", HelloProof)[0]
    q = Pump("a")
    attacker_session(q, conn=5)  # session 2: a fresh nonce from a
    q.inject("a", 5, wire.encode_frame(hello_b))
    q.inject("a", 5, wire.encode_frame(proof_b))
    assert_closed(q, "a", CloseCode.AUTH_FAILED, "auth_failed")


def test_proof_made_for_another_receiver_is_refused():
    # m signs a valid transcript, but for receiver c, then shows it to a.
    p = Pump("a")
    attacker_session(p)
    m, c = IDS["m"], IDS["c"]
    from sporenet.protocols.link.messages import hello_transcript
    proof = m.sign(hello_transcript(m.public_key, nonce(9), c.public_key, nonce(1)))
    p.inject("a", 1, wire.encode_frame(Hello(m.public_key, nonce(9))))
    p.inject("a", 1, wire.encode_frame(HelloProof(proof)))
    assert_closed(p, "a", CloseCode.AUTH_FAILED, "auth_failed")


@pytest.mark.parametrize("frame", [b"", b"\x01", b"\x02\x01" + b"\0" * 48,
                                   b"\x01\x01" + b"\0" * 20, b"\xde\xad\xbe\xef" * 8])
def test_garbage_bytes_close_the_connection(frame):
    p = Pump("a")
    attacker_session(p)
    p.inject("a", 1, frame)
    assert_closed(p, "a", CloseCode.PROTOCOL_ERROR, "malformed")


def test_oversize_frame_closes_the_connection():
    p = Pump("a")
    attacker_session(p)
    p.inject("a", 1, b"\x01\x03" + b"\0" * wire.MAX_FRAME_SIZE)
    assert_closed(p, "a", CloseCode.PROTOCOL_ERROR, "malformed")


@pytest.mark.parametrize("first", [Probe(1), HelloProof(b"\0" * 64)])
def test_frame_before_hello_closes_the_connection(first):
    p = Pump("a")
    attacker_session(p)
    p.inject("a", 1, wire.encode_frame(first))
    assert_closed(p, "a", CloseCode.PROTOCOL_ERROR, "protocol_errors")


def test_unknown_type_before_handshake_is_a_protocol_error():
    p = Pump("a")
    attacker_session(p)
    p.inject("a", 1, bytes([wire.VERSION, 0xEE, 1, 2]))
    assert_closed(p, "a", CloseCode.PROTOCOL_ERROR, "protocol_errors")


def test_self_connect_is_closed():
    p = Pump("a")
    p.connect("a", 1, "a", 2)
    p.flush()
    codes = {c.code for c in p.closes("a")}
    assert codes == {CloseCode.SELF_CONNECT}
    assert p.tables["a"].counters["self_connects"] >= 1
    assert p.notices("a") == [] and p.tables["a"].connections() == 0


def test_handshake_timeout():
    p = Pump("a")
    attacker_session(p, now=10.0)
    t = p.tables["a"]
    assert t.next_deadline() == 15.0
    assert t.on_timer(14.9) == []
    p.execute("a", t.on_timer(15.0))
    assert_closed(p, "a", CloseCode.HANDSHAKE_TIMEOUT, "handshake_timeouts")
    assert t.next_deadline() is None


def test_unknown_type_from_peer_is_counted_and_link_stays_up():
    p = up_pair()
    p.inject("a", 1, bytes([wire.VERSION, 0xEE]) + b"future")
    assert p.tables["a"].counters["unknown_type"] == 1
    assert len(p.tables["a"].peers()) == 1 and p.closes("a") == []
    p.inject("a", 1, wire.encode_frame(Probe(3)))
    assert p.log["a"][-1] == DeliverFrame(IDS["b"].node_id, Probe(3))


def test_malformed_frame_from_peer_drops_the_peer():
    p = up_pair()
    p.inject("a", 1, b"\x01\x03\x00")
    p.flush()
    assert [type(n) for n in p.notices("a")] == [PeerUp, PeerDown]
    (down,) = p.notices("b", PeerDown)
    assert "PROTOCOL_ERROR" in down.reason


def test_hello_twice_is_a_protocol_error():
    p = up_pair()
    p.inject("a", 1, wire.encode_frame(p.sent("b", Hello)[0]))
    assert p.closes("a")[0].code == CloseCode.PROTOCOL_ERROR
    assert isinstance(p.notices("a")[-1], PeerDown)


def test_disconnect_closes_and_both_sides_see_peer_down():
    p = up_pair()
    p.execute("a", p.tables["a"].disconnect(IDS["b"].node_id, CloseCode.DEAD, "no acks"))
    p.flush()
    assert p.notices("a")[-1] == PeerDown(IDS["b"].node_id, "no acks")
    down = p.notices("b")[-1]
    assert isinstance(down, PeerDown) and "DEAD" in down.reason and "no acks" in down.reason
    assert p.tables["a"].peers() == p.tables["b"].peers() == []
    assert p.tables["a"].disconnect(IDS["b"].node_id, CloseCode.DEAD, "again") == []


def test_connection_lost_publishes_peer_down():
    p = up_pair()
    p.run("a", ConnectionLost(1, "reset by peer"))
    assert p.notices("a")[-1] == PeerDown(IDS["b"].node_id, "reset by peer")
    assert p.tables["a"].connections() == 0
    p.run("a", ConnectionLost(1, "again"))  # unknown conn: ignored
    p.inject("a", 1, wire.encode_frame(Probe(1)))
    assert p.tables["a"].counters["stray_frames"] == 1


def test_close_all_on_shutdown():
    p = up_pair()
    p.execute("a", p.tables["a"].close_all())
    p.flush()
    assert p.closes("a")[0].code == CloseCode.SHUTDOWN
    assert isinstance(p.notices("b")[-1], PeerDown)


def survivors(p):
    """The (a conn, b conn) pairs still connected, and each side's peer list."""
    links = {k: v for k, v in p.peer_of.items() if k[0] == "a"}
    return links, p.tables["a"].peers(), p.tables["b"].peers()


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("names", [("a", "b"), ("b", "a")])
def test_simultaneous_dial_keeps_exactly_one_link_without_flap(seed, names):
    x, y = names
    p = Pump(x, y, rng=random.Random(seed))
    p.connect(x, 1, y, 2)  # x dials y
    p.connect(y, 3, x, 4)  # y dials x at the same time
    p.flush()
    links, peers_a, peers_b = survivors(p)
    assert len(links) == 1 and len(peers_a) == len(peers_b) == 1
    # the survivor is the connection dialed by the lower node id, on both sides
    lower = min(x, y, key=lambda n: IDS[n].node_id)
    assert (peers_a[0].outbound, peers_b[0].outbound) == (lower == "a", lower == "b")
    for side in (x, y):
        assert [type(n) for n in p.notices(side)] == [PeerUp]
        assert p.tables[side].next_deadline() is None
    assert p.tables["a"].counters["duplicates"] + p.tables["b"].counters["duplicates"] >= 1


@pytest.mark.parametrize("seed", range(40))
def test_two_concurrent_dials_by_one_side_keep_exactly_one_link(seed):
    p = Pump("a", "b", rng=random.Random(seed))
    p.connect("a", 1, "b", 2)
    p.connect("a", 3, "b", 4)
    p.flush()
    links, peers_a, peers_b = survivors(p)
    assert len(links) == 1 and len(peers_a) == len(peers_b) == 1
    for side in "ab":
        assert [type(n) for n in p.notices(side)] == [PeerUp]


@pytest.mark.parametrize("seed", range(20))
def test_redial_replaces_the_old_connection_without_flap(seed):
    p = Pump("a", "b", rng=random.Random(seed))
    p.connect("a", 1, "b", 2)
    p.flush()
    p.connect("a", 5, "b", 6, now=10.0)  # a redials while the old link is still up
    p.flush(now=10.0)
    links, peers_a, peers_b = survivors(p)
    assert links == {("a", 5): ("b", 6)}
    for side in "ab":
        assert [type(n) for n in p.notices(side)] == [PeerUp]


def test_duplicate_close_without_successor_ends_in_peer_down_after_timeout():
    p = up_pair()
    p.inject("b", 2, wire.encode_frame(Close(CloseCode.DUPLICATE, "dup")), now=1.0)
    t = p.tables["b"]
    assert p.notices("b", PeerDown) == [] and t.next_deadline() == 6.0
    assert t.send_to(IDS["a"].node_id, Probe(1)) == []
    p.execute("b", t.on_timer(6.0))
    assert [type(n) for n in p.notices("b")] == [PeerUp, PeerDown]
    assert t.next_deadline() is None


# ---------------------------------------------------------------- contract admission
def test_a_non_member_is_refused_after_its_proof_and_counted():
    p = Pump("a", "m")
    members = {IDS["a"].public_key}
    p.tables["a"] = LinkTable(IDS["a"], listen_endpoint="mem://a", name="a",
                              admit=lambda key, now: key in members)
    p.connect("m", 1, "a", 2)
    p.flush()
    (close,) = p.closes("a")
    assert close.code == CloseCode.AUTH_FAILED and "not a member" in close.reason
    assert p.notices("a") == [] and p.tables["a"].peers() == []
    assert p.tables["a"].counters["not_member"] == 1
    assert p.tables["m"].peers() == []  # the non-member saw the Close too


def test_recheck_closes_links_whose_key_was_revoked():
    p = Pump("a", "b", "c")
    members = {IDS[n].public_key for n in "abc"}
    p.tables["a"] = LinkTable(IDS["a"], listen_endpoint="mem://a", name="a",
                              admit=lambda key, now: key in members)
    p.connect("a", 1, "b", 2)
    p.connect("a", 3, "c", 4)
    p.flush()
    assert {i.node_id for i in p.tables["a"].peers()} == {IDS["b"].node_id, IDS["c"].node_id}
    assert p.tables["a"].recheck(1.0) == []
    members.discard(IDS["c"].public_key)
    p.execute("a", p.tables["a"].recheck(1.0))
    p.flush()
    assert [i.node_id for i in p.tables["a"].peers()] == [IDS["b"].node_id]
    assert p.notices("a", PeerDown)[-1].node_id == IDS["c"].node_id
    assert p.tables["a"].counters["not_member"] == 1
    assert p.tables["c"].peers() == []


def test_without_admit_every_proven_key_is_a_peer():
    assert LinkTable(IDS["a"]).recheck(0.0) == []
