"""Fork evidence and contract gossip, sans-IO (sporenet/protocols/contracts/fork.py,
sporenet/protocols/contracts/gossip.py): detection, checking, the wire form, alerts and their
spread, and a contract larger than one frame gossiped over two hops in chunks."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sporenet.agents.contract import adopt
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols import wire
from sporenet.protocols.contracts.fork import (ContractFork, ForkEvidence, ForkMonitor,
                                              ForkNotProven, check_evidence, decode_evidence,
                                              encode_evidence, find_fork, fork_id, is_fork)
from sporenet.protocols.contracts.gossip import (Candidate, ContractGossip, ForkDetected, Poll,
                                                Warn)
from sporenet.protocols.contracts.transfer import SendTo, fits_one_frame
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.identity import Identity
from sporenet.protocols.contracts.ledger import ContractOffer, ContractRequest
from sporenet.protocols.notices import LinkFrameIn, PeerDown, PeerUp

OWNERS = [Identity(bytes([i + 1]) * 32) for i in range(3)]
THIEF = Identity(b"\x66" * 32)
A, B = Identity(b"\x41" * 32), Identity(b"\x42" * 32)
N1, N2, N3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def thief_signed(c):
    """``c`` signed by a key that is no owner (sign() refuses that, so by hand)."""
    body = replace(c, signatures=())
    return replace(body, signatures=(ct.Signature(THIEF.public_key,
                                                  THIEF.sign(ct.signing_message(body))),))


def signed(c, *owners):
    for o in owners or OWNERS[:2]:
        c = ct.sign(c, o)
    return c


@pytest.fixture(scope="module")
def chain():
    """v1, v2a and v2b: two different versions 2, both signed by 2 of 3 owners."""
    v1 = ct.new_contract("lab", [o.public_key for o in OWNERS], 2, rules=[("*", "*")])
    v1 = signed(ct.add_member(v1, A.public_key, "alice"))
    v2a = signed(ct.add_member(v1, B.public_key, "bob"))
    v2b = signed(ct.remove_member(v1, A.public_key), OWNERS[1], OWNERS[2])
    return v1, v2a, v2b


def big(v1, n=3000):
    """The next version of ``v1`` with ``n`` members: larger than one frame."""
    members = tuple(sorted((ct.Member(bytes([i >> 8, i & 0xFF]) + bytes(30), f"m{i}", ("app",))
                            for i in range(n)), key=lambda m: m.public_key))
    return signed(ct.bump_version(v1, members=members))


# -- evidence ------------------------------------------------------------------------


def test_is_fork_and_canonical_order(chain):
    v1, v2a, v2b = chain
    assert is_fork(v2a, v2b) and is_fork(v2b, v2a)
    assert not is_fork(v2a, v2a) and not is_fork(v1, v2a)
    assert not is_fork(v2a, replace(v2a, signatures=v2a.signatures[:1]))  # same body
    ev = ForkEvidence.of(v2b, v2a)
    assert ev == ForkEvidence.of(v2a, v2b) and ev.version == 2 and ev.network == "lab"
    assert ev.id == fork_id(v2b.hash, v2a.hash) == fork_id(v2a.hash, v2b.hash)
    with pytest.raises(LocalProtocolError, match="lower body hash first"):
        ForkEvidence(ev.second, ev.first)
    with pytest.raises(LocalProtocolError, match="not a fork"):
        ForkEvidence(v1, v2a)
    assert v2a.hash.hex()[:16] in repr(ev) and "signatures" not in repr(ev)


def test_find_fork_against_what_is_held(chain):
    v1, v2a, v2b = chain
    held = {1: v1, 2: v2a}.get
    assert find_fork(v2b, held) == ForkEvidence.of(v2a, v2b)
    assert find_fork(v2a, held) is None and find_fork(v1, held) is None
    assert find_fork(v2b, {1: v1}.get) is None  # nothing held at 2: no fork to see


def test_check_evidence_needs_trusted_owner_signatures(chain):
    v1, v2a, v2b = chain
    ev = ForkEvidence.of(v2a, v2b)
    check_evidence(ev, {1: v1, 2: v2a}.get, v2a)   # against version 1's owners
    check_evidence(ev, {}.get, v1)                 # against the version in force
    forged = ct.sign(replace(v2b, signatures=()), OWNERS[0])  # 1 of 2 needed
    with pytest.raises(ForkNotProven, match="1 valid owner signature"):
        check_evidence(ForkEvidence.of(v2a, forged), {1: v1}.get, v2a)
    bad_sig = replace(v2b, signatures=(ct.Signature(OWNERS[1].public_key, b"\x00" * 64),
                                       v2b.signatures[1]))
    with pytest.raises(ForkNotProven, match="bad signature"):
        check_evidence(ForkEvidence.of(v2a, bad_sig), {1: v1}.get, v2a)
    thief = thief_signed(v2b)   # a non-owner's signature counts for nothing
    with pytest.raises(ForkNotProven):
        check_evidence(ForkEvidence.of(v2a, thief), {1: v1}.get, v2a)
    other = ct.sign(ct.new_contract("other", [OWNERS[0].public_key], 1), OWNERS[0])
    with pytest.raises(ct.NetworkMismatch):
        check_evidence(ev, {}.get, other)


def test_evidence_wire_form_golden_layout_and_roundtrip(chain):
    _, v2a, v2b = chain
    ev = ForkEvidence.of(v2a, v2b)
    first, second = ct.encode(ev.first), ct.encode(ev.second)
    frame = wire.encode_frame(ContractFork(ev))
    assert frame == bytes([wire.VERSION, 0x55]) + len(first).to_bytes(4, "big") + first + second
    assert wire.decode_frame(frame) == ContractFork(ev)
    assert decode_evidence(encode_evidence(ev)) == ev
    assert wire.registered_types()[0x55] is ContractFork
    swapped = len(second).to_bytes(4, "big") + second + first
    with pytest.raises(DecodeError, match="lower body hash first"):
        decode_evidence(swapped)
    with pytest.raises(DecodeError, match="not a fork"):
        decode_evidence(len(first).to_bytes(4, "big") + first + first)
    with pytest.raises(DecodeError):
        decode_evidence(b"\xff\xff\xff\xff" + first)


@settings(max_examples=200)
@given(st.binary(max_size=600), st.integers(0, 3000), st.integers(0, 255))
def test_fuzz_evidence_decoder_raises_only_decode_error(junk, pos, value):
    v1 = ct.new_contract("lab", [OWNERS[0].public_key], 1)
    a = ct.encode(ct.sign(v1, OWNERS[0]))
    b = ct.encode(ct.sign(ct.set_flag(v1, "x", "1"), OWNERS[0]))
    data = bytearray(len(a).to_bytes(4, "big") + a + b)
    data[pos % len(data)] = value
    for body in (junk, bytes(data)):
        try:
            wire.decode_frame(bytes([wire.VERSION, 0x55]) + body)
        except DecodeError:
            pass


def test_monitor_dedups_bounds_and_rate_limits(chain):
    _, v2a, v2b = chain
    m = ForkMonitor(max_forks=1)
    ev = ForkEvidence.of(v2a, v2b)
    assert m.record(ev, 0, "gossip") and not m.record(ev, 1, "gossip") and m.known(ev.id)
    v2c = signed(ct.set_flag(chain[0], "x", "y"))
    assert m.record(ForkEvidence.of(v2a, v2c), 2, "api")  # alerts, not kept
    assert m.counters["forks_not_kept"] == 1 and len(m.evidence()) == 1
    assert m.summaries(10)[0]["age_s"] == 10 and m.summaries()[0]["hashes"] == [h.hex() for h in ev.hashes]
    assert all(m.allow(N1, 0) for _ in range(4)) and not m.allow(N1, 0) and m.allow(N2, 0)


# -- gossip between sans-IO nodes ----------------------------------------------------


class Node:
    """A ``ContractGossip`` plus what the agent does: verify and adopt candidates."""

    def __init__(self, nid, current, *older):
        self.nid, self.held = nid, {c.version: c for c in (*older, current)}
        self.current = current
        self.gossip = ContractGossip(lambda: self.current, self.held.get, 0.0)
        self.forks, self.warnings, self.refused = [], [], []

    def act(self, actions, net):
        for a in actions:
            if isinstance(a, SendTo):
                net.queue.append((self.nid, a.peer, wire.encode_frame(a.message)))
            elif isinstance(a, Candidate):
                try:
                    ok = adopt(self.current, a.contract, 0)
                except ct.ContractError as e:
                    self.refused.append(e)
                    self.act(self.gossip.refused(a.peer, a.contract, e, net.now), net)
                    continue
                if ok:
                    self.current = self.held[a.contract.version] = a.contract
                    self.act(self.gossip.adopted(a.contract, net.now), net)
            elif isinstance(a, ForkDetected):
                self.forks.append(a)
            elif isinstance(a, Warn):
                self.warnings.append(a)


class Net:
    def __init__(self, *nodes):
        self.nodes = {n.nid: n for n in nodes}
        self.queue, self.now, self.frames = [], 0.0, []

    def link(self, x, y):
        for a, b in ((x, y), (y, x)):
            self.nodes[a].act(self.nodes[a].gossip.handle(PeerUp(b, b, "", "", True), self.now), self)

    def run(self, limit=10_000, drop=lambda src, dst, kind: False):
        while self.queue and limit:
            limit -= 1
            src, dst, frame = self.queue.pop(0)
            if drop(src, dst, frame[1]):
                continue
            self.frames.append((src, dst, frame[1]))
            node = self.nodes[dst]
            node.act(node.gossip.handle(LinkFrameIn(src, frame, self.now), self.now), self)
        assert not self.queue


def test_a_contract_larger_than_a_frame_spreads_two_hops_in_verified_chunks(chain):
    v1 = chain[0]
    v2 = big(v1)
    assert not fits_one_frame(len(ct.encode(v2)))
    n1, n2, n3 = Node(N1, v2, v1), Node(N2, v1), Node(N3, v1)
    net = Net(n1, n2, n3)
    net.link(N1, N2)
    net.link(N2, N3)
    net.run()
    assert n2.current == v2 and n3.current == v2
    types = {t for _, _, t in net.frames}
    assert {0x52, 0x53, 0x54} <= types
    chunks = [f for f in net.frames if f[2] == 0x54]
    assert len(chunks) >= 2 * 4  # two hops, several chunks each
    assert n3.gossip.fetcher.counters["completed"] == 1 and not n3.forks


def test_a_peer_announcing_garbage_is_counted_and_its_payload_refused(chain):
    v1 = chain[0]
    n2 = Node(N2, v1)
    payload = b"\x00" * 70_000  # not a contract
    from sporenet.protocols.contracts.transfer import KIND_CONTRACT, announce, serve
    ann = announce(KIND_CONTRACT, "lab", 2, bytes(32), payload)
    net = Net(n2)
    n2.act(n2.gossip.handle(LinkFrameIn(N1, wire.encode_frame(ann), 0), 0), net)
    (_, _, frame), = net.queue
    net.queue.clear()
    out = []
    for ch in serve(payload, wire.decode_frame(frame)):
        out += n2.gossip.handle(LinkFrameIn(N1, wire.encode_frame(ch), 0), 0)
    n2.act(out, net)
    assert n2.gossip.fetcher.bad_peers[N1] == 1 and n2.current == v1
    assert any(w.event == "contract_transfer_failed" and w.fields["bad_peer"] for w in n2.warnings)


def test_a_forked_offer_is_refused_alerted_and_the_evidence_reaches_every_node(chain):
    v1, v2a, v2b = chain
    n1, n2, n3 = Node(N1, v2b, v1), Node(N2, v2a, v1), Node(N3, v1)
    net = Net(n1, n2, n3)
    net.link(N2, N3)
    net.run()
    assert n3.current == v2a  # n3 followed n2 first
    net.link(N1, N2)  # n1 offers v2b to n2, which holds v2a: a fork
    net.run()
    assert n2.current == v2a and n3.current == v2a and n1.current == v2b
    ev = ForkEvidence.of(v2a, v2b)
    for n in (n1, n2, n3):
        assert [f.evidence for f in n.forks] == [ev], n.nid
        assert n.gossip.summaries(0)[0]["id"] == ev.id.hex()
    assert n2.forks[0].peer == N1 and n3.forks[0].peer == N2
    # A node that links later hears about the fork on PeerUp; repeats are not re-alerted.
    n4 = Node(b"\x04" * 32, v2a, v1)
    net.nodes[n4.nid] = n4
    net.link(N3, n4.nid)
    net.run()
    assert [f.evidence for f in n4.forks] == [ev] and len(n3.forks) == 1


def test_the_peer_that_offered_the_other_branch_gets_the_evidence(chain):
    v1, v2a, v2b = chain
    n1, n2 = Node(N1, v2b, v1), Node(N2, v2a, v1)
    net = Net(n1, n2)
    net.link(N1, N2)  # n2's offer to n1 is lost: n1 can only learn from n2's evidence
    net.run(drop=lambda src, dst, kind: (src, dst, kind) == (N2, N1, ContractOffer.TYPE))
    ev = ForkEvidence.of(v2a, v2b)
    assert [f.evidence for f in n2.forks] == [ev] and n2.forks[0].source == "gossip"
    assert [f.evidence for f in n1.forks] == [ev] and n1.forks[0].peer == N2
    assert n1.current == v2b and n2.current == v2a


def test_a_fork_between_large_versions_is_fetched_in_chunks_and_its_evidence_chunked_on(chain):
    v1 = chain[0]
    big_a = big(v1, 1500)
    big_b = signed(replace(big_a, flags=(("x", "b"),), signatures=()))
    n1, n2, n3 = Node(N1, big_b, v1), Node(N2, big_a, v1), Node(N3, big_a, v1)
    net = Net(n1, n2, n3)
    net.link(N2, N3)
    net.link(N1, N2)
    net.run()
    ev = ForkEvidence.of(big_a, big_b)
    assert [f.evidence for f in n2.forks] == [ev] and [f.evidence for f in n3.forks] == [ev]
    assert (N2, N3, 0x52) in net.frames and not any(t == 0x55 for _, _, t in net.frames)
    assert n2.current == big_a and n3.current == big_a


def test_a_broken_chain_asks_the_peer_for_its_version_and_finds_the_fork(chain):
    v1, v2a, v2b = chain
    v3b = signed(ct.set_flag(v2b, "x", "1"))
    n1, n2 = Node(N1, v3b, v1, v2b), Node(N2, v2a, v1)
    net = Net(n1, n2)
    net.link(N1, N2)
    net.run()
    assert isinstance(n2.refused[0], ct.PreviousMismatch)
    assert (N2, N1, ContractRequest.TYPE) in net.frames
    assert [f.evidence for f in n2.forks] == [ForkEvidence.of(v2a, v2b)] and n2.current == v2a


def test_unproven_evidence_is_refused_not_forwarded_and_rate_limited(chain):
    v1, v2a, v2b = chain
    forged = thief_signed(v2b)
    n2, n3 = Node(N2, v2a, v1), Node(N3, v2a, v1)
    net = Net(n2, n3)
    net.link(N2, N3)
    net.run()
    frame = wire.encode_frame(ContractFork(ForkEvidence.of(v2a, forged)))
    n2.act(n2.gossip.handle(LinkFrameIn(N1, frame, 0), 0), net)
    net.run()
    assert not n2.forks and not n3.forks and n2.warnings[0].event == "contract_fork_unproven"
    for _ in range(10):
        n2.act(n2.gossip.handle(LinkFrameIn(N1, frame, 0), 0), net)
    assert n2.gossip.forks.counters["evidence_rate_limited"] >= 6
    # An offer of the forged version is no fork either: it does not verify.
    n2.act(n2.gossip.handle(LinkFrameIn(N3, wire.encode_frame(ContractOffer(forged)), 0), 0), net)
    assert not n2.forks


def test_timers_poll_and_peer_down_and_other_networks(chain):
    v1, v2a, _ = chain
    n = Node(N1, v1)
    assert n.gossip.next_deadline() == 0.0 and n.gossip.on_timer(0.0) == [Poll()]
    assert n.gossip.next_deadline() == 1.0
    other = ct.sign(ct.new_contract("other", [OWNERS[0].public_key], 1), OWNERS[0])
    assert n.gossip.handle(LinkFrameIn(N2, wire.encode_frame(ContractOffer(other)), 0), 0) == []
    assert n.gossip.handle(LinkFrameIn(N2, b"\x01\x52\x00", 0), 0)[0].event == "bad_contract_frame"
    n.gossip.handle(PeerUp(N2, N2, "", "", True), 0)
    assert n.gossip.handle(PeerDown(N2, "gone"), 0) == [] and n.gossip.peers == set()
