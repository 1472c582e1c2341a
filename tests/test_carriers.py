"""Carrier conformance suite (trio's ``check_two_way_stream`` idea): every carrier
in ``transports/`` must pass every test here, against real threads and sockets.

Choices the suite pins down (see ``sporenet/transports/carrier.py``):
- an empty frame or one over ``max_frame`` is refused by ``send`` with
  ``LocalProtocolError`` (caller misuse), never sent;
- backpressure is shown by pausing the receiver (``pause_reading``): for TCP the
  socket leaves the read set, the kernel buffers fill, TCP flow control stops the
  sender's writes, and its bounded queue fills until ``send`` returns False; for
  memory the paused connection's frames stay queued and count against the sender.

Adding a carrier: add a branch to ``Harness`` and a param to the ``harness`` fixture.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.wire import MAX_FRAME_SIZE
from sporenet.transports.carrier import (Carrier, Connected, DialFailed, Disconnected,
                                         FrameReceived)
from sporenet.transports.errors import TransportClosed, TransportError
from sporenet.transports.memory import MemoryCarrier, MemoryNetwork
from sporenet.transports.carriers import Carriers
from sporenet.transports.tcp import TcpCarrier
from sporenet.transports.udp import UdpCarrier

TIMEOUT = 20.0  # generous: two cores are shared by several test runs


class Recorder:
    """The ``on_event`` callback: records events; tests wait on them with a deadline."""

    def __init__(self) -> None:
        self.events: list = []
        self.cond = threading.Condition()
        self.hook = None  # optional extra callback, run on the carrier thread

    def __call__(self, event) -> None:
        if self.hook is not None:
            self.hook(event)
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, pred, what: str, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (result := pred(self.events)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; last: {self.events[-3:]}")
                self.cond.wait(left)
            return result

    def first(self, kind, what: str = "", **match):
        def pred(events):
            return next((e for e in events if isinstance(e, kind)
                         and all(getattr(e, k) == v for k, v in match.items())), None)
        return self.wait_for(pred, what or f"{kind.__name__} {match}")

    def frames(self, conn_id: int) -> list[bytes]:
        with self.cond:
            return [e.frame for e in self.events
                    if isinstance(e, FrameReceived) and e.conn_id == conn_id]

    def wait_frames(self, conn_id: int, n: int) -> list[bytes]:
        self.wait_for(lambda ev: len(self.frames(conn_id)) >= n, f"{n} frames on {conn_id}")
        return self.frames(conn_id)


class Side:
    def __init__(self, carrier, rec: Recorder) -> None:
        self.carrier, self.rec = carrier, rec


class Harness:
    """Makes carriers of one kind and connected pairs of them."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.net = MemoryNetwork()
        self.sides: list[Side] = []

    def side(self, **kw) -> Side:
        rec = Recorder()
        if self.kind == "tcp":
            carrier = TcpCarrier(rec, **kw)
        elif self.kind == "udp":
            carrier = UdpCarrier(rec, **kw)
        elif self.kind == "both":  # the link agent's mux; its endpoints here are udp://
            carrier = Carriers(rec, {"tcp": lambda cb: TcpCarrier(cb, **kw),
                                     "udp": lambda cb: UdpCarrier(cb, **kw)})
        else:
            carrier = MemoryCarrier(rec, self.net, **kw)
        self.sides.append(Side(carrier, rec))
        return self.sides[-1]

    def any_endpoint(self) -> str:
        return {"tcp": "tcp://127.0.0.1:0", "udp": "udp://127.0.0.1:0",
                "both": "udp://127.0.0.1:0"}.get(self.kind, "mem://")

    def nowhere(self) -> str:
        if self.kind == "mem":
            return "mem://nobody-here"
        scheme = "udp" if self.kind in ("udp", "both") else "tcp"
        kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as s:  # a port that was free a moment ago
            s.bind(("127.0.0.1", 0))
            return f"{scheme}://127.0.0.1:{s.getsockname()[1]}"

    def pair(self, **kw) -> tuple[Side, Side, int, int]:
        """(dialer, listener, dialer's conn id, listener's conn id), connected."""
        a, b = self.side(**kw), self.side(**kw)
        endpoint = b.carrier.listen(self.any_endpoint())
        a.carrier.dial(endpoint)
        ca = a.rec.first(Connected, "dialer connected").conn_id
        cb = b.rec.first(Connected, "listener connected").conn_id
        return a, b, ca, cb

    def shutdown(self) -> None:
        for s in self.sides:
            s.carrier.shutdown()


@pytest.fixture(params=["tcp", "udp", "both", "mem"])
def harness(request):
    h = Harness(request.param)
    yield h
    h.shutdown()


def test_carrier_implements_the_protocol(harness):
    assert isinstance(harness.side().carrier, Carrier)


def test_connect_events_carry_direction_and_remote(harness):
    a, b = harness.side(), harness.side()
    endpoint = b.carrier.listen(harness.any_endpoint())
    assert endpoint.startswith(harness.any_endpoint().split("//")[0] + "//") and not endpoint.endswith(":0")
    a.carrier.dial(endpoint)
    out = a.rec.first(Connected)
    inc = b.rec.first(Connected)
    assert out.outbound is True and out.remote == endpoint
    assert inc.outbound is False and inc.remote.startswith(harness.any_endpoint().split("//")[0] + "//")
    assert out.conn_id != inc.conn_id


def test_frames_arrive_in_order_both_ways(harness):
    a, b, ca, cb = harness.pair()
    for i in range(200):
        assert a.carrier.send(ca, b"a%d" % i)
        assert b.carrier.send(cb, b"b%d" % i)
    assert b.rec.wait_frames(cb, 200) == [b"a%d" % i for i in range(200)]
    assert a.rec.wait_frames(ca, 200) == [b"b%d" % i for i in range(200)]


def test_smallest_and_largest_frames(harness):
    a, b, ca, cb = harness.pair()
    big = bytes(range(256)) * (MAX_FRAME_SIZE // 256)
    big += b"z" * (MAX_FRAME_SIZE - len(big))
    assert a.carrier.send(ca, b"\x00")
    assert a.carrier.send(ca, big)
    assert a.carrier.send(ca, b"\xff")
    assert b.rec.wait_frames(cb, 3) == [b"\x00", big, b"\xff"]


def test_frame_over_the_cap_or_empty_is_refused_by_send(harness):
    a, b, ca, cb = harness.pair()
    with pytest.raises(LocalProtocolError):
        a.carrier.send(ca, b"x" * (MAX_FRAME_SIZE + 1))
    with pytest.raises(LocalProtocolError):
        a.carrier.send(ca, b"")
    assert a.carrier.send(ca, b"still fine")  # the connection is unharmed
    assert b.rec.wait_frames(cb, 1) == [b"still fine"]


def test_many_frames_quickly(harness):
    a, b, ca, cb = harness.pair()
    n = 20_000
    sent = [b"%06d" % i + b"." * 94 for i in range(n)]
    for frame in sent:
        assert a.carrier.send(ca, frame)  # 2 MB in all: fits the 4 MiB queue
    assert b.rec.wait_frames(cb, n) == sent
    st = a.carrier.stats()
    assert st.frames_out == n and st.drops == 0


def test_backpressure_send_returns_false_then_recovers(harness):
    a, b, ca, cb = harness.pair(send_buffer=1024 * 1024)
    b.carrier.pause_reading(cb)
    frame = b"p" * 65536
    accepted = 0
    deadline = time.monotonic() + TIMEOUT
    while a.carrier.send(ca, frame):
        accepted += 1
        assert time.monotonic() < deadline, "send never reported a full queue"
    assert a.carrier.stats().conns[ca].drops == 1
    b.carrier.resume_reading(cb)
    assert len(b.rec.wait_frames(cb, accepted)) == accepted
    assert a.rec.wait_for(lambda ev: a.carrier.send(ca, b"after"), "queue drained")
    b.rec.wait_frames(cb, accepted + 1)
    assert b.rec.frames(cb)[-1] == b"after"


@pytest.mark.parametrize("closer", ["dialer", "listener"])
def test_close_from_either_side_disconnects_both(harness, closer):
    a, b, ca, cb = harness.pair()
    (us, uid), (them, tid) = ((a, ca), (b, cb)) if closer == "dialer" else ((b, cb), (a, ca))
    us.carrier.close(uid, "done here")
    mine = us.rec.first(Disconnected, conn_id=uid)
    theirs = them.rec.first(Disconnected, conn_id=tid)
    assert (mine.reason, mine.broken) == ("done here", False)
    assert theirs.broken is False and theirs.reason
    with pytest.raises(TransportClosed):
        us.carrier.send(uid, b"x")
    with pytest.raises(TransportClosed):
        them.carrier.send(tid, b"x")
    us.carrier.close(uid)  # idempotent
    them.carrier.close(tid)
    us.carrier.close(123456789)
    assert sum(isinstance(e, Disconnected) for e in us.rec.events) == 1


def test_frames_queued_before_close_reach_the_peer(harness):
    a, b, ca, cb = harness.pair()
    sent = [bytes([i % 251 + 1]) * 60_000 for i in range(40)]  # 2.4 MB, mostly still queued
    for frame in sent:
        assert a.carrier.send(ca, frame)
    a.carrier.close(ca, "bye")
    b.rec.first(Disconnected, conn_id=cb)
    assert b.rec.frames(cb) == sent
    kinds = [type(e) for e in b.rec.events]
    assert kinds[0] is Connected and kinds[-1] is Disconnected


def test_send_to_unknown_connection_raises(harness):
    a = harness.side()
    with pytest.raises(TransportClosed):
        a.carrier.send(987654321, b"x")


def test_dial_to_nowhere_fails(harness):
    a = harness.side()
    nowhere = harness.nowhere()
    a.carrier.dial(nowhere)
    failed = a.rec.first(DialFailed)
    assert failed.endpoint == nowhere and failed.reason
    assert a.carrier.stats().dial_failures == 1


@pytest.mark.parametrize("endpoint", ["", "nonsense", "other://1.2.3.4:5", "tcp://", "udp://",
                                      "mem://a/b"])
def test_bad_endpoint_dial_fails_without_raising(harness, endpoint):
    if endpoint.startswith(harness.kind + "://") and endpoint != f"{harness.kind}://":
        pytest.skip("a well-formed endpoint of this carrier")
    a = harness.side()
    a.carrier.dial(endpoint)
    assert a.rec.first(DialFailed).endpoint == endpoint


def test_listen_on_taken_endpoint_raises(harness):
    a, b = harness.side(), harness.side()
    endpoint = a.carrier.listen(harness.any_endpoint())
    with pytest.raises(TransportError):
        b.carrier.listen(endpoint)
    with pytest.raises(LocalProtocolError):
        b.carrier.listen("bogus")


def test_callback_may_call_the_carrier(harness):
    a, b = harness.side(), harness.side()

    def echo(event):
        if isinstance(event, FrameReceived):
            b.carrier.send(event.conn_id, event.frame.upper())

    b.rec.hook = echo
    a.carrier.dial(b.carrier.listen(harness.any_endpoint()))
    ca = a.rec.first(Connected).conn_id
    for word in (b"ping", b"pong", b"spore"):
        a.carrier.send(ca, word)
    assert a.rec.wait_frames(ca, 3) == [b"PING", b"PONG", b"SPORE"]


def test_stats_count_frames_bytes_and_connections(harness):
    a, b, ca, cb = harness.pair()
    for _ in range(10):
        a.carrier.send(ca, b"x" * 100)
    b.rec.wait_frames(cb, 10)
    sa, sb = a.carrier.stats(), b.carrier.stats()
    assert sa.dialled == 1 and sb.accepted == 1
    assert sa.conns[ca].frames_out == 10 and sa.conns[ca].outbound
    b.rec.wait_for(lambda ev: b.carrier.stats().conns[cb].frames_in == 10, "stats")
    assert sb.frames_in == 10 and sb.bytes_in >= 1000
    a.carrier.close(ca)
    b.rec.first(Disconnected)
    assert a.carrier.stats().frames_out == 10  # kept after the connection is gone
    assert b.carrier.stats().conns == {}


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_shutdown_disconnects_and_leaves_no_thread_or_fd(harness):
    threads, fds = set(threading.enumerate()), _fd_count()
    a, b, ca, cb = harness.pair()
    a.carrier.dial(harness.nowhere())
    a.carrier.send(ca, b"last words")
    a.carrier.shutdown()
    assert a.rec.first(Disconnected, conn_id=ca).reason == "shutdown"
    b.rec.first(Disconnected, conn_id=cb)
    with pytest.raises(TransportClosed):
        a.carrier.send(ca, b"x")
    with pytest.raises(TransportClosed):
        a.carrier.dial(harness.nowhere())
    a.carrier.shutdown()  # idempotent
    b.carrier.shutdown()
    assert set(threading.enumerate()) == threads
    assert _fd_count() == fds


def test_send_is_thread_safe(harness):
    a, b, ca, cb = harness.pair()
    per_thread, n_threads = 2_000, 4

    def blast(t: int) -> None:
        for i in range(per_thread):
            assert a.carrier.send(ca, b"%d:%d" % (t, i))

    workers = [threading.Thread(target=blast, args=(t,)) for t in range(n_threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    frames = b.rec.wait_frames(cb, per_thread * n_threads)
    for t in range(n_threads):  # each sender's frames arrive whole and in its order
        mine = [f for f in frames if f.startswith(b"%d:" % t)]
        assert mine == [b"%d:%d" % (t, i) for i in range(per_thread)]


def test_a_stalled_connection_does_not_stall_the_others(harness):
    """Per-connection backpressure: one peer that stops reading fills only its own
    queue; the sender's other connections keep moving."""
    a, slow = harness.side(send_buffer=1024 * 1024), harness.side()
    fast = harness.side()
    a.carrier.dial(slow.carrier.listen(harness.any_endpoint()))
    c_slow = a.rec.first(Connected, "link to the slow peer").conn_id
    s_id = slow.rec.first(Connected).conn_id
    slow.carrier.pause_reading(s_id)
    a.carrier.dial(fast.carrier.listen(harness.any_endpoint()))
    c_fast = a.rec.wait_for(lambda ev: next((e.conn_id for e in ev if isinstance(e, Connected)
                                             and e.conn_id != c_slow), None), "link to the fast peer")
    f_id = fast.rec.first(Connected).conn_id
    deadline = time.monotonic() + TIMEOUT
    while a.carrier.send(c_slow, b"s" * 65536):  # until the slow link's queue is full
        assert time.monotonic() < deadline, "the slow link's queue never filled"
    for i in range(2_000):
        assert a.carrier.send(c_fast, b"f%d" % i)
    assert fast.rec.wait_frames(f_id, 2_000) == [b"f%d" % i for i in range(2_000)]
    slow.carrier.resume_reading(s_id)
    assert slow.rec.wait_for(lambda ev: len(slow.rec.frames(s_id)) > 0, "the slow peer to read")


def test_ip_data_sent_in_bulk_arrives_whole_beside_the_stream(harness):
    """What the data path sends (``send_bulk`` where a carrier has it, else ``send``):
    every frame arrives once and whole (a UDP carrier sends superpackets as chunks,
    which may overtake each other), and stream frames sent meanwhile still arrive in
    order."""
    a, b, ca, cb = harness.pair()
    b.carrier.confirm(cb)  # the link hello: chunks before it are not taken
    bulk = getattr(a.carrier, "send_bulk", None) or a.carrier.send
    sizes = (60, 1_400, 20_000, 62_100, MAX_FRAME_SIZE - 2)
    sent = [i.to_bytes(2, "big") + os.urandom(sizes[i % len(sizes)]) for i in range(200)]
    for i, frame in enumerate(sent):
        while not bulk(ca, frame):
            time.sleep(0.001)
        if i % 20 == 0:
            assert a.carrier.send(ca, b"s%d" % i)
    stream = [b"s%d" % i for i in range(0, 200, 20)]
    got = b.rec.wait_frames(cb, len(sent) + len(stream))
    assert sorted(f for f in got if f not in stream) == sorted(sent)
    assert [f for f in got if f in stream] == stream
    own = getattr(b.carrier, "counters", None)
    if harness.kind in ("udp", "both"):
        counts = own()
        assert counts.get("chunked_in", counts.get("udp_chunked_in", 0)) >= 160, counts
