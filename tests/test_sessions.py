"""SessionManager: managers wired through an in-memory pump with a hand-advanced clock.

The pump routes ``SendSessionFrame`` actions to the manager owning the destination
address, optionally through a transit node that only forwards bytes; timers fire in
deadline order as the clock advances. Nothing sleeps.
"""

import dataclasses
import ipaddress
import random
from collections import deque

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.base import Publish
from sporenet.protocols.sessions.cookie import CookieJar
from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.overlay.forwarding import DeliverLocal, Forwarder, prefix_fib
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.noise import x25519
from sporenet.protocols.routed import Proto
from sporenet.protocols.sessions.pq import mlkem_available
from sporenet.protocols.sessions.events import (DeliverPlain, SendFailed, SendPlain,
                                               SendSessionFrame, SessionClosed,
                                               SessionEstablished, SessionFrameIn)
from sporenet.protocols.sessions.guard import HandshakeGuard, TokenBuckets
from sporenet.protocols.sessions.messages import HandshakeInit
from sporenet.protocols.sessions.manager import MAX_APP_PAYLOAD, SessionManager

T0 = 1_800_000_000.0  # Unix seconds: the TAI64N stamps need wall-clock time
A, B, C, T = (Identity(bytes([n]) * 32) for n in (1, 2, 3, 9))
needs_mlkem = pytest.mark.skipif(not mlkem_available(), reason="ML-KEM-768 unavailable")


class CountingDh:
    def __init__(self):
        self.calls = 0

    def __call__(self, private, public):
        self.calls += 1
        return x25519(private, public)


class KeyLog:
    """Records every HandshakeResult a manager installs (tests only: keys stay in RAM)."""

    def __init__(self, mgr):
        self.results = []
        inner = mgr.keyring.install

        def install(result, now):
            self.results.append(result)
            return inner(result, now)
        mgr.keyring.install = install


def manager(ident, seed, **kw):
    return SessionManager(ident, rng=random.Random(seed), **kw)


class Net:
    """Routes frames between managers; ``transit`` (if set) relays every frame."""

    def __init__(self, *pairs, transit=None):
        self.nodes = {ident.address: (ident, mgr) for ident, mgr in pairs}
        self.transit = transit  # (identity, manager that is never addressed)
        self.now = T0
        self.wire = deque()
        self.relayed = []  # bytes the transit forwarded
        self.captured = []  # (src identity, SendSessionFrame)
        self.sent_at = []  # (time, src identity, SendSessionFrame)
        self.out = {ident.address: [] for ident, _ in pairs}  # non-frame actions
        self.drop = lambda src, act: False

    def mgr(self, ident):
        return self.nodes[ident.address][1]

    def act(self, ident, acts):
        for a in acts:
            if isinstance(a, SendSessionFrame):
                self.wire.append((ident, a))
                self.sent_at.append((self.now, ident, a))
            else:
                self.out[ident.address].append(a)

    def send(self, src, dst, payload, proto=1):
        self.act(src, self.mgr(src).handle(SendPlain(dst.public_key, proto, payload), self.now))
        self.pump()

    def inject(self, dst, frame, src_address, ingress):
        acts = self.mgr(dst).handle(SessionFrameIn(frame, ingress, src_address), self.now)
        self.act(dst, acts)

    def pump(self, timer_rounds=None):
        rounds = 0
        while True:
            while self.wire:
                src, a = self.wire.popleft()
                self.captured.append((src, a))
                if self.drop(src, a) or a.dst_address not in self.nodes:
                    continue
                ingress = src.node_id
                if self.transit is not None:
                    self.relayed.append(a.frame)
                    ingress = self.transit[0].node_id
                dst = self.nodes[a.dst_address][0]
                self.inject(dst, a.frame, src.address, ingress)
            due = [(m.next_deadline(), i) for i, m in self.nodes.values()
                   if m.next_deadline() is not None and m.next_deadline() <= self.now]
            if not due or (timer_rounds is not None and rounds >= timer_rounds):
                return
            rounds += 1
            for _, ident in due:
                self.act(ident, self.mgr(ident).on_timer(self.now))

    def advance(self, seconds):
        end = self.now + seconds
        while True:
            dues = [m.next_deadline() for _, m in self.nodes.values()]
            dues = [d for d in dues if d is not None and d <= end]
            if not dues:
                break
            self.now = max(self.now, min(dues))
            self.pump()
        self.now = end
        self.pump()

    def delivered(self, ident):
        return [a for a in self.out[ident.address] if isinstance(a, DeliverPlain)]

    def notices(self, ident, kind):
        return [a.message for a in self.out[ident.address]
                if isinstance(a, Publish) and isinstance(a.message, kind)]


def established(**kw):
    net, a, b = pair(**kw)
    net.send(A, B, b"up")
    return net, a, b


def pair(seed=1, transit=False, **kw):
    a, b = manager(A, seed, **kw), manager(B, seed + 100, **kw)
    t = (T, manager(T, seed + 200)) if transit else None
    return Net((A, a), (B, b), transit=t), a, b


def row(mgr, ident, now=T0):
    (r,) = [r for r in mgr.sessions(now) if r.peer == ident.public_key]
    return r


# -- data path ---------------------------------------------------------------------------

def test_data_flows_both_ways_and_rows_report_the_session():
    net, a, b = pair()
    net.send(A, B, b"hello B")
    assert [(d.peer, d.proto, d.payload) for d in net.delivered(B)] == [
        (A.public_key, 1, b"hello B")]
    assert net.delivered(B)[0].src_address == A.address
    net.send(B, A, b"hello A", proto=7)
    assert [(d.peer, d.proto, d.payload) for d in net.delivered(A)] == [
        (B.public_key, 7, b"hello A")]
    ra, rb = row(a, B), row(b, A)
    assert ra.state == rb.state == "established"
    assert (ra.bytes_out, ra.bytes_in, rb.bytes_out, rb.bytes_in) == (7, 7, 7, 7)
    assert ra.replay_drops == 0 and ra.initiator is True and rb.initiator is False
    assert ra.address == str(B.address) and ra.as_dict()["peer"] == B.node_id.hex()
    assert ra.as_dict()["peer_key"] == B.public_key.hex()
    assert net.notices(A, SessionEstablished) and net.notices(B, SessionEstablished)


def test_transit_forwards_only_ciphertext_and_holds_no_key():
    net, a, b = pair(transit=True)
    secret = b"the plaintext nobody on the path may read " * 3
    for i in range(5):
        net.send(A, B, secret + bytes([i]))
        net.send(B, A, secret[::-1] + bytes([i]))
    assert len(net.delivered(B)) == len(net.delivered(A)) == 5
    assert net.relayed and not any(secret in f or secret[::-1] in f for f in net.relayed)
    assert not any(secret[:16] in f for f in net.relayed)
    t = net.transit[1]
    assert len(t.keyring) == 0 and t.sessions(net.now) == []


def test_through_real_forwarders_the_transit_routes_ciphertext():
    fwd = {i.node_id: Forwarder(i) for i in (A, T, B)}
    fwd[A.node_id].set_fib(prefix_fib({B.node_id: T.node_id}))
    fwd[B.node_id].set_fib(prefix_fib({A.node_id: T.node_id}))
    fwd[T.node_id].set_fib(prefix_fib({A.node_id: A.node_id, B.node_id: B.node_id}))
    mgrs = {A.node_id: manager(A, 1), B.node_id: manager(B, 2)}
    got, on_t = [], []
    links = deque()  # (from node, to node, Routed)

    def execute(node, acts):
        for a in acts:
            if isinstance(a, SendSessionFrame):
                acts2 = fwd[node].originate(a.dst_address, a.proto, a.frame)
                links.extend((node, x.node_id, x.packet) for x in acts2)
            elif isinstance(a, DeliverPlain):
                got.append((node, a.payload))

    execute(A.node_id, mgrs[A.node_id].handle(SendPlain(B.public_key, 1, b"via T"), T0))
    now = T0
    for _ in range(50):
        while links:
            src, dst, packet = links.popleft()
            if dst == T.node_id:
                on_t.append(packet)
            for act in fwd[dst].route(packet, src, now):
                if isinstance(act, DeliverLocal):
                    ev = SessionFrameIn.from_routed(act.packet, src)
                    execute(dst, mgrs[dst].handle(ev, now))
                else:
                    links.append((dst, act.node_id, act.packet))
        now += 0.01
        for node, m in mgrs.items():
            if m.next_deadline() is not None and m.next_deadline() <= now:
                execute(node, m.on_timer(now))
    assert got == [(B.node_id, b"via T")]
    assert {p.proto for p in on_t} == {Proto.SESSION_HANDSHAKE, Proto.E2E_DATA}
    assert not any(b"via T" in p.payload for p in on_t)
    assert fwd[T.node_id].counters["forwarded"] == len(on_t)


def test_same_seeds_give_the_same_bytes():
    def run():
        net, a, b = pair(seed=7, pq=False)
        net.send(A, B, b"x")
        net.send(B, A, b"y")
        return [x.frame for _, x in net.captured]
    assert run() == run()


def test_remove_peer_forgets_the_session():
    net, a, b = pair(pq=False)
    net.send(A, B, b"x")
    acts = a.remove_peer(B.public_key)
    assert a.sessions(net.now) == [] and len(a.keyring) == 0
    assert [x.message for x in acts if isinstance(x, Publish)] == [
        SessionClosed(B.public_key, "removed")]


def test_replayed_data_frame_is_dropped_and_counted():
    net, a, b = pair()
    net.send(A, B, b"once")
    data = [x for s, x in net.captured if s is A and x.frame[1] == 0x23][-1]
    net.inject(B, data.frame, A.address, A.node_id)
    assert len(net.delivered(B)) == 1
    assert b.counters["data_ReplayedFrame"] == 1 and row(b, A).replay_drops == 1


def test_queue_while_no_session_is_bounded_and_drops_the_oldest():
    net, a, b = pair(queue_limit=4)
    net.drop = lambda src, act: True  # nothing gets through
    for i in range(6):
        net.send(A, B, bytes([i]))
    assert a.counters["queue_dropped"] == 2 and row(a, B).queued == 4
    net.drop = lambda src, act: False
    net.advance(6)  # the retry gets through
    assert [d.payload for d in net.delivered(B)] == [bytes([i]) for i in range(2, 6)]


def test_handshake_gives_up_after_90_s_and_fails_the_queue():
    net, a, b = pair()
    net.drop = lambda src, act: True
    net.send(A, B, b"lost")
    net.advance(100)
    times = [t for t, s, x in net.sent_at if s is A and x.frame[1] == 0x20]
    gaps = [t2 - t1 for t1, t2 in zip(times, times[1:])]
    assert all(5.0 <= g <= 5.334 for g in gaps) and len(set(gaps)) > 1  # Rekey-Timeout + jitter
    assert times[-1] - times[0] < 90 <= times[-1] - times[0] + gaps[-1]
    fails = [x for x in net.out[A.address] if isinstance(x, SendFailed)]
    assert fails == [SendFailed(B.public_key, 1, "handshake timed out")]
    assert a.counters["handshake_gave_up"] == 1 and a.sessions(net.now) == []
    assert a.next_deadline() is None


def test_send_events_are_checked():
    net, a, b = pair()
    with pytest.raises(LocalProtocolError):
        a.handle(SendPlain(A.public_key, 1, b"x"), T0)
    with pytest.raises(LocalProtocolError):
        a.handle(SendPlain(B.public_key, 256, b"x"), T0)
    with pytest.raises(LocalProtocolError):
        a.handle(SendPlain(B.public_key, 1, bytes(MAX_APP_PAYLOAD + 1)), T0)
    with pytest.raises(LocalProtocolError):
        a.handle(SendPlain(b"short", 1, b"x"), T0)
    with pytest.raises(LocalProtocolError):
        a.handle(object(), T0)
    assert a.sessions(T0) == []


def test_largest_payload_crosses_and_secrets_stay_out_of_reprs():
    net, a, b = pair(pq=False)
    log = KeyLog(a)
    big = bytes(range(256)) * (MAX_APP_PAYLOAD // 256) + b"x" * (MAX_APP_PAYLOAD % 256)
    net.send(A, B, big)
    assert [d.payload for d in net.delivered(B)] == [big]
    keys = [k.hex()[:16] for r in log.results for k in (r.send_key, r.recv_key)]
    shown = " ".join(repr(x) for x in (a, a.keyring, *a._peers.values(), *net.out[A.address],
                                       *net.captured))
    assert keys and not any(k in shown for k in keys)


# -- timers ------------------------------------------------------------------------------

def test_rekey_after_120_s_keeps_traffic_flowing_with_no_loss():
    net, a, b = pair(pq=False)
    sent = []
    for i in range(400):
        sent.append(i.to_bytes(2, "big"))
        net.send(A, B, sent[-1])
        if i % 3 == 0:
            net.send(B, A, b"r" + sent[-1])
        net.advance(1.0)
    assert [d.payload for d in net.delivered(B)] == sent
    assert len(net.delivered(A)) == 134
    assert row(a, B).rekeys >= 3 and row(b, A).rekeys >= 3
    assert b.counters["data_UnknownReceiver"] == b.counters["data_ExpiredFrame"] == 0


def test_one_way_traffic_rekeys_on_receive_before_reject_after_time():
    net, a, b = pair(pq=False)
    net.send(A, B, b"open")  # A initiates; then only B talks
    for i in range(300):
        net.send(B, A, i.to_bytes(2, "big"))
        net.advance(1.0)
    assert len(net.delivered(A)) == 300
    assert row(a, B).rekeys >= 1


def test_reject_after_180_s_without_rekey():
    net, a, b = pair(pq=False)
    net.send(A, B, b"first")
    # A frame sealed now but delivered late, as if held by a slow path.
    late = a.handle(SendPlain(B.public_key, 1, b"late"), net.now)
    assert len(late) == 1
    net.advance(181)
    assert a.keyring.keypairs(B.public_key) == (None, None, None)
    assert net.notices(A, SessionClosed) and net.notices(B, SessionClosed)
    net.inject(B, late[0].frame, A.address, A.node_id)
    assert [d.payload for d in net.delivered(B)] == [b"first"]
    assert b.counters["data_UnknownReceiver"] == 1
    net.send(A, B, b"again")  # a fresh handshake
    assert [d.payload for d in net.delivered(B)] == [b"first", b"again"]


def test_keepalive_answers_one_way_data():
    net, a, b = pair(pq=False)
    net.send(A, B, b"ping")
    before = len(net.captured)
    net.advance(11)
    keepalives = [x for s, x in net.captured[before:] if s is B and x.frame[1] == 0x23]
    assert len(keepalives) == 1 and a.counters["keepalive_in"] >= 1


# -- handshake safety --------------------------------------------------------------------

def test_replayed_handshake_init_does_not_disturb_the_working_session():
    net, a, b = pair(pq=False)
    net.send(A, B, b"one")
    init = [x for s, x in net.captured if s is A and x.frame[1] == 0x20][0]
    keys_before = b.keyring.keypairs(A.public_key)
    net.now += 1
    net.inject(B, init.frame, A.address, A.node_id)
    net.pump()
    assert b.counters["init_ReplayedTimestamp"] == 1
    assert b.keyring.keypairs(A.public_key) == keys_before
    net.send(A, B, b"two")
    net.send(B, A, b"back")
    assert [d.payload for d in net.delivered(B)] == [b"one", b"two"]
    assert [d.payload for d in net.delivered(A)] == [b"back"]


def test_fresh_init_from_the_peer_goes_to_next_and_the_old_keys_keep_working():
    net, a, b = pair(pq=False)
    net.send(A, B, b"one")
    _, current, _ = b.keyring.keypairs(A.public_key)
    net.drop = lambda src, act: act.frame[1] == 0x21  # B's response is lost
    net.now += 1
    net.act(A, a.rekey(B.public_key, net.now))
    net.pump()
    _, cur2, nxt = b.keyring.keypairs(A.public_key)
    assert cur2 is current and nxt is not None
    net.drop = lambda src, act: False
    net.send(B, A, b"still")
    assert [d.payload for d in net.delivered(A)] == [b"still"]


def test_address_must_belong_to_the_static_key():
    net, a, b = pair(pq=False)
    net.drop = lambda src, act: True
    net.send(A, B, b"x")
    init = [x for s, x in net.captured if s is A and x.frame[1] == 0x20][0]
    net.inject(B, init.frame, C.address, A.node_id)  # claims C's address with A's key
    net.now += 0.01
    net.act(B, b.on_timer(net.now))
    assert b.counters["init_UnknownStatic"] == 1 and len(b.keyring) == 0


def test_accept_hook_refuses_non_members():
    a, b = manager(A, 1, pq=False), manager(B, 2, pq=False, accept=lambda k: k != A.public_key)
    net = Net((A, a), (B, b))
    net.send(A, B, b"x")
    assert b.counters["init_UnknownStatic"] == 1 and not net.delivered(B)


# -- post-quantum ------------------------------------------------------------------------

@needs_mlkem
def test_pq_rekey_follows_the_classical_handshake_with_new_keys():
    net, a, b = pair()
    log = KeyLog(a)
    net.send(A, B, b"hi")
    net.advance(0.1)  # the PQ rekey waits 40 ms after the first msg1 (1/50 s limit)
    assert [d.payload for d in net.delivered(B)] == [b"hi"]
    ra, rb = row(a, B), row(b, A)
    assert ra.pq and rb.pq and ra.rekeys == rb.rekeys == 1
    classical, final = log.results
    assert classical.send_key != final.send_key and classical.recv_key != final.recv_key
    assert final.transcript_hash != classical.transcript_hash
    assert a.counters["pq_exchanges"] == 2  # the second psk waits for the 120 s rekey
    assert [n.pq for n in net.notices(A, SessionEstablished)] == [False, True]


@needs_mlkem
def test_every_120_s_rekey_uses_a_fresh_pq_psk():
    net, a, b = pair()
    net.send(A, B, b"hi")
    for i in range(130):
        net.send(A, B, bytes([i % 256]))
        net.advance(1.0)
    assert len(net.delivered(B)) == 131
    assert row(a, B).pq and row(a, B).rekeys == 2
    assert [n.pq for n in net.notices(A, SessionEstablished)] == [False, True, True]
    assert a.counters["resp_DecryptFailed"] == 0


@needs_mlkem
def test_pq_required_blocks_data_until_the_pq_rekey():
    net, a, b = pair(pq_required=True)
    app = []
    net.drop = lambda src, act: (act.frame[1] == 0x23 and app.append(act)) or False
    net.act(A, a.handle(SendPlain(B.public_key, 1, b"secret"), net.now))
    # Step the pump by hand: after the classical handshake the data is still queued.
    while net.wire and not a.keyring.keypairs(B.public_key)[1]:
        src, act = net.wire.popleft()
        dst = [i for i, _ in net.nodes.values() if i.address == act.dst_address][0]
        net.inject(dst, act.frame, src.address, src.node_id)
        net.act(dst, net.mgr(dst).on_timer(net.now))
    assert row(a, B).state == "pq_pending" and row(a, B).queued == 1
    net.advance(0.1)
    assert [d.payload for d in net.delivered(B)] == [b"secret"]
    assert row(a, B).pq and row(b, A).pq and row(a, B).state == "established"


@needs_mlkem
def test_pq_required_receiver_drops_classical_data():
    a, b = manager(A, 1, pq=False), manager(B, 2, pq_required=True)
    net = Net((A, a), (B, b))
    net.send(A, B, b"classical")
    assert net.delivered(B) == [] and b.counters["data_pq_required"] == 1
    assert row(b, A).state == "pq_pending"


@needs_mlkem
def test_lost_psk_falls_back_to_a_classical_handshake_then_pq():
    net, a, b = pair()
    net.send(A, B, b"hi")
    net.advance(1)
    b._peers[A.public_key].forget_psk(False)  # B lost the psk it would answer A with
    net.now += 121
    net.send(A, B, b"after")
    net.advance(1)  # rekey due: A tries with its psk, B answers without
    assert [d.payload for d in net.delivered(B)] == [b"hi", b"after"]
    assert a.counters["resp_DecryptFailed"] == 1
    assert row(a, B).pq and row(b, A).pq


@needs_mlkem
def test_crossing_first_sends_both_end_up_pq():
    net, a, b = pair()
    net.act(A, a.handle(SendPlain(B.public_key, 1, b"from A"), net.now))
    net.act(B, b.handle(SendPlain(A.public_key, 1, b"from B"), net.now))
    net.pump()
    net.advance(1)
    assert [d.payload for d in net.delivered(B)] == [b"from A"]
    assert [d.payload for d in net.delivered(A)] == [b"from B"]
    assert row(a, B).pq and row(b, A).pq
    net.now += 125  # each side's next rekey uses the psk of the exchange it offered
    net.send(A, B, b"later A")
    net.send(B, A, b"later B")
    net.advance(1)
    assert net.delivered(B)[-1].payload == b"later A" and net.delivered(A)[-1].payload == b"later B"
    assert a.counters["resp_DecryptFailed"] == b.counters["resp_DecryptFailed"] == 0
    assert row(a, B).pq and row(b, A).pq


@needs_mlkem
def test_lost_pq_answer_is_offered_again():
    net, a, b = pair()
    lost = []
    net.drop = lambda src, act: (src is B and len(act.frame) > 1000 and not lost
                                 and not lost.append(act))
    net.send(A, B, b"hi")
    assert lost and not row(a, B).pq
    net.advance(6)
    assert a.counters["pq_offer_sent"] >= 3 and row(a, B).pq and row(b, A).pq


@needs_mlkem
def test_peer_without_pq_stays_classical_after_three_offers():
    a, b = manager(A, 1), manager(B, 2, pq=False)
    net = Net((A, a), (B, b))
    net.send(A, B, b"hi")
    net.advance(20)
    net.send(A, B, b"still classical")
    assert [d.payload for d in net.delivered(B)] == [b"hi", b"still classical"]
    assert a.counters["pq_offer_sent"] == 3 and a.counters["pq_gave_up"] == 1
    assert b.counters["pq_offer_ignored"] == 3 and not row(a, B).pq


# -- denial of service -------------------------------------------------------------------

def bogus_init(rng, peer_static, good_mac1=True):
    msg = HandshakeInit(rng.getrandbits(32), rng.randbytes(32), rng.randbytes(48),
                        rng.randbytes(28))
    if good_mac1:
        return CookieJar(peer_static).stamp(msg, T0)
    return dataclasses.replace(msg, mac1=rng.randbytes(16))


def test_bad_mac1_flood_costs_no_dh_and_the_session_keeps_flowing():
    dh = CountingDh()
    a, b = manager(A, 1, pq=False), manager(B, 2, pq=False, dh=dh)
    net = Net((A, a), (B, b))
    net.send(A, B, b"before")
    dh_before = dh.calls
    rng = random.Random(5)
    for i in range(2_000):
        frame = wire.encode_frame(bogus_init(rng, b.static.public, good_mac1=False))
        src = ipaddress.IPv6Address(0x0600 << 112 | rng.getrandbits(100))
        net.inject(B, frame, src, rng.randbytes(32))
        if i % 100 == 0:
            net.send(A, B, i.to_bytes(2, "big"))
    net.advance(1)
    assert dh.calls == dh_before and b.counters["init_bad_mac1"] == 2_000
    assert len(b.guard) == 0
    assert len(net.delivered(B)) == 21


def fresh_source(rng):
    return ipaddress.IPv6Address(0x0600 << 112 | rng.getrandbits(100))


def test_valid_mac1_flood_triggers_cookies_and_a_real_peer_still_gets_in():
    dh = CountingDh()
    a, b = manager(A, 1, pq=False), manager(B, 2, pq=False, dh=dh)
    net = Net((A, a), (B, b))
    per_call = []  # DH operations of each on_timer call of B
    inner = b.on_timer

    def on_timer(now):
        before = dh.calls
        acts = inner(now)
        per_call.append(dh.calls - before)
        return acts
    b.on_timer = on_timer
    rng = random.Random(6)
    links = [rng.randbytes(32) for _ in range(20)]
    flood = [(wire.encode_frame(bogus_init(rng, b.static.public)), fresh_source(rng),
              links[i % 20]) for i in range(1_000)]
    for n, (frame, src, link) in enumerate(flood):
        net.inject(B, frame, src, link)
        if b.guard.under_load(net.now):
            break
    assert n + 1 == b.guard.under_load_queue  # under load as the queue reaches 128
    for frame, src, link in flood[n + 1:]:
        net.inject(B, frame, src, link)
    assert dh.calls == 0  # nothing answered yet: arrivals only queue
    # The flood goes on at 4,000/s (every link at its rate) while the real peer starts.
    # B answers one budget per 10 ms tick, as a node that does ~3,200 handshakes/s.
    net.act(A, a.handle(SendPlain(B.public_key, 1, b"through"), net.now))
    for tick in range(1_000):
        net.now += 0.01
        for i in range(40):
            net.inject(B, wire.encode_frame(bogus_init(rng, b.static.public)),
                       fresh_source(rng), links[i % 20])
        net.pump(timer_rounds=1)
        if net.delivered(B):
            break
    assert [d.payload for d in net.delivered(B)] == [b"through"]
    assert a.counters["handshake_sent"] == 2 and a.counters["cookie_received"] == 1
    assert b.counters["cookie_sent"] >= 1_000 and b.counters["init_queue_full"] == 0
    # Each call did at most a budget of DH-costing answers (a bogus msg1 costs one DH
    # before its static fails to decrypt, the real peer's four).
    assert max(per_call) <= b.guard.budget + 3
    assert len(b.guard) <= b.guard.queue_limit


def test_under_load_a_source_with_a_cookie_is_still_rate_limited():
    a = manager(A, 1, pq=False)
    b = manager(B, 2, pq=False, guard=HandshakeGuard(under_load_queue=1))  # always loaded
    net = Net((A, a), (B, b))
    net.send(A, B, b"x")
    assert b.counters["cookie_sent"] == 1 and not net.delivered(B)
    net.advance(6)  # the retry carries mac2
    assert [d.payload for d in net.delivered(B)] == [b"x"]
    for _ in range(40):  # 25 initiations/s with a valid cookie: over 20/s, burst 5
        net.act(A, a.rekey(B.public_key, net.now))
        net.advance(0.04)
    assert b.counters["init_rate_source"] > 0
    assert b.counters["init_answered"] < 40


def test_link_bucket_limits_one_neighbour():
    a, b = manager(A, 1, pq=False), manager(B, 2, pq=False)
    net = Net((A, a), (B, b))
    rng = random.Random(7)
    link = rng.randbytes(32)
    for _ in range(500):
        src = ipaddress.IPv6Address(0x0600 << 112 | rng.getrandbits(100))
        net.inject(B, wire.encode_frame(bogus_init(rng, b.static.public)), src, link)
    assert len(b.guard) == 50 and b.counters["init_rate_link"] == 450


def test_token_buckets_refill_and_forget():
    tb = TokenBuckets(20.0, 5.0)
    assert [tb.allow(b"k", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert tb.allow(b"k", 0.05) and not tb.allow(b"k", 0.05)
    tb.sweep(10.0)
    assert len(tb) == 0
    small = TokenBuckets(20.0, 5.0, limit=2)
    assert small.allow(b"a", 0.0) and small.allow(b"b", 0.0)
    assert not small.allow(b"c", 0.0) and not small.allow(b"d", 0.5)  # full of live ones
    assert small.allow(b"c", 1.5)  # a second later the sweep frees the refilled ones


def test_garbage_frames_are_counted_never_raised():
    net, a, b = pair(pq=False)
    for frame in (b"", b"\x01", b"\x02\x20", b"\x01\x20short", b"\x01\x23" + bytes(10),
                  b"\x01\x24" + bytes(1184), b"\x01\x21" + bytes(88), b"\x01\x22" + bytes(60)):
        net.inject(B, frame, A.address, A.node_id)
    assert b.counters["malformed"] == 5
    assert b.counters["unexpected_type"] == 1
    assert b.counters["resp_unknown_index"] == b.counters["cookie_unknown_index"] == 1


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"", b"\x01\x20", b"\x01\x21", b"\x01\x22", b"\x01\x23",
                        b"\x01\x24", b"\x01\x25", b"\x01"]), st.binary(max_size=300))
def test_any_bytes_from_the_overlay_are_counted_never_raised(prefix, tail):
    net, a, b = FUZZ_NET
    net.inject(B, prefix + tail, A.address, A.node_id)
    net.now += 0.001
    net.act(B, b.on_timer(net.now))  # queued msg1s are answered or refused, never raise
    assert len(net.delivered(B)) == 1


FUZZ_NET = established(pq=False)


def test_inner_plaintext_layout_is_type_proto_payload():
    net, a, b = pair(pq=False)
    log = KeyLog(a)
    net.send(A, B, b"hello", proto=7)
    data = [x for s, x in net.captured if s is A and x.frame[1] == 0x23]
    opened = []
    for x in data:
        nonce = bytes(4) + x.frame[6:14][::-1]  # 0^32 || LE64(counter)
        opened.append(ChaCha20Poly1305(log.results[0].send_key).decrypt(
            nonce, x.frame[14:], x.frame[:14]))
    assert opened == [b"\x01\x07hello"]  # the queued data itself confirms A's keys


# -- keys --------------------------------------------------------------------------------

def run_handshakes(n):
    """``n`` handshakes A -> B through the managers; the keys each side installed."""
    a, b = manager(A, 11, pq=False), manager(B, 12, pq=False)
    log_a, log_b = KeyLog(a), KeyLog(b)
    net = Net((A, a), (B, b))
    for _ in range(n):
        net.now += 0.05  # above the 50/s per-peer initiation limit
        net.act(A, a.rekey(B.public_key, net.now))
        net.pump()
    return log_a.results, log_b.results


@pytest.mark.parametrize("n", [10_000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_handshakes_give_pairwise_distinct_keys(n):
    mine, theirs = run_handshakes(n)
    assert len(mine) == len(theirs) == n
    assert len({r.send_key for r in mine} | {r.recv_key for r in mine}) == 2 * n
    assert {r.send_key for r in mine} == {r.recv_key for r in theirs}
    assert {r.recv_key for r in mine} == {r.send_key for r in theirs}
    assert len({r.transcript_hash for r in mine}) == n
