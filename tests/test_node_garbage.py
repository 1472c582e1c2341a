"""A real node fed garbage on raw TCP sockets: it drops each bad connection, counts it,
and keeps its real link up and measured."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

from sporenet.config import parse_endpoint
from sporenet.node import BUILTIN_AGENTS
from sporenet.local_mesh import LocalMesh, wait_for
from sporenet.protocols import wire
from sporenet.protocols.link.framing import FrameDecoder, encode_length_prefixed
from sporenet.protocols.identity import Identity
from sporenet.protocols.link.messages import Close, CloseCode, Hello, HelloProof, hello_transcript
from sporenet.protocols.wire import MAX_FRAME_SIZE

pytestmark = pytest.mark.slow

FAST_PROBES = ("--probe-interval", "0.2")
DEADLINE = 10.0


def peers_of(node) -> dict[str, dict]:
    return {p["node_id"]: p for p in node.api.peers()["peers"]}


def counters(node) -> dict[str, int]:
    return node.api.status()["counters"]


def counter(node, name: str) -> int:
    return counters(node).get(name, 0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    mesh = LocalMesh(tmp_path_factory.mktemp("garbage"), extra_args=FAST_PROBES)
    try:
        a = mesh.start_node("a")
        b = mesh.start_node("b", peers=[a.endpoint])
        for x, y in ((a, b), (b, a)):
            wait_for(lambda: (peers_of(x).get(y.node_id) or {}).get("rtt_ms") is not None,
                     20, f"{x.name} to measure {y.name}")
        yield a, b
    finally:
        mesh.close()


class LinkSnapshot:
    """b as a sees it (and a as b sees it) before the garbage."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.taken = time.monotonic()
        self.on_a = peers_of(a)[b.node_id]
        self.on_b = peers_of(b)[a.node_id]

    def assert_still_up(self):
        """Same link (not re-made), still probed: since_s grew, more RTT samples came."""
        a, b = self.a, self.b
        assert a.alive() and b.alive(), a.log_tail()

        def fresh():
            pa, pb = peers_of(a), peers_of(b)
            if set(pa) != {b.node_id} or set(pb) != {a.node_id}:
                raise AssertionError(f"peer sets changed: {list(pa)} / {list(pb)}")
            return (pa[b.node_id]["samples"] >= self.on_a["samples"] + 3
                    and pb[a.node_id]["samples"] >= self.on_b["samples"] + 3) and (pa, pb)

        pa, pb = wait_for(fresh, DEADLINE, "fresh RTT samples on the a-b link")
        elapsed = time.monotonic() - self.taken
        for before, now in ((self.on_a, pa[b.node_id]), (self.on_b, pb[a.node_id])):
            # since_s keeps growing: the link was never dropped and re-made.
            assert now["since_s"] >= before["since_s"] + elapsed - 0.5
            assert now["rtt_ms"] is not None and 0 < now["rtt_ms"] < 1000
        assert a.api.status()["agents"] == {name: "running" for name in BUILTIN_AGENTS}


def raw_socket(node) -> socket.socket:
    _, host, port = parse_endpoint(node.endpoint)
    s = socket.create_connection((host, port), timeout=DEADLINE)
    s.settimeout(DEADLINE)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the node sends until it closes; fails if it keeps the socket open."""
    got = bytearray()
    deadline = time.monotonic() + DEADLINE
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return bytes(got)
        except TimeoutError:
            raise AssertionError(f"node kept the connection open for {DEADLINE}s") from None
        if not chunk:
            return bytes(got)
        got += chunk


def frames_of(data: bytes) -> list[wire.Message]:
    return [wire.decode_frame(f) for f in FrameDecoder().feed(data)]


def read_hello(s: socket.socket) -> Hello:
    decoder = FrameDecoder()
    while True:
        chunk = s.recv(65536)
        assert chunk, "node closed before its hello"
        frames = decoder.feed(chunk)
        if frames:
            assert len(frames) == 1 and decoder.buffered == 0
            msg = wire.decode_frame(frames[0])
            assert isinstance(msg, Hello)
            return msg


def send_frame(s: socket.socket, msg: wire.Message) -> None:
    s.sendall(encode_length_prefixed(wire.encode_frame(msg)))


def expect_counter(node, name: str, before: int) -> None:
    wait_for(lambda: counter(node, name) > before, DEADLINE,
             f"counter {name} to grow past {before}")


def random_garbage() -> bytes:
    data = random.Random(1).randbytes(4096)
    assert struct.unpack("!I", data[:4])[0] > MAX_FRAME_SIZE  # the seed gives a bad prefix
    return data


STREAM_GARBAGE = {
    "random_bytes": random_garbage(),
    "length_over_cap": b"\xff\xff\xff\xff" + b"x" * 64,
    "length_just_over_cap": struct.pack("!I", MAX_FRAME_SIZE + 1) + b"x" * 64,
    "zero_length": b"\x00\x00\x00\x00" + b"x" * 64,
}


@pytest.mark.parametrize("name", list(STREAM_GARBAGE))
def test_garbage_stream_is_dropped_and_counted(pair, name):
    a, b = pair
    snap = LinkSnapshot(a, b)
    before = counter(a, "malformed_streams")
    with raw_socket(a) as s:
        s.sendall(STREAM_GARBAGE[name])
        read_until_closed(s)
    expect_counter(a, "malformed_streams", before)
    snap.assert_still_up()


def test_undecodable_frame_is_refused_and_counted(pair):
    """Framing is fine, the frame inside is not: the link table refuses it."""
    a, b = pair
    snap = LinkSnapshot(a, b)
    before = counter(a, "malformed")
    with raw_socket(a) as s:
        read_hello(s)
        s.sendall(encode_length_prefixed(b"\x01"))  # shorter than a frame header
        msgs = frames_of(read_until_closed(s))
    assert msgs and isinstance(msgs[-1], Close) and msgs[-1].code == CloseCode.PROTOCOL_ERROR
    expect_counter(a, "malformed", before)
    snap.assert_still_up()


def bad_proof(how: str, me: Identity, my_nonce: bytes, theirs: Hello) -> HelloProof:
    right = hello_transcript(me.public_key, my_nonce, theirs.public_key, theirs.nonce)
    if how == "wrong_transcript":  # the challenge of another session
        return HelloProof(me.sign(hello_transcript(me.public_key, my_nonce, theirs.public_key,
                                                   bytes(16))))
    if how == "other_key":  # the right transcript, signed by someone else
        return HelloProof(Identity(b"\x42" * 32).sign(right))
    assert how == "right"
    return HelloProof(me.sign(right))


def handshake(node, how: str, me: Identity) -> socket.socket:
    s = raw_socket(node)
    theirs = read_hello(s)
    my_nonce = random.Random(how).randbytes(16)
    send_frame(s, Hello(me.public_key, my_nonce, "", "stranger"))
    send_frame(s, bad_proof(how, me, my_nonce, theirs))
    return s


@pytest.mark.parametrize("how", ["wrong_transcript", "other_key"])
def test_bad_hello_proof_is_refused_and_counted(pair, how):
    a, b = pair
    snap = LinkSnapshot(a, b)
    before = counter(a, "auth_failed")
    stranger = Identity(b"\x17" * 32)
    with handshake(a, how, stranger) as s:
        msgs = frames_of(read_until_closed(s))
    # a answered our hello with its proof, then refused ours with a Close.
    assert [type(m) for m in msgs] == [HelloProof, Close]
    assert msgs[-1].code == CloseCode.AUTH_FAILED
    expect_counter(a, "auth_failed", before)
    assert stranger.node_id.hex() not in peers_of(a)
    snap.assert_still_up()


def test_handshake_done_right_makes_a_peer(pair):
    """The control for the test above: the same steps with a good proof are accepted."""
    a, b = pair
    stranger = Identity(b"\x18" * 32)
    before = counter(a, "auth_failed")
    with handshake(a, "right", stranger) as s:
        wait_for(lambda: stranger.node_id.hex() in peers_of(a), DEADLINE,
                 "a to accept the stranger")
        assert peers_of(a)[stranger.node_id.hex()]["name"] == "stranger"
    wait_for(lambda: stranger.node_id.hex() not in peers_of(a), DEADLINE, "the stranger to be gone")
    assert counter(a, "auth_failed") == before
    assert set(peers_of(a)) == {b.node_id}


def test_garbage_connections_never_show_as_peers(pair):
    a, b = pair
    snap = LinkSnapshot(a, b)
    socks = []
    before = counter(a, "handshake_timeouts")
    try:
        # Several connections held open at once, each stuck somewhere in the handshake.
        socks.append(raw_socket(a))  # says nothing
        s = raw_socket(a)
        s.sendall(b"\x00\x00")  # half a length prefix
        socks.append(s)
        s = raw_socket(a)
        read_hello(s)
        send_frame(s, Hello(Identity(b"\x19" * 32).public_key, bytes(16), "tcp://127.0.0.1:9", "x"))
        socks.append(s)  # hello, no proof
        seen = set()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # sampled for a while, not one look
            seen |= set(peers_of(a))
            assert a.api.status()["peers"] == 1
        assert seen == {b.node_id}
        # Unauthenticated connections time out (5 s handshake timeout) and are counted.
        for s in socks:
            read_until_closed(s)
        wait_for(lambda: counter(a, "handshake_timeouts") >= before + 3, DEADLINE,
                 "three handshake timeouts")
    finally:
        for s in socks:
            s.close()
    assert set(peers_of(a)) == {b.node_id}
    snap.assert_still_up()
