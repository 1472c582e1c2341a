"""Real nodes A-B-C: a SessionData packet captured on the wire and replayed is dropped.

The attacker sits on the underlay between B and C: C dials B through ``WireMitm``, a
TCP relay in this file that cuts the B->C byte stream into the link's real
length-prefixed frames (``sporenet/protocols/link/framing.py``), forwards each one unchanged, keeps
a copy, and can hold a frame back or write extra frames into the stream between two
frames. Links carry authenticated but unencrypted frames, so this is what anyone on
the path between two nodes can do. An injected frame then takes C's whole real
receive path: TCP carrier, link table, bus, overlay forwarder, session manager, and
the replay window of the keypair in C's process.

What a user sees: ``sporenet sessions --json`` (``replay_drops`` on the row of the
peer whose keypair the replay hit), the ``data_ReplayedFrame`` counter of
``GET /v1/sessions``, and ``sporenet recv``, which gets each message once.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading

import pytest

from sporenet.local_mesh import selected_routes as selected, wait_for
from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError
from sporenet.protocols.link.framing import FrameDecoder, encode_length_prefixed
from sporenet.protocols.routed import Proto, Routed
from sporenet.protocols.sessions.data import HEADER_SIZE, TAG_SIZE, SessionData

from test_node_sessions import cli, sessions as session_rows  # tests/ is on sys.path

pytestmark = pytest.mark.slow

SECRET = "walnut-cobalt-5512: said once, must arrive once"
AFTER = "after the replays"


def row_for(node, peer) -> dict | None:
    return next((r for r in session_rows(node) if r["address"] == peer.info["address"]), None)


def recv_all(node, topic: str, wait: float = 0.0) -> list[str]:
    out = cli("recv", "--api", node.info["api"], "--topic", topic, "--wait", str(wait), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line)["data"] for line in out.stdout.splitlines() if line.strip()]


class WireMitm:
    """A TCP relay in front of ``target`` that sees, holds and injects whole link frames
    in the target->client direction; the other direction is copied byte for byte."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.endpoint = "tcp://127.0.0.1:%d" % self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one writer at a time on the client socket
        self._client: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self.frames: list[bytes] = []  # every frame target->client, in stream order
        self.connections = 0
        self._hold = None  # predicate: hold back (do not forward) the next match
        self.held: bytes | None = None
        self.held_event = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            upstream = socket.create_connection(self._target, timeout=5)
            for s in (client, upstream):
                s.settimeout(0.2)
            with self._lock:
                self._sockets += [client, upstream]
                self._client = client
                self.connections += 1
            for fn, args in ((self._copy, (client, upstream)), (self._frames, (upstream, client))):
                t = threading.Thread(target=fn, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def _read(self, sock: socket.socket) -> bytes | None:
        while not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return None
            return data or None
        return None

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        while (data := self._read(src)) is not None:
            try:
                dst.sendall(data)
            except OSError:
                return

    def _frames(self, src: socket.socket, dst: socket.socket) -> None:
        decoder = FrameDecoder()
        while (data := self._read(src)) is not None:
            try:
                frames = decoder.feed(data)
            except DecodeError:
                return
            for frame in frames:
                frame = bytes(frame)
                with self._lock:
                    self.frames.append(frame)
                    if self._hold is not None and self._hold(frame):
                        self._hold, self.held = None, frame
                        self.held_event.set()
                        continue
                    try:
                        dst.sendall(encode_length_prefixed(frame))
                    except OSError:
                        return

    def hold_next(self, predicate) -> None:
        with self._lock:
            self.held, self._hold = None, predicate
            self.held_event.clear()

    def inject(self, frame: bytes) -> None:
        """Write ``frame`` into the target->client stream, between two whole frames."""
        with self._lock:
            assert self._client is not None, "no connection through the relay"
            self._client.sendall(encode_length_prefixed(frame))

    def close(self) -> None:
        self._stop.set()
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)


def e2e_data(frame: bytes, src, dst) -> Routed | None:
    """The routed E2E data packet from node ``src`` to node ``dst`` in ``frame``, if it is one."""
    if len(frame) < 2 or frame[1] != Routed.TYPE:
        return None
    packet = wire.decode_frame(frame)
    if (packet.proto != Proto.E2E_DATA
            or ipaddress.IPv6Address(packet.src) != ipaddress.IPv6Address(src.info["address"])
            or ipaddress.IPv6Address(packet.dst) != ipaddress.IPv6Address(dst.info["address"])):
        return None
    return packet


def test_replayed_session_data_is_dropped_counted_and_not_delivered_again(mesh):
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    mitm = WireMitm(b.endpoint)
    try:
        c = mesh.start_node("c", peers=[mitm.endpoint])
        wait_for(lambda: c.node_id in selected(a) and a.node_id in selected(c), 60,
                 "A and C to learn routes to each other (over B)")

        # A session with its PQ rekey done on both ends. Its two keypairs (classical,
        # now C's previous, and PQ, current) stay live for the whole test: the next
        # rekey comes after 120 s, a keypair dies at 180 s.
        out = cli("send", "--api", a.info["api"], "--to", c.info["address"], "--topic", "warm",
                  "warm-up")
        assert out.returncode == 0, out.stdout + out.stderr

        def settled() -> bool:
            ra, rc = row_for(a, c), row_for(c, a)
            return bool(ra and rc and ra["pq"] and rc["pq"] and ra["state"] == "established"
                        and rc["state"] == "established")
        wait_for(settled, 30, lambda: f"a PQ session on A and C: {session_rows(a)} / "
                                      f"{session_rows(c)}")
        assert recv_all(c, "warm") == ["warm-up"]
        assert row_for(c, a)["replay_drops"] == 0
        mark = len(mitm.frames)
        counters0 = c.api.get("/v1/sessions")["counters"]

        # 1. Hold back the data frame that carries SECRET (the only A->C data frame big
        #    enough), then put it on the wire ourselves: a fresh frame injected this way
        #    is accepted and delivered, so the injection path reaches C's sessions.
        big = HEADER_SIZE + TAG_SIZE + len(SECRET)
        mitm.hold_next(lambda f: (p := e2e_data(f, a, c)) is not None and len(p.payload) >= big)
        started = a.api.post("/v1/messages", {"to": c.info["address"], "topic": "replay",
                                              "data": SECRET, "deadline": 30})
        assert mitm.held_event.wait(20), "A's data frame never crossed B->C"
        held = mitm.held
        mitm.inject(held)
        packet = e2e_data(held, a, c)
        assert SECRET.encode() not in held and packet is not None
        assert wire.decode_frame(packet.payload).TYPE == SessionData.TYPE  # a 0x23 frame
        assert recv_all(c, "replay", wait=15) == [SECRET]
        wait_for(lambda: a.api.get("/v1/message", id=str(started["id"]))["state"] == "delivered",
                 15, "A to see SECRET acknowledged")
        counters1 = c.api.get("/v1/sessions")["counters"]
        drops = {k: v for k, v in counters1.items()
                 if (k.startswith("data_") or k == "malformed")
                 and v != counters0.get(k, 0)}
        assert drops == {}, f"the held-back frame was refused when injected: {drops}"
        assert row_for(c, a)["replay_drops"] == 0

        # 2. Replay: the same bytes again, and every other A->C data frame the relay saw
        #    since the link came up (the warm-up under the classical keypair, now C's
        #    previous one, PQ traffic and keepalives under the current one).
        #    Each one is dropped and counted.
        replays = [held] + [f for f in mitm.frames
                            if f != held and e2e_data(f, a, c) is not None]
        assert len(replays) >= 3 and any(mitm.frames.index(f) < mark for f in replays)
        for frame in replays:
            mitm.inject(frame)
        n = len(replays)
        wait_for(lambda: row_for(c, a)["replay_drops"] >= n, 20,
                 lambda: f"{n} replay drops on C's row for A: {row_for(c, a)}")
        counters2 = c.api.get("/v1/sessions")["counters"]
        assert row_for(c, a)["replay_drops"] == n
        assert counters2.get("data_ReplayedFrame", 0) - counters0.get("data_ReplayedFrame", 0) == n
        assert row_for(a, c)["replay_drops"] == 0  # nothing was replayed towards A

        # 3. Control: the held frame with a counter C never saw and the tag left as it was.
        #    It gets past the window to the AEAD, fails there, and moves nothing.
        sd = wire.decode_frame(packet.payload)
        forged = SessionData(sd.receiver_index, sd.counter + (1 << 40), sd.ciphertext)
        mitm.inject(wire.encode_frame(Routed(packet.src, packet.dst, packet.hop_limit,
                                             packet.hops_taken, packet.proto,
                                             wire.encode_frame(forged))))
        wait_for(lambda: c.api.get("/v1/sessions")["counters"].get("data_BadTag", 0)
                 > counters0.get("data_BadTag", 0), 20, "C to count the forged frame")
        assert row_for(c, a)["replay_drops"] == n

        # 4. The session still works (the forged counter did not slide C's window), and
        #    C's application got SECRET exactly once: nothing more is waiting.
        out = cli("send", "--api", a.info["api"], "--to", c.info["address"], "--topic", "replay",
                  "--timeout", "20", AFTER)
        assert out.returncode == 0, out.stdout + out.stderr
        assert recv_all(c, "replay", wait=10) == [AFTER]
        text = cli("sessions", "--api", c.info["api"])
        assert text.returncode == 0 and "replay drops" in text.stdout
        assert mitm.connections == 1  # every frame above went over the one B-C link
    finally:
        mitm.close()
