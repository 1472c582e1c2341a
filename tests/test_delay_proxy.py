"""The userspace delay proxy: RTT, ordering under jitter, runtime changes, cuts, clean stop,
and two real ``sporenet up`` nodes linked through it."""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from sporenet.local_mesh import LocalMesh, wait_for
from sporenet.protocols.errors import LocalProtocolError
from sporenet.transports.delay_proxy import DelayProxy
from sporenet.transports.errors import TransportClosed
from sporenet.transports.tcp import parse_tcp_endpoint

# Scheduling slack on a loaded 2-core box, on top of the configured delay.
SLACK_S = 0.050


class EchoServer:
    """A thread-per-connection echo server on a kernel-chosen loopback port."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._accepter.join(5)
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


@pytest.fixture
def echo():
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def make_proxy():
    proxies: list[DelayProxy] = []

    def make(target: str, delay_ms: float, **kw) -> DelayProxy:
        proxy = DelayProxy("tcp://127.0.0.1:0", target, delay_ms, **kw)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.stop()


def connect(endpoint: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(parse_tcp_endpoint(endpoint), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def rtts(sock: socket.socket, count: int) -> list[float]:
    out = []
    for i in range(count):
        t0 = time.monotonic()
        sock.sendall(bytes([i % 256]))
        assert recv_exactly(sock, 1) == bytes([i % 256])
        out.append(time.monotonic() - t0)
    return out


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer closed or reset ``sock``; bytes before the EOF are skipped."""
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


def refused(endpoint: str) -> bool:
    """True if a connection to ``endpoint`` is reset or closed at once (the reset may even
    beat ``connect()`` back on loopback)."""
    try:
        sock = connect(endpoint)
    except (ConnectionResetError, ConnectionRefusedError):
        return True
    with sock:
        return closed_by_peer(sock)


def test_rtt_is_twice_the_one_way_delay(echo, make_proxy):
    proxy = make_proxy(echo.endpoint, 30)
    assert proxy.endpoint.startswith("tcp://127.0.0.1:") and proxy.delay_ms == 30
    with connect(proxy.endpoint) as sock:
        samples = rtts(sock, 8)
    assert min(samples) >= 0.060
    assert statistics.median(samples) < 0.060 + SLACK_S


def test_bytes_arrive_intact_and_in_order_with_jitter(echo, make_proxy):
    proxy = make_proxy(echo.endpoint, 5, jitter_ms=20, rng_seed=7)
    payload = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    received = bytearray()
    with connect(proxy.endpoint, timeout=20) as sock:
        reader = threading.Thread(target=lambda: received.extend(recv_exactly(sock, len(payload))))
        reader.start()
        for i in range(0, len(payload), 1000):  # many small chunks, each with its own jitter
            sock.sendall(payload[i:i + 1000])
        reader.join(30)
        assert not reader.is_alive()
    assert received == payload


def test_set_delay_takes_effect_on_a_live_connection(echo, make_proxy):
    proxy = make_proxy(echo.endpoint, 5)
    with connect(proxy.endpoint) as sock:
        assert statistics.median(rtts(sock, 5)) < 0.010 + SLACK_S
        proxy.set_delay(60)
        assert proxy.delay_ms == 60
        after = rtts(sock, 4)
        assert min(after) >= 0.120 and statistics.median(after) < 0.120 + SLACK_S
        proxy.set_delay(0)
        assert statistics.median(rtts(sock, 5)) < SLACK_S
    with pytest.raises(LocalProtocolError):
        proxy.set_delay(-1)


def test_cut_drops_connections_and_refuses_until_restore(echo, make_proxy):
    proxy = make_proxy(echo.endpoint, 2)
    with connect(proxy.endpoint) as sock:
        rtts(sock, 1)
        wait_for(lambda: proxy.connections == 1, 5, "the proxy to count the connection")
        proxy.cut()
        assert proxy.connections == 0  # cut() returns once applied
        assert closed_by_peer(sock)
    assert refused(proxy.endpoint)  # the kernel accepts; the proxy resets it at once
    proxy.restore()
    with connect(proxy.endpoint) as sock:
        assert rtts(sock, 2)


def test_silent_cut_blackholes_then_restore_flows_again(echo, make_proxy):
    proxy = make_proxy(echo.endpoint, 2)
    with connect(proxy.endpoint) as sock:
        rtts(sock, 1)
        proxy.cut(silent=True)
        sock.sendall(b"lost")
        sock.settimeout(0.3)  # nothing comes back, and the connection stays open
        with pytest.raises(TimeoutError):
            sock.recv(16)
        assert proxy.connections == 1
        proxy.restore()
        sock.settimeout(5)
        assert rtts(sock, 2)


def test_a_closed_side_closes_the_other_after_the_pending_bytes(echo, make_proxy):
    proxy = make_proxy(echo.endpoint, 40)
    with connect(proxy.endpoint) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)  # EOF travels behind the bytes
        assert recv_exactly(sock, 10) == b"last words"
        assert sock.recv(1) == b""  # the echo server saw our EOF and closed; so do we
    wait_for(lambda: proxy.connections == 0, 5, "the pair to close")


def test_unreachable_target_closes_the_client(make_proxy):
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    proxy = make_proxy(f"tcp://127.0.0.1:{port}", 1)
    assert refused(proxy.endpoint)
    wait_for(lambda: proxy.connections == 0, 5, "the pair to close")


def test_bad_arguments_and_lifecycle():
    with pytest.raises(LocalProtocolError):
        DelayProxy("udp://127.0.0.1:0", "tcp://127.0.0.1:1", 1)
    with pytest.raises(LocalProtocolError):
        DelayProxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", -1)
    proxy = DelayProxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", 1)
    proxy.stop()  # never started: nothing to do
    with pytest.raises(LocalProtocolError):
        proxy.start()
    with pytest.raises(TransportClosed):
        proxy.cut()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stop_joins_the_thread_and_closes_every_fd(echo):
    before_fds = _fd_count()
    before_threads = set(threading.enumerate())
    proxy = DelayProxy("tcp://127.0.0.1:0", echo.endpoint, 20)
    proxy.start()
    socks = [connect(proxy.endpoint) for _ in range(3)]
    for s in socks:
        s.sendall(b"x")  # leave bytes in flight inside the proxy
    wait_for(lambda: proxy.connections == 3, 5, "three connections")
    proxy.stop()
    proxy.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("sporenet-delay-proxy")]
    for s in socks:
        assert closed_by_peer(s)
        s.close()
    # The echo server closes its side of each pair once it sees the EOF.
    wait_for(lambda: _fd_count() <= before_fds, 5, "every fd to be closed")
    wait_for(lambda: set(threading.enumerate()) <= before_threads, 5, "echo threads to end")


def test_cli_forwards_with_delay_and_stops_on_sigterm(echo):
    proc = subprocess.Popen([sys.executable, "-m", "sporenet.cli", "delay-proxy", "--listen",
                             "tcp://127.0.0.1:0", "--to", echo.endpoint, "--delay-ms", "25"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("delay-proxy tcp://127.0.0.1:"), line
        endpoint = line.split()[1]
        with connect(endpoint) as sock:
            assert min(rtts(sock, 3)) >= 0.050
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.slow
def test_two_nodes_measure_the_delay_of_a_proxied_link(tmp_path, make_proxy):
    with LocalMesh(tmp_path, extra_args=("--probe-interval", "0.2")) as mesh:
        a = mesh.start_node("a")
        proxy = make_proxy(a.endpoint, 20)
        b = mesh.start_node("b", peers=[proxy.endpoint])

        def rtt(node, peer) -> float | None:
            for p in node.api.peers()["peers"]:
                if p["node_id"] == peer.node_id and p["rtt_ms"] is not None:
                    return p["rtt_ms"]
            return None

        ab = wait_for(lambda: rtt(a, b), 20, "a to measure b")
        ba = wait_for(lambda: rtt(b, a), 20, "b to measure a")
        assert ab >= 40 and ba >= 40, (ab, ba)
        assert proxy.connections == 1  # the one link runs through the proxy
        # The link gets slower at runtime, and the probers follow.
        proxy.set_delay(60)
        wait_for(lambda: (rtt(a, b) or 0) >= 100 and (rtt(b, a) or 0) >= 100, 20,
                 "the probers to measure the slower link")
