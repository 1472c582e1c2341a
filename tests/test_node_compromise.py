"""Real nodes A - C - B: C's stolen key file and everything C relayed open no A-B traffic.

Three ``sporenet up`` processes on a line, C the transit (A and B each dial C). A tap
on C's bus (``link.table.rx`` / ``link.table.tx`` as in ``test_node_sessions.py``, plus
``link.table.peer_up``) runs from before A and B start, so it records every link frame that
crosses C after each link's hello (routing, probes, and every routed packet of the A-B
session: handshakes and SessionData frames, both ways) and the proven public key of
each peer. A and B exchange distinct random payloads both ways, before and after the
PQ rekey (``sporenet sessions --json`` on A shows the session to B with ``pq`` true),
and A sends one message to C. A ping A->B whose pong the tap sees both ways closes
the capture (the frames before it are in).

Then the nodes are stopped, and the attacker takes C's key file from C's run
directory (``load_key_file``) and the capture: the nodes' public keys from the
captured ``PeerUp`` notices, the session frames from the captured ``Routed`` packets.
It runs ``attack`` (``oracle_attacker.py``, the attacker of ``test_session_oracles.py``):
for every captured handshake it replays the responder's side of Noise IKpsk2 with every
DH C's key can make in each slot; then it tries every transport key it derived, C's
seed and private key, every DH of C's key with every point in the captured handshakes
and every static (and their hashes) as the AEAD key of every captured A-B data frame;
and every 32-byte string of the capture (a key sent in clear would be one) on one data
frame of each A-B keypair and direction.

Asserted: the capture holds the A-B conversation (at least two completed A-B
handshakes, the classical one and the PQ rekey; SessionData frames A->B and B->A, each
under the indices of a captured handshake); the attack gets no A-B handshake past its
first check (stage "nothing") and opens no frame; no A-B payload, nor any 16-byte
piece of one, is in any captured frame or any file of C's run directory (key file,
log, node.json).

The control (why it can fail, on this real capture): the same attacker with the same
key file does get into the handshakes A addressed to C. IK lets the responder's static
key open msg1's encrypted static and timestamp, so ``attack`` reaches stage
"timestamp" on each, and the attacker's own decryption (its BLAKE2s, HKDF and
ChaCha20-Poly1305, not ``sessions/noise.py``'s) yields A's real static key and a TAI64N stamp
inside the wall-clock window of the run. So the key conversion from C's key file, the
parsing of the captured packets and the handshake derivation all track the product,
and the A-B handshakes stay at "nothing" because their es needs the responder's key
or the initiator's ephemeral. (Giving the attacker B's key file too moves the ones A
started to "timestamp".) It goes
no further on A-C either (``ee`` needs an ephemeral, gone with the processes), so no
A-C frame opens: the full positive control (with the ephemerals every key and payload
is recovered) runs in-process in ``test_session_oracles.py`` on the same ``attack``.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import struct
import time

import pytest

from sporenet.keyfile import load_key_file
from sporenet.local_mesh import ping, selected_routes as selected, send_message, trace, \
    wait_for
from sporenet.protocols import wire
from sporenet.protocols.notices import PeerUp
from sporenet.protocols.routed import Proto
from sporenet.protocols.sessions.data import SessionData
from sporenet.protocols.sessions.messages import HandshakeInit, HandshakeResp

from oracle_attacker import (_C0, _H0, Knowledge, _aead_open, _dh, _h, _kdf, attack,  # tests/
                             x25519_private, x25519_public)  # is on sys.path (rootdir)
from test_node_sessions import Tap, cli, sessions

pytestmark = pytest.mark.slow

TAI64_EPOCH = 0x400000000000000A  # TAI64 label of the Unix epoch (2^62 + 10 s), as in WG


def recv_all(node, topic: str) -> list[str]:
    out = cli("recv", "--api", node.info["api"], "--topic", topic, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line)["data"] for line in out.stdout.splitlines() if line.strip()]


def addr(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


def open_msg1(m1: HandshakeInit, private, responder_static: bytes) -> tuple[bytes, bytes]:
    """The responder's view of msg1 (``e, es, s, ss, {timestamp}``) with its static key:
    the initiator's X25519 static and the TAI64N stamp, from the attacker's primitives."""
    c, h = _C0, _h(_H0 + responder_static)
    (c,) = _kdf(c, m1.ephemeral, 1)
    h = _h(h + m1.ephemeral)
    c, k = _kdf(c, _dh(private, m1.ephemeral), 2)
    s_pub = _aead_open(k, m1.encrypted_static, h)
    assert s_pub is not None
    h = _h(h + m1.encrypted_static)
    _, k = _kdf(c, _dh(private, s_pub), 2)
    stamp = _aead_open(k, m1.encrypted_timestamp, h)
    assert stamp is not None
    return s_pub, stamp


def test_c_key_file_and_everything_c_relayed_open_no_a_b_traffic(mesh):
    t_start = time.time()
    c = mesh.start_node("c")
    tap = Tap(c.run_dir, PeerUp.TOPIC)  # before A and B exist: their PeerUps are captured too
    payloads: dict[tuple[str, str], list[str]] = {}
    try:
        a = mesh.start_node("a", peers=[c.endpoint])
        b = mesh.start_node("b", peers=[c.endpoint])
        nodes = {"a": a, "b": b, "c": c}
        wait_for(lambda: b.node_id in selected(a) and a.node_id in selected(b), 60,
                 "A and B to learn routes to each other")
        assert trace(mesh, "a", "b") == ["a", "c", "b"]
        assert trace(mesh, "b", "a") == ["b", "c", "a"]

        def say(src: str, dst: str) -> None:
            text = f"{src}>{dst}:{secrets.token_hex(32)}"  # 64 random hex digits
            payloads.setdefault((src, dst), []).append(text)
            res = send_message(nodes[src], nodes[dst].info["address"], "secret", text, 20.0)
            assert res["state"] == "delivered", res

        say("a", "b")  # the classical handshake; the PQ exchange rides inside it
        say("b", "a")

        def pq_ab() -> bool:
            return any(r["address"] == b.info["address"] and r["pq"] for r in sessions(a))
        wait_for(pq_ab, 30, lambda: f"A's session to B to be PQ: {sessions(a)}")
        for _ in range(2):  # under the PQ keys
            say("a", "b")
            say("b", "a")
        say("a", "c")  # the control: a session C is the responder of
        wait_for(lambda: any(r["address"] == c.info["address"] for r in sessions(a)), 10,
                 "A's session to C")

        # A sentinel after everything: once C's tap holds the pong B sent A (received and
        # forwarded), it holds every earlier frame of the conversation too.
        res = ping(a, b.node_id, timeout=10.0)
        assert res["state"] == "ok", res

        def pong_seen() -> bool:
            return sum(1 for p in tap.routed() if p.proto == Proto.PONG
                       and addr(p.src) == b.info["address"]) >= 2  # rx from B, tx to A
        wait_for(pong_seen, 10, "C's tap to see the sentinel pong both ways")
    finally:
        tap.close()
    t_end = time.time()
    for (src, dst), sent in payloads.items():  # the run worked: each delivered once
        assert recv_all(nodes[dst], "secret") == sent, (src, dst)
    mesh.close()  # the processes, their ephemerals and session keys are gone

    # -- what C saw --------------------------------------------------------------------
    capture = list(tap.frames)
    routed = tap.routed()
    peer_keys = {p.name: p.public_key for p in tap.notices if isinstance(p, PeerUp)}
    address = {n: nodes[n].info["address"] for n in nodes}
    ab = {address["a"], address["b"]}
    ac = {address["a"], address["c"]}
    # Session frames (the Routed payload), each once, with their end-to-end ends.
    frames: dict[bytes, tuple[str, str]] = {}
    for p in routed:
        if p.proto in (Proto.SESSION_HANDSHAKE, Proto.E2E_DATA):
            frames.setdefault(bytes(p.payload), (addr(p.src), addr(p.dst)))
    ab_frames = [f for f, ends in frames.items() if set(ends) == ab]
    ab_data = [f for f in ab_frames if f[1] == SessionData.TYPE]
    a_to_b = [f for f in ab_data if frames[f] == (address["a"], address["b"])]
    b_to_a = [f for f in ab_data if frames[f] == (address["b"], address["a"])]
    assert a_to_b and b_to_a, "C's capture holds no A-B data frame in some direction"

    def handshakes(ends: set[str]) -> list[tuple[HandshakeInit, HandshakeResp, str, str]]:
        """(msg1, msg2, initiator, responder) of each completed handshake between ``ends``."""
        inits = [(wire.decode_frame(f), *frames[f]) for f in frames
                 if set(frames[f]) == ends and f[1] == HandshakeInit.TYPE]
        resps = [wire.decode_frame(f) for f in frames
                 if set(frames[f]) == ends and f[1] == HandshakeResp.TYPE]
        return [(m1, m2, s, d) for m1, s, d in inits for m2 in resps
                if m2.receiver_index == m1.sender_index]

    hs_ab = handshakes(ab)
    assert len(hs_ab) >= 2, hs_ab  # the classical handshake and the PQ rekey
    indices = {i for m1, m2, _, _ in hs_ab for i in (m1.sender_index, m2.sender_index)}
    for f in ab_data:  # every data frame is under a keypair whose handshake C captured
        msg = wire.decode_frame(f)
        assert isinstance(msg, SessionData) and msg.receiver_index in indices
        assert struct.unpack_from("!IQ", f, 2) == (msg.receiver_index, msg.counter)

    # -- the attacker: C's key file, and the capture -------------------------------------
    c_key = load_key_file(c.run_dir / "node.key")
    assert c_key.node_id.hex() == c.node_id
    assert sorted(peer_keys) == ["a", "b"]  # A's and B's keys, as C's links proved them
    c_priv = x25519_private(c_key)
    statics = sorted(x25519_public(k) for k in [c_key.public_key, *peer_keys.values()])
    windows = {blob[i:i + 32] for blob in capture for i in range(len(blob) - 31)}
    know = Knowledge(privates=[c_priv], psks=[c_key.seed], raw_keys=[c_key.seed],
                     statics=statics)
    report = attack(ab_frames, know)
    stages = [report.stages[(m1.sender_index, m2.sender_index)] for m1, m2, _, _ in hs_ab]
    assert stages and set(stages) == {"nothing"}, report.stages
    assert len(report.stages) == len(hs_ab)  # each one attacked
    assert report.opened == [] and report.verified_keys == []
    # On every A-B data frame: C's seed and private key, and each DH of C's key with
    # each ephemeral of the A-B handshakes and each static, and its hash.
    points = 2 * len(hs_ab) + len(statics)
    assert report.tried >= len(ab_data) * (2 + 2 * points), report.tried
    # Every 32-byte string C saw (a key sent in clear would be one), on one frame per
    # keypair and direction: a right key opens every frame of its keypair.
    first = {}
    for f in ab_data:
        first.setdefault(struct.unpack_from("!I", f, 2)[0], f)
    for key in windows:
        for f in first.values():
            (counter,) = struct.unpack_from("!Q", f, 6)
            if _aead_open(key, f[14:], f[:14], counter) is not None:
                pytest.fail("a 32-byte string of the capture opens an A-B data frame")

    # -- the control: the same attacker does get into C's own handshakes ------------------
    hs_ac = handshakes(ac)
    to_c = [(m1, m2) for m1, m2, _, resp in hs_ac if resp == address["c"]]
    assert to_c, "no handshake A addressed to C crossed C"
    mine = attack([f for f, ends in frames.items() if set(ends) == ac], know)
    c_static = x25519_public(c_key.public_key)
    a_static = x25519_public(peer_keys["a"])
    for m1, m2 in to_c:
        assert mine.stages[(m1.sender_index, m2.sender_index)] == "timestamp"
        s_pub, stamp = open_msg1(m1, c_priv, c_static)
        assert s_pub == a_static
        secs = int.from_bytes(stamp[:8], "big") - TAI64_EPOCH
        assert t_start - 1 <= secs <= t_end + 1
    # C-initiated handshakes (if any) stay shut: their es needs C's ephemeral.
    assert all(mine.stages[(m1.sender_index, m2.sender_index)] == "nothing"
               for m1, m2, ini, _ in hs_ac if ini == address["c"])
    assert mine.opened == [] and "keys" not in mine.stages.values()

    # -- no payload byte anywhere C saw or kept -------------------------------------------
    blobs = capture + [p.read_bytes() for p in c.run_dir.rglob("*") if p.is_file()]
    secret = [t.encode() for (s, d), ts in payloads.items() if {s, d} == {"a", "b"} for t in ts]
    assert len(secret) == 6
    for n, text in enumerate(secret):
        for piece in {text[i:i + 16] for i in range(len(text) - 15)}:
            if any(piece in blob for blob in blobs):  # (the message names no secret)
                pytest.fail(f"a 16-byte piece of A-B payload #{n} is in what C saw")
