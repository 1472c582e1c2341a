"""Key-compromise oracles on a recorded transcript (security.md §6, T07 a, b and d).

Three members A, B and C of a signed contract with three owners run the real session
managers (``sporenet/protocols/sessions/manager.py``: Noise IKpsk2, PQ-PSK rekeys, ChaCha20-Poly1305)
with real randomness (``random.SystemRandom``, as a node does) over an in-memory
overlay that wraps every session frame in a real ``Routed`` packet. A-B traffic goes
through C as a transit; A-C and B-C are direct sessions, so C is a member with
sessions of its own too. Every byte of every hop is recorded. A-B talks across three
key epochs: the first classical keypair, the PQ rekey, and a rekey after 120 s.

Each oracle hands an attacker some keys (read back from real key files) plus what it
captured, and runs ``attack`` (in ``oracle_attacker.py``, shared with the real-node
test ``test_node_compromise.py``): for every captured handshake the attacker replays the
responder's side of Noise IK (``sessions/noise.py``), for every responder static it knows of,
trying in each DH slot (es, ss, ee, se) every DH its private keys can make with that
slot's two public points, and every psk it holds. Each guess is checked against the
AEAD fields of the handshake (encrypted static, timestamp, empty payload), which
tell a right key from a wrong one. It then tries every transport key it derived,
every DH value, and every raw key it holds on the captured data frames. The attacker
knows Noise (Kerckhoffs): the only DHs that matter in a slot involve that slot's
points, and a DH with one of them is computable only from a private key of the slot.

Why the tests can fail: ``test_attack_with_the_ephemeral_keys_opens_everything`` runs
the same ``attack`` with the ephemerals the managers drew (recorded off their rng, in
this process's memory only) and recovers every real key and every payload; the real
keys (kept from ``keyring.install``, in memory only) open every captured data frame.
So when an oracle finds nothing, the missing piece is what the design says it is. The
control also pins the product to the spec: the attacker's own derivation (its own
BLAKE2s/HKDF/ChaCha20-Poly1305, not ``sessions/noise.py``'s) must reproduce the installed keys
exactly, so a product that mixed a static-static value where IK has ``ee`` would fail
there. (A mutant whose "ephemerals" are the static keys fails the forward-secrecy test.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import secrets
from collections import deque
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sporenet.keyfile import generate_identity, load_key_file, write_key_file
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols import wire
from sporenet.protocols.sessions.cookie import HandshakeRejected
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.noise import (ZERO_PSK, DecryptFailed, Initiator, PeerKey, Responder,
                                      StaticKey, TimestampSource)
from sporenet.protocols.routed import Routed
from sporenet.protocols.sessions.pq import mlkem_available
from sporenet.protocols.sessions.data import SessionData
from sporenet.protocols.sessions.events import DeliverPlain, SendPlain, SendSessionFrame, \
    SessionFrameIn
from sporenet.protocols.sessions.messages import HandshakeInit, HandshakeResp
from sporenet.protocols.sessions.peer import PeerState
from sporenet.protocols.sessions.manager import SessionManager

from oracle_attacker import (Knowledge, Report, attack, open_data,  # tests/ is on sys.path
                             x25519_private, x25519_public)

T0 = 1_800_000_000.0  # Unix seconds (the TAI64N stamps of msg1 are wall-clock time)
PROTO = 1


# -- recording: rng draws, installed keys, psks ------------------------------------------

class RecordingRng(random.SystemRandom):
    """``SystemRandom`` (what a node passes) that remembers what it drew (this process's
    memory only): the ephemerals, for the positive control."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn: list[bytes] = []

    def randbytes(self, n: int) -> bytes:
        out = super().randbytes(n)
        self.drawn.append(out)
        return out


@dataclass
class Member:
    name: str
    identity: Identity
    key_file: object
    rng: RecordingRng
    mgr: SessionManager
    results: list = field(default_factory=list)  # every HandshakeResult installed (RAM only)
    delivered: list = field(default_factory=list)  # DeliverPlain actions

    def ephemerals(self) -> list[X25519PrivateKey]:
        return [X25519PrivateKey.from_private_bytes(b) for b in self.rng.drawn if len(b) == 32]


@dataclass
class Hop:
    sender: str
    receiver: str
    frame: bytes  # the wire bytes of the Routed packet on this hop
    src: str  # end-to-end source and destination of the packet
    dst: str


@dataclass
class Recording:
    members: dict[str, Member]
    owners: list[Identity]
    owner_files: list
    contract: ct.Contract
    hops: list[Hop]
    psks: list[bytes]  # every psk any manager set (RAM only)
    psks_of: dict[str, list[bytes]]  # the psks each member set (a pair's psk: both ends)
    payloads: dict[tuple[str, str], list[bytes]]  # (src, dst) -> application payloads sent

    def session_frames(self, hops=None) -> list[tuple[bytes, str, str]]:
        """``(session frame, src, dst)`` carried by ``hops``, each frame once."""
        seen, out = set(), []
        for hop in self.hops if hops is None else hops:
            frame = bytes(wire.decode_frame(hop.frame).payload)
            if frame not in seen:
                seen.add(frame)
                out.append((frame, hop.src, hop.dst))
        return out

    def data_frames(self, pair: set[str]) -> list[bytes]:
        return [f for f, s, d in self.session_frames()
                if f[1] == SessionData.TYPE and {s, d} == pair]

    def handshakes(self, pair: set[str]) -> list[tuple[HandshakeInit, HandshakeResp, str, str]]:
        """``(msg1, msg2, initiator, responder)`` of every completed handshake of ``pair``."""
        frames = [(f, s, d) for f, s, d in self.session_frames() if {s, d} == pair]
        inits = [(wire.decode_frame(f), s, d) for f, s, d in frames if f[1] == HandshakeInit.TYPE]
        resps = [wire.decode_frame(f) for f, _, _ in frames if f[1] == HandshakeResp.TYPE]
        return [(m1, m2, s, d) for m1, s, d in inits for m2 in resps
                if m2.receiver_index == m1.sender_index]

    def keys_of(self, pair: set[str]) -> list[bytes]:
        """The real transport keys of every keypair between ``pair`` (from RAM)."""
        a, b = sorted(pair)
        peer = self.members[b].identity.public_key
        return [k for r in self.members[a].results if r.remote_public_key == peer
                for k in (r.send_key, r.recv_key)]


def _route(src: str, dst: str) -> list[str]:
    return [src, "c", dst] if {src, dst} == {"a", "b"} else [src, dst]


def record(tmp_path) -> Recording:
    owners = [generate_identity() for _ in range(3)]
    owner_files = []
    for i, o in enumerate(owners):
        owner_files.append(write_key_file(tmp_path / f"owner{i}.key", o))
    idents = {n: generate_identity() for n in "abc"}
    contract = ct.new_contract("oracle", [o.public_key for o in owners], 2, rules=[("m", "m")])
    for n, ident in sorted(idents.items()):
        contract = ct.add_member(contract, ident.public_key, n, ["m"])
    for o in owners[:2]:
        contract = ct.sign(contract, o)
    ct.verify(contract, T0)

    members: dict[str, Member] = {}
    for n, ident in idents.items():
        key_file = write_key_file(tmp_path / f"{n}.key", ident)
        rng = RecordingRng()
        me = ident.public_key
        mgr = SessionManager(ident, rng=rng,
                             accept=lambda key, me=me: contract.may_reach(key, me, T0))
        m = members[n] = Member(n, ident, key_file, rng, mgr)
        install = mgr.keyring.install

        def logged(result, now, m=m, install=install):
            m.results.append(result)
            return install(result, now)
        mgr.keyring.install = logged
    by_address = {m.identity.address: m for m in members.values()}

    psks: list[bytes] = []
    psks_of: dict[str, list[bytes]] = {n: [] for n in members}
    set_psk = PeerState.set_psk

    def recording_set_psk(self, outbound, psk, now):
        psks.append(psk)
        owner = next(m for m in members.values()
                     if any(p is self for p in m.mgr._peers.values()))
        psks_of[owner.name].append(psk)
        return set_psk(self, outbound, psk, now)

    hops: list[Hop] = []
    queue: deque = deque()
    clock = [T0]

    def act(name: str, actions) -> None:
        for a in actions:
            if isinstance(a, SendSessionFrame):
                queue.append((name, a))
            elif isinstance(a, DeliverPlain):
                members[name].delivered.append(a)

    def pump() -> None:
        while True:
            while queue:
                name, a = queue.popleft()
                src, dst = members[name], by_address[a.dst_address]
                packet = Routed(src.identity.address.packed, a.dst_address.packed, 64, 0,
                                a.proto, a.frame)
                path = _route(src.name, dst.name)
                for sender, receiver in zip(path, path[1:]):
                    frame = wire.encode_frame(packet)
                    hops.append(Hop(sender, receiver, frame, src.name, dst.name))
                    packet = wire.decode_frame(frame)  # what the next node parses
                    packet = dataclasses.replace(packet, hop_limit=packet.hop_limit - 1,
                                                 hops_taken=packet.hops_taken + 1)
                ingress = members[path[-2]].identity.node_id
                ev = SessionFrameIn.from_routed(wire.decode_frame(frame), ingress)
                act(dst.name, dst.mgr.handle(ev, clock[0]))
            due = [m for m in members.values()
                   if m.mgr.next_deadline() is not None and m.mgr.next_deadline() <= clock[0]]
            if not due:
                return
            for m in due:
                act(m.name, m.mgr.on_timer(clock[0]))

    def advance(seconds: float) -> None:
        end = clock[0] + seconds
        while True:
            dues = [d for m in members.values() if (d := m.mgr.next_deadline()) is not None
                    and d <= end]
            if not dues:
                break
            clock[0] = max(clock[0], min(dues))
            pump()
        clock[0] = end
        pump()

    payloads: dict[tuple[str, str], list[bytes]] = {}

    def send(src: str, dst: str) -> None:
        data = f"{src}->{dst} #{len(payloads.get((src, dst), []))}: ".encode() \
            + secrets.token_hex(24).encode()
        payloads.setdefault((src, dst), []).append(data)
        act(src, members[src].mgr.handle(
            SendPlain(members[dst].identity.public_key, PROTO, data), clock[0]))
        pump()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PeerState, "set_psk", recording_set_psk)
        send("a", "b")          # epoch 1: classical handshake, then the PQ offer in it
        advance(1.0)            # epoch 2: the immediate PQ rekey
        send("b", "a")
        for src, dst in (("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")):
            send(src, dst)
        advance(1.0)
        send("a", "b")
        send("b", "a")
        advance(125.0)          # past Rekey-After-Time: A's next send rekeys (epoch 3)
        send("a", "b")
        advance(1.0)
        send("a", "b")
        send("b", "a")
        advance(1.0)
    return Recording(members, owners, owner_files, contract, hops, psks, psks_of, payloads)


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> Recording:
    r = record(tmp_path_factory.mktemp("oracles"))
    # The run itself worked: every payload was delivered once, in order.
    for (src, dst), sent in r.payloads.items():
        got = [d.payload for d in r.members[dst].delivered
               if d.peer == r.members[src].identity.public_key]
        assert got == sent, (src, dst)
    assert len(r.handshakes({"a", "b"})) >= 3  # classical, PQ, and the 120 s rekey
    if mlkem_available():
        assert r.psks, "no PQ exchange happened"
    return r


def stages_of(rec: Recording, report: Report, pair: set[str]) -> list[str]:
    """The stage the attack reached in each completed handshake of ``pair``."""
    return [report.stages[(m1.sender_index, m2.sender_index)]
            for m1, m2, _, _ in rec.handshakes(pair)]


def statics_of(rec: Recording) -> list[bytes]:
    keys = [m.identity.public_key for m in rec.members.values()]
    keys += [o.public_key for o in rec.owners]
    return [x25519_public(k) for k in keys]


def assert_secrets_absent(payloads: list[bytes], blobs: list[bytes]) -> None:
    """No payload, nor a 16-byte piece of its random part, is in any blob."""
    for p in payloads:
        needles = [p, p[-48:-32], p[-16:]]
        for blob in blobs:
            assert not any(n in blob for n in needles)


def ab_payloads(rec: Recording) -> list[bytes]:
    return rec.payloads[("a", "b")] + rec.payloads[("b", "a")]


# -- positive control --------------------------------------------------------------------

def test_attack_with_the_ephemeral_keys_opens_everything(rec):
    """The attack works when it holds what the design says it must not: the ephemerals.

    With A's ephemerals (off its rng, RAM only) and the psks, ``attack`` confirms every
    A-B handshake, derives exactly the keys the managers installed, and opens every
    captured A-B data frame; the real keys open them too. So an empty result in the
    oracles below is a real result, not a broken decryptor."""
    a = rec.members["a"]
    frames = [f for f, s, d in rec.session_frames() if {s, d} == {"a", "b"}]
    know = Knowledge(privates=a.ephemerals() + [x25519_private(a.identity)], psks=rec.psks,
                     statics=statics_of(rec))
    report = attack(frames, know)
    assert set(stages_of(rec, report, {"a", "b"})) == {"keys"}, report.stages
    real = rec.keys_of({"a", "b"})
    assert sorted(set(report.verified_keys)) == sorted(set(real))
    data = rec.data_frames({"a", "b"})
    assert {f for f, _ in report.opened} == set(data)
    plains = [p for _, p in report.opened]
    for payload in ab_payloads(rec):
        assert any(payload in p for p in plains)
    for f in data:  # the real session keys open every captured frame
        assert any(open_data(k, f) is not None for k in real)


# -- (a) forward secrecy (T07a) ----------------------------------------------------------

def test_both_static_keys_and_the_psks_cannot_decrypt_past_sessions(rec):
    """T07a: A's and B's static keys (read from their key files), every PQ psk either
    ever held, and every byte of every hop: no A-B payload, no data frame of any session.

    The stolen keys do get the attacker into each A-B handshake as far as IK allows
    (the initiator's static and the timestamp of msg1 open: the documented IK identity
    property), and no further: ``ee`` needs an ephemeral private key, which was drawn
    from the OS, used and forgotten."""
    a, b = (load_key_file(rec.members[n].key_file) for n in "ab")
    assert a.public_key == rec.members["a"].identity.public_key
    frames = [f for f, _, _ in rec.session_frames()]
    know = Knowledge(privates=[x25519_private(a), x25519_private(b)], psks=rec.psks,
                     raw_keys=[a.seed, b.seed], statics=statics_of(rec))
    report = attack(frames, know)
    # Every A-B handshake: the static and the timestamp of msg1 open, the keys do not.
    assert set(stages_of(rec, report, {"a", "b"})) == {"timestamp"}, report.stages
    assert "keys" not in report.stages.values()
    assert report.verified_keys == [] and report.opened == []
    real = set(rec.keys_of({"a", "b"}))
    assert report.derived and not real & report.derived  # derived, and all of them wrong
    assert report.tried >= len(rec.data_frames({"a", "b"})) * len(know.privates)

    # The literal replays: B's own Responder code, run with B's key over each captured
    # A->B msg1, accepts it (fresh state, no timestamp watermark) and makes keys, with
    # each psk; and A's Initiator code with A's key, fed each captured msg2.
    data = rec.data_frames({"a", "b"})
    for m1, m2, ini, resp in rec.handshakes({"a", "b"}):
        me, peer = (b, a) if resp == "b" else (a, b)
        for psk in dict.fromkeys([ZERO_PSK, *rec.psks]):
            responder = Responder(StaticKey(me), rng=os.urandom)
            out = responder.consume_init(
                m1, now=T0, local_index=m2.sender_index,
                lookup=lambda s, peer=peer, psk=psk: PeerKey(peer.public_key, psk))
            keys = (out.result.send_key, out.result.recv_key)
            assert not set(keys) & real
            assert not any(open_data(k, f) for k in keys for f in data)
            initiator = Initiator(StaticKey(peer), me.public_key, local_index=m1.sender_index,
                                  rng=os.urandom, clock=TimestampSource(), psk=psk)
            initiator.create_init(T0)
            with pytest.raises(DecryptFailed):
                initiator.consume_response(m2)

    # The real keys were never written: not in any key file, nor on any hop.
    blobs = [rec.members[n].key_file.read_bytes() for n in "abc"] + [h.frame for h in rec.hops]
    for key in real | set(rec.psks):
        assert not any(key in blob for blob in blobs)
    every = [k for p in ({"a", "b"}, {"a", "c"}, {"b", "c"}) for k in rec.keys_of(p)]
    assert len(set(every)) == len(every)  # T07e in small: no two keys alike


# -- (b) a transit member learns nothing about others' traffic (T07b) --------------------

def test_node_c_key_and_everything_c_saw_give_nothing_about_a_b(rec):
    """T07b: C relayed every A-B packet and holds sessions with A and B. With C's key
    file, every byte that crossed C, and all of C's memory (its session keys, psks and
    ephemerals), no A-B handshake gets past its first check, no A-B frame opens, and no
    A-B payload byte appears anywhere C saw. C's own traffic does open (the control)."""
    c = load_key_file(rec.members["c"].key_file)
    seen = [h for h in rec.hops if "c" in (h.sender, h.receiver)]
    assert {(h.src, h.dst) for h in seen} >= {("a", "b"), ("b", "a")}  # C was the transit
    c_results = rec.members["c"].results
    c_psks = rec.psks_of["c"]
    know = Knowledge(privates=[x25519_private(c)] + rec.members["c"].ephemerals(),
                     psks=c_psks,
                     raw_keys=[c.seed] + [k for r in c_results for k in (r.send_key, r.recv_key)],
                     statics=statics_of(rec))
    frames_seen = rec.session_frames(seen)
    ab_frames = [f for f, s, d in frames_seen if {s, d} == {"a", "b"}]
    assert any(f[1] == SessionData.TYPE for f in ab_frames)

    report = attack(ab_frames, know)
    assert set(stages_of(rec, report, {"a", "b"})) == {"nothing"}, report.stages
    assert report.opened == []
    assert report.tried >= len(rec.data_frames({"a", "b"})) * len(know.raw_keys)

    # Control: the same attack on C's own sessions recovers them (C is their endpoint).
    own = [f for f, s, d in frames_seen if "c" in (s, d)]
    mine = attack(own, know)
    assert set(stages_of(rec, mine, {"a", "c"}) + stages_of(rec, mine, {"b", "c"})) == {"keys"}
    own_payloads = [p for (s, d), ps in rec.payloads.items() if "c" in (s, d) for p in ps]
    assert all(any(p in plain for _, plain in mine.opened) for p in own_payloads)

    # Plaintext: not on any hop C saw, not in what C's manager delivered, not in C's
    # keys, psks, rng draws or key file.
    blobs = [h.frame for h in seen] + [d.payload for d in rec.members["c"].delivered]
    blobs += know.raw_keys + c_psks + rec.members["c"].rng.drawn
    blobs.append(rec.members["c"].key_file.read_bytes())
    assert_secrets_absent(ab_payloads(rec), blobs)
    assert not set(rec.keys_of({"a", "b"})) & set(know.raw_keys)


# -- (c) no backdoor for the contract owners (security.md T07d) --------------------------

def test_all_owner_keys_together_cannot_decrypt_members_traffic(rec):
    """T07d: the three owners of the contract (2-of-3) pool their key files, the signed
    contract and the whole capture. No handshake gets past its first check in any role,
    no data frame of any session opens: owners admit and revoke, they cannot decrypt."""
    owners = [load_key_file(p) for p in rec.owner_files]
    assert sorted(o.public_key for o in owners) == list(rec.contract.owners)
    ct.verify(rec.contract, T0)  # the contract the members enforce (``accept``)
    doc = ct.encode(rec.contract)
    frames = [f for f, _, _ in rec.session_frames()]
    know = Knowledge(privates=[x25519_private(o) for o in owners],
                     psks=[rec.contract.hash, hashlib.blake2s(doc).digest()]
                     + [o.seed for o in owners],
                     raw_keys=[o.seed for o in owners] + [rec.contract.hash],
                     statics=statics_of(rec))
    report = attack(frames, know)
    assert report.stages and set(report.stages.values()) == {"nothing"}, report.stages
    assert len(report.stages) == sum(len(rec.handshakes(p))
                                     for p in ({"a", "b"}, {"a", "c"}, {"b", "c"}))
    assert report.opened == []
    assert report.tried >= sum(f[1] == SessionData.TYPE for f in frames) * len(know.raw_keys)

    # Each owner key in the responder's role over every captured msg1, and in the
    # initiator's role over every captured msg2: refused at mac1 or the first AEAD.
    for m1, m2, ini, resp in (rec.handshakes({"a", "b"}) + rec.handshakes({"a", "c"})
                              + rec.handshakes({"b", "c"})):
        for o in owners:
            with pytest.raises(HandshakeRejected):
                Responder(StaticKey(o), rng=os.urandom).consume_init(
                    m1, now=T0, local_index=1, lookup=lambda s, o=o: PeerKey(o.public_key))
            for peer in rec.members.values():
                initiator = Initiator(StaticKey(o), peer.identity.public_key,
                                      local_index=m2.receiver_index, rng=os.urandom,
                                      clock=TimestampSource())
                initiator.create_init(T0)
                with pytest.raises(HandshakeRejected):
                    initiator.consume_response(m2)

    # No escrow: the contract carries no session key, psk or payload.
    real = [k for pair in ({"a", "b"}, {"a", "c"}, {"b", "c"}) for k in rec.keys_of(pair)]
    assert not any(k in doc for k in real + rec.psks)
    assert_secrets_absent([p for ps in rec.payloads.values() for p in ps], [doc])
