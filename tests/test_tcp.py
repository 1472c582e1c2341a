"""TcpCarrier specifics: bytes on the wire, peers that send garbage or reset,
IPv6 and host names. The behaviour every carrier shares is in test_carriers.py."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import pytest
from test_carriers import (  # tests/ is on sys.path (rootdir, no package)
    TIMEOUT,
    Recorder,
)

from sporenet.protocols.link.framing import encode_length_prefixed
from sporenet.protocols.wire import MAX_FRAME_SIZE
from sporenet.transports.carrier import Connected, DialFailed, Disconnected
from sporenet.transports.tcp import TcpCarrier, format_tcp_endpoint, parse_tcp_endpoint


@pytest.fixture
def listener():
    rec = Recorder()
    carrier = TcpCarrier(rec)
    endpoint = carrier.listen("tcp://127.0.0.1:0")
    yield carrier, rec, endpoint
    carrier.shutdown()


def poll_until(pred, what: str, timeout: float = TIMEOUT) -> None:
    """For conditions no event signals (an fd closing): re-check every 10 ms."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        tick.wait(0.01)


def raw_connect(endpoint: str) -> socket.socket:
    host, port = parse_tcp_endpoint(endpoint)
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    return sock


def accepted(rec: Recorder, n: int) -> int:
    """The conn id of the n-th inbound connection (1-based)."""
    conns = rec.wait_for(lambda ev: [e for e in ev if isinstance(e, Connected)][n - 1:],
                         f"inbound connection #{n}")
    return conns[0].conn_id


@pytest.mark.parametrize("endpoint,parsed", [
    ("tcp://127.0.0.1:80", ("127.0.0.1", 80)),
    ("tcp://[::1]:0", ("::1", 0)),
    ("tcp://node.example:7000", ("node.example", 7000)),
])
def test_parse_endpoint(endpoint, parsed):
    assert parse_tcp_endpoint(endpoint) == parsed
    assert format_tcp_endpoint(*parsed) == endpoint


@pytest.mark.parametrize("bad", ["127.0.0.1:80", "tcp://::1:80", "tcp://host", "tcp://:80",
                                 "tcp://h:99999", "tcp://h:-1", "udp://h:1", "tcp://[::1]80"])
def test_parse_endpoint_refuses(bad):
    with pytest.raises(ValueError):
        parse_tcp_endpoint(bad)


def test_wire_format_is_u32_big_endian_length_then_frame(listener):
    carrier, rec, endpoint = listener
    with raw_connect(endpoint) as raw:
        cid = accepted(rec, 1)
        assert carrier.send(cid, b"hello")
        got = b""
        while len(got) < 9:
            got += raw.recv(64)
        assert got == b"\x00\x00\x00\x05hello"
        raw.sendall(encode_length_prefixed(b"back") + encode_length_prefixed(b"again")[:3])
        assert rec.wait_frames(cid, 1) == [b"back"]


GARBAGE = {
    "random_bytes": b"\xfe" + random.Random(7).randbytes(4095),
    "oversize_prefix": struct.pack("!I", MAX_FRAME_SIZE + 1),
    "huge_prefix": b"\xff\xff\xff\xff",
    "zero_prefix": b"\x00\x00\x00\x00" + b"tail",
    "http_request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "good_then_zero": encode_length_prefixed(b"ok") + b"\x00\x00\x00\x00",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_disconnects_that_peer_only(listener, name):
    carrier, rec, endpoint = listener
    good = Recorder()
    client = TcpCarrier(good)
    try:
        client.dial(endpoint)
        c_good = good.first(Connected).conn_id
        s_good = accepted(rec, 1)
        with raw_connect(endpoint) as raw:
            s_bad = accepted(rec, 2)
            raw.sendall(GARBAGE[name])  # only the prefix: no waiting for a body
            gone = rec.first(Disconnected, conn_id=s_bad)
            assert gone.broken is True
            assert "length prefix" in gone.reason
        assert carrier.stats().malformed_frames == 1
        assert client.send(c_good, b"still here")
        assert rec.wait_frames(s_good, 1) == [b"still here"]
        assert carrier.send(s_good, b"and back")
        assert good.wait_frames(c_good, 1) == [b"and back"]
    finally:
        client.shutdown()


def test_end_of_stream_inside_a_frame_is_malformed(listener):
    carrier, rec, endpoint = listener
    with raw_connect(endpoint) as raw:
        cid = accepted(rec, 1)
        raw.sendall(struct.pack("!I", 100) + b"only ten b")
    gone = rec.first(Disconnected, conn_id=cid)
    assert gone.broken and "inside a frame" in gone.reason
    assert carrier.stats().malformed_frames == 1


def test_clean_end_of_stream_is_not_broken(listener):
    carrier, rec, endpoint = listener
    with raw_connect(endpoint) as raw:
        cid = accepted(rec, 1)
        raw.sendall(encode_length_prefixed(b"bye"))
    gone = rec.first(Disconnected, conn_id=cid)
    assert rec.frames(cid) == [b"bye"]
    assert (gone.broken, gone.reason) == (False, "closed by peer")


def test_reset_by_peer_is_broken(listener):
    carrier, rec, endpoint = listener
    raw = raw_connect(endpoint)
    cid = accepted(rec, 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # linger 0: RST instead of FIN
    gone = rec.first(Disconnected, conn_id=cid)
    assert gone.broken is True
    assert carrier.stats().malformed_frames == 0


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_loopback():
    a, b = Recorder(), Recorder()
    ca, cb = TcpCarrier(a), TcpCarrier(b)
    try:
        endpoint = cb.listen("tcp://[::1]:0")
        assert endpoint.startswith("tcp://[::1]:")
        ca.dial(endpoint)
        conn = a.first(Connected).conn_id
        assert b.first(Connected).remote.startswith("tcp://[::1]:")
        ca.send(conn, b"v6")
        assert b.wait_frames(b.first(Connected).conn_id, 1) == [b"v6"]
    finally:
        ca.shutdown()
        cb.shutdown()


def test_dial_by_host_name_resolves_off_the_io_thread():
    threads = set(threading.enumerate())
    a, b = Recorder(), Recorder()
    ca, cb = TcpCarrier(a), TcpCarrier(b)
    try:
        bound = cb.listen("tcp://localhost:0")  # whichever family localhost is here
        port = parse_tcp_endpoint(bound)[1]
        ca.dial(f"tcp://localhost:{port}")
        assert a.first(Connected).remote == f"tcp://localhost:{port}"
        ca.dial("tcp://no-such-host.invalid:1")
        assert "resolve" in a.first(DialFailed).reason
    finally:
        ca.shutdown()
        cb.shutdown()
    assert set(threading.enumerate()) == threads  # the resolver thread is joined too


def test_dial_times_out_when_the_listener_never_answers():
    # A listener whose accept queue is full drops further SYNs (Linux default,
    # tcp_abort_on_overflow=0), so a connect neither succeeds nor is refused.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            rec = Recorder()
            carrier = TcpCarrier(rec, dial_timeout=0.5)
            try:
                carrier.dial(f"tcp://127.0.0.1:{port}")
                failed = rec.first(DialFailed)
                if "timed out" not in failed.reason:
                    pytest.skip(f"this kernel answered the SYN: {failed.reason}")
            finally:
                carrier.shutdown()
        finally:
            for s in fillers:
                s.close()


def test_close_towards_a_peer_that_never_reads_gives_up_after_linger():
    a, b = Recorder(), Recorder()
    ca, cb = TcpCarrier(a, linger=0.3), TcpCarrier(b)
    try:
        ca.dial(cb.listen("tcp://127.0.0.1:0"))
        conn = a.first(Connected).conn_id
        peer = b.first(Connected).conn_id
        cb.pause_reading(peer)
        while ca.send(conn, bytes(65536)):
            pass
        fds = len(os.listdir("/proc/self/fd"))
        ca.close(conn, "bye")
        assert a.first(Disconnected).reason == "bye"
        poll_until(lambda: len(os.listdir("/proc/self/fd")) < fds, "lingering socket closed")
    finally:
        ca.shutdown()
        cb.shutdown()


# ----- connections before their hello -------------------------------------------------

def connect_from(source: str, endpoint: str) -> socket.socket:
    host, port = parse_tcp_endpoint(endpoint)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(TIMEOUT)
    sock.connect((host, port))
    return sock


def test_one_source_over_its_share_loses_its_oldest_not_others():
    rec = Recorder()
    carrier = TcpCarrier(rec, max_pending=8, max_pending_per_source=3)
    endpoint = carrier.listen("tcp://127.0.0.1:0")
    socks = []
    try:
        socks.append(connect_from("127.0.0.1", endpoint))   # a quiet peer
        peer = accepted(rec, 1)
        for _ in range(5):                                  # an opener on another address
            socks.append(connect_from("127.0.0.2", endpoint))
        accepted(rec, 6)
        rec.wait_for(lambda ev: [e for e in ev if isinstance(e, Disconnected)][1:], "two evictions")
        gone = [e for e in rec.events if isinstance(e, Disconnected)]
        assert all("pre-hello limit" in e.reason for e in gone)
        conns = [e.conn_id for e in rec.events if isinstance(e, Connected)]
        assert {e.conn_id for e in gone} == set(conns[1:3])   # the opener's two oldest
        assert peer not in {e.conn_id for e in gone}
        stats = carrier.stats()
        assert stats.pending_evicted == 2 and stats.pending == 4
        # the evicted sockets are closed at once: the opener reads end of stream
        socks[1].settimeout(TIMEOUT)
        assert socks[1].recv(16) == b""
    finally:
        for s in socks:
            s.close()
        carrier.shutdown()


def test_a_confirmed_connection_no_longer_counts():
    rec = Recorder()
    carrier = TcpCarrier(rec, max_pending=2, max_pending_per_source=2)
    endpoint = carrier.listen("tcp://127.0.0.1:0")
    socks = []
    try:
        socks.append(raw_connect(endpoint))
        first = accepted(rec, 1)
        carrier.confirm(first)
        poll_until(lambda: carrier.stats().pending == 0, "confirm to take effect")
        for n in range(2, 5):
            socks.append(raw_connect(endpoint))
            accepted(rec, n)
        rec.wait_for(lambda ev: any(isinstance(e, Disconnected) for e in ev), "one eviction")
        assert [e.conn_id for e in rec.events if isinstance(e, Disconnected)] != [first]
        assert first in carrier.stats().conns          # the confirmed one survived
        assert carrier.stats().pending_evicted == 1
    finally:
        for s in socks:
            s.close()
        carrier.shutdown()


_EMFILE_SCRIPT = r"""
import os, resource, socket, sys, time, json
from sporenet.transports.tcp import TcpCarrier
events = []
carrier = TcpCarrier(events.append)
endpoint = carrier.listen("tcp://127.0.0.1:0")
port = int(endpoint.rsplit(":", 1)[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
hog = []
try:
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
# connect from a forked child so our own table stays full
pid = os.fork()
if pid == 0:
    os.close(hog.pop())
    s = socket.create_connection(("127.0.0.1", port))
    time.sleep(3)
    os._exit(0)
t0, c0 = time.monotonic(), time.process_time()
time.sleep(1.0)
busy = time.process_time() - c0
paused = carrier.stats().accept_paused
for fd in hog[:8]:
    os.close(fd)
deadline = time.monotonic() + 5
while not any(type(e).__name__ == "Connected" for e in events) and time.monotonic() < deadline:
    time.sleep(0.01)
connected = any(type(e).__name__ == "Connected" for e in events)
carrier.shutdown()
os.waitpid(pid, 0)
print(json.dumps({"busy": busy, "paused": paused, "connected": connected}))
"""


def test_out_of_descriptors_backs_off_instead_of_spinning_and_recovers():
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _EMFILE_SCRIPT], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # a spinning loop burns the whole second; the back-off (5 ms doubling to 1 s) a few ms
    assert got["busy"] < 0.3, got
    assert 1 <= got["paused"] <= 12, got
    assert got["connected"], got
