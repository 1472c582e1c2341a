"""Handshake flood against a real node (security.md T08, issue [3/7] "flood tests").

Two parts:

``python bench/flood.py flood --peer tcp://HOST:PORT [--mode bad|valid] [--rate 20000]
[--duration 60] [--sources 1000]`` is the flooder alone: a real linked peer of the node
at ``--peer``. It runs the project's own link code (``TcpCarrier`` + ``LinkManager``:
signed hello, probes answered), so the node sees an authenticated neighbour. Once the
link is up it prints one JSON line ``{"event": "linked", ...}``, then sends pre-built
``Routed`` frames addressed to the node, each carrying a ``HandshakeInit``, paced to
``--rate`` per second (batches every ~2 ms, written by the carrier's ``sendmsg``), and
finally prints ``{"event": "done", "sent", "seconds", "rate", "refused", "cpu_share"}``
(``refused``: frames the carrier's send buffer would not take, i.e. the node read
slower than we wrote: TCP flow control; ``cpu_share``: the flooder's own CPU seconds
per second, ~0.05 at 20,000/s). ``--mode bad``: random mac1. ``--mode valid``: mac1
right for the node's key, from ``--sources`` claimed source addresses, no mac2 (an
attacker who knows the node's public key but cannot receive cookies for spoofed
sources).

``python bench/flood.py`` (no sub-command) runs the whole T08 scenario on loopback
with real ``sporenet up`` processes (nodes A and B linked, the flooder linked to B)
and prints the figures: the flood rate reached, B's Diffie-Hellman operations, the
A→B session's goodput with and without the flood, B's RSS growth, and for the
valid-mac1 flood the time until B reports "under load" and how many msg1s A needed.
``--quick`` shortens the bad-mac1 flood to 10 s. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from sporenet.keyfile import generate_identity
from sporenet.logs import configure_logging
from sporenet.protocols import wire
from sporenet.protocols.base import Publish
from sporenet.protocols.sessions.cookie import CookieJar
from sporenet.protocols.link.dialer import Dial
from sporenet.protocols.identity import address_of
from sporenet.protocols.link.table import (BytesReceived, CloseConnection, ConnectionLost,
                                     ConnectionOpened, DeliverFrame, SendFrame)
from sporenet.protocols.link.manager import DialFailed, LinkManager
from sporenet.protocols.link.messages import Probe
from sporenet.protocols.sessions.noise import noise_public_key
from sporenet.protocols.notices import PeerUp
from sporenet.protocols.routed import Proto, Routed
from sporenet.protocols.sessions.messages import HandshakeInit
from sporenet.transports import carrier as ev
from sporenet.transports.errors import TransportClosed
from sporenet.transports.tcp import TcpCarrier

BATCH_INTERVAL = 0.002  # s between paced batches
DISTINCT_FRAMES = 4096  # pre-built frames cycled through


# -- the flooder: a real linked peer ---------------------------------------------------


def _source(rng: random.Random) -> bytes:
    return ipaddress.IPv6Address(0x0600 << 112 | rng.getrandbits(100)).packed


def build_frames(target_key: bytes, mode: str, sources: int, seed: int = 1,
                 count: int = DISTINCT_FRAMES) -> list[bytes]:
    """Link frames (``Routed`` to ``target_key``'s address) carrying msg1s.

    ``bad``: random mac1, random claimed sources. ``valid``: mac1 right for the
    target's Noise static, claimed sources cycling over ``sources`` addresses."""
    rng = random.Random(seed)
    dst = address_of(target_key).packed
    jar = CookieJar(noise_public_key(target_key)) if mode == "valid" else None
    srcs = [_source(rng) for _ in range(max(1, sources))]
    frames = []
    for i in range(count):
        msg = HandshakeInit(rng.getrandbits(32), rng.randbytes(32), rng.randbytes(48),
                            rng.randbytes(28))
        msg = jar.stamp(msg, 0.0) if jar is not None else dataclasses.replace(
            msg, mac1=rng.randbytes(16))
        src = srcs[i % len(srcs)] if mode == "valid" else _source(rng)
        routed = Routed(src, dst, 64, 0, Proto.SESSION_HANDSHAKE, wire.encode_frame(msg))
        frames.append(wire.encode_frame(routed))
    return frames


class LinkedPeer:
    """A minimal node: a TCP carrier driven by a ``LinkManager`` (signed hello, probe
    echoes), pumped by the caller's thread. No router, no overlay."""

    def __init__(self, endpoint: str) -> None:
        self.identity = generate_identity()
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.carrier = TcpCarrier(self.events.put, name="flooder")
        self.lm = LinkManager(self.identity, peers=[endpoint], rng=random.Random(os.urandom(8)),
                              now=time.monotonic(), name="flooder")
        self.peer: PeerUp | None = None
        self.conn: int | None = None
        self.lost = False
        self._execute(self.lm.on_timer(time.monotonic()))  # the first dial

    def _execute(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, SendFrame):
                try:
                    self.carrier.send(a.conn, wire.encode_frame(a.msg))
                except TransportClosed:
                    pass
            elif isinstance(a, Dial):
                self.carrier.dial(a.endpoint)
            elif isinstance(a, CloseConnection):
                self.carrier.close(a.conn, a.reason)
            elif isinstance(a, Publish) and isinstance(a.message, PeerUp):
                self.peer = a.message
                # the link's carrier connection: what a frame to the peer would use
                self.conn = self.lm.table.send_to(a.message.node_id, Probe(0))[0].conn
            elif isinstance(a, DeliverFrame):
                pass  # probes are echoed by the LinkManager; the rest is not for us

    def pump(self, timeout: float = 0.0) -> None:
        """Feed every carrier event waiting (up to ``timeout`` for the first) and timers."""
        try:
            e = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            e = None
        while e is not None:
            now = time.monotonic()
            match e:
                case ev.Connected(conn_id=c, outbound=o, remote=r):
                    self._execute(self.lm.handle(ConnectionOpened(c, o, r, os.urandom(16)), now))
                case ev.FrameReceived(conn_id=c, frame=f):
                    self._execute(self.lm.handle(BytesReceived(c, f), now))
                case ev.Disconnected(conn_id=c, reason=r):
                    if c == self.conn:
                        self.lost = True
                    self._execute(self.lm.handle(ConnectionLost(c, r), now))
                case ev.DialFailed(endpoint=ep, reason=r):
                    self._execute(self.lm.handle(DialFailed(ep, r), now))
            try:
                e = self.events.get_nowait()
            except queue.Empty:
                e = None
        now = time.monotonic()
        due = self.lm.next_deadline()
        if due is not None and now >= due:
            self._execute(self.lm.on_timer(now))

    def link(self, timeout: float = 20.0) -> PeerUp:
        deadline = time.monotonic() + timeout
        while self.peer is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the node did not complete the link hello")
            self.pump(0.05)
        return self.peer

    def close(self) -> None:
        self.carrier.shutdown()


def flood(peer: LinkedPeer, frames: list[bytes], rate: float, duration: float,
          stop: threading.Event | None = None) -> dict:
    """Send ``frames`` (cycled) at ``rate`` per second for ``duration`` s; the figures."""
    sent = refused = 0
    n = len(frames)
    send = peer.carrier.send
    conn = peer.conn
    start, cpu = time.monotonic(), time.process_time()
    end = start + duration
    while not peer.lost and (stop is None or not stop.is_set()):
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate) - sent - refused
        for _ in range(due):
            try:
                if send(conn, frames[(sent + refused) % n]):
                    sent += 1
                else:
                    refused += 1
            except TransportClosed:
                peer.lost = True
                break
        peer.pump()
        left = BATCH_INTERVAL - (time.monotonic() - now)
        if left > 0:
            time.sleep(left)
    seconds = time.monotonic() - start
    return {"sent": sent, "refused": refused, "seconds": round(seconds, 3),
            "rate": round(sent / seconds if seconds else 0.0, 1), "link_lost": peer.lost,
            "cpu_share": round((time.process_time() - cpu) / seconds, 3) if seconds else 0.0}


def _commands(go: threading.Event, stop: threading.Event) -> None:
    """stdin: "go" starts the flood, "stop" (or end of input) ends it."""
    for line in sys.stdin:
        word = line.strip()
        if word == "go":
            go.set()
        elif word == "stop":
            break
    stop.set()


def run_flooder(args: argparse.Namespace) -> int:
    configure_logging("warning", "json")  # stdout carries our JSON lines only
    peer = LinkedPeer(args.peer)
    try:
        up = peer.link()
        frames = build_frames(up.public_key, args.mode, args.sources, args.seed)
        print(json.dumps({"event": "linked", "node_id": peer.identity.node_id.hex(),
                          "target": up.node_id.hex(), "mode": args.mode,
                          "frame_bytes": len(frames[0])}), flush=True)
        go, stop = threading.Event(), threading.Event()
        if args.wait_stdin:
            threading.Thread(target=_commands, args=(go, stop), daemon=True).start()
            while not go.is_set() and not stop.is_set():
                peer.pump(0.01)  # the link stays up (probes answered) while we wait
        print(json.dumps({"event": "started", "at": time.monotonic()}), flush=True)
        report = flood(peer, frames, args.rate, args.duration, stop)
        print(json.dumps({"event": "done", "mode": args.mode, "target_rate": args.rate,
                          **report}), flush=True)
        return 0
    finally:
        peer.close()


# -- driving it from another process (the bench scenario and tests/test_node_flood.py) ---


class FlooderProcess:
    """``bench/flood.py flood`` as a child process, driven over its stdin/stdout.

    ``linked()`` waits for the link, ``go()`` starts the flood (returns the flooder's
    ``time.monotonic()`` at its start: the clock is system-wide), ``done()`` waits for
    the report, ``close()`` stops it by its pid (callers run it in a ``finally``)."""

    def __init__(self, peer: str, mode: str, rate: float, duration: float,
                 sources: int = 1000) -> None:
        args = [sys.executable, str(Path(__file__).resolve()), "flood", "--peer", peer,
                "--mode", mode, "--rate", str(rate), "--duration", str(duration),
                "--sources", str(sources), "--wait-stdin"]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                pass

    def event(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self._lines.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                got = None
            if got is not None and got.get("event") == name:
                return got
            if time.monotonic() >= deadline or (got is None and self.proc.poll() is not None
                                                and self._lines.empty()):
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise TimeoutError(f"flooder: no {name!r} within {timeout} s {err[-2000:]}")

    def linked(self, timeout: float = 20.0) -> dict:
        return self.event("linked", timeout)

    def _say(self, word: str) -> None:
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def go(self, timeout: float = 10.0) -> float:
        self._say("go")
        return self.event("started", timeout)["at"]

    def stop(self) -> None:
        self._say("stop")

    def done(self, timeout: float) -> dict:
        return self.event("done", timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except (OSError, ValueError):
                pass


def rss_kb(pid: int) -> int:
    """VmRSS of process ``pid`` in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


class RssWatch:
    """Samples a process's VmRSS every ``interval`` s in a thread; ``median`` and
    ``peak`` over a window of ``time.monotonic()``. With a message load running, RSS
    swings by a few MB within seconds (buffers, the receiver's inbox, its drains), so
    growth is judged median against median: the last ``BASELINE`` seconds of the flood
    against the baseline window just before it. The peaks are reported too."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic(), rss_kb(self.pid)))
            except (OSError, ValueError):
                return
            if self._stop.wait(self.interval):
                return

    def _window(self, since: float, until: float) -> list[int]:
        got = sorted(kb for t, kb in list(self.samples) if since <= t <= until)
        if not got:
            raise ValueError("no RSS sample in the window")
        return got

    def median(self, since: float, until: float) -> int:
        got = self._window(since, until)
        return got[len(got) // 2]

    def peak(self, since: float, until: float) -> int:
        return self._window(since, until)[-1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def guard(node) -> dict:
    """The node's handshake guard report (``GET /v1/sessions``)."""
    return node.api.get("/v1/sessions")["guard"]


class Goodput:
    """A saturating message load ``sender`` → ``receiver`` over their session:
    ``threads`` closed loops, each sending ``size``-byte messages and waiting for the
    end-to-end ack; the receiver's inbox is drained every 0.25 s. ``received()`` is the
    application bytes the receiver's session with the sender delivered so far (its
    ``bytes_in``), so goodput = its growth over a window."""

    TOPIC = "bulk"

    def __init__(self, sender, receiver, *, threads: int = 4, size: int = 16 * 1024) -> None:
        self.sender, self.receiver = sender, receiver
        self.threads, self.text = threads, "x" * size
        self.failed = 0
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> Goodput:
        for i in range(self.threads):
            self._workers.append(threading.Thread(target=self._send, daemon=True))
        self._workers.append(threading.Thread(target=self._drain, daemon=True))
        for t in self._workers:
            t.start()
        return self

    def _send(self) -> None:
        from sporenet.local_mesh import send_message
        to = self.receiver.info["address"]
        while not self._stop.is_set():
            try:
                res = send_message(self.sender, to, self.TOPIC, self.text, deadline=20.0)
            except Exception:  # a timeout of the poll: count it, go on
                res = {"state": "failed"}
            if res.get("state") != "delivered":
                self.failed += 1

    def _drain(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.receiver.api.get("/v1/messages", topic=self.TOPIC, limit="1000")
            except Exception:
                pass

    def received(self) -> int:
        addr = self.sender.info["address"]
        rows = self.receiver.api.get("/v1/sessions")["sessions"]
        return sum(r["bytes_in"] for r in rows if r["address"] == addr)

    def rate(self, seconds: float) -> float:
        """Bytes/s delivered over the next ``seconds`` (a measurement window)."""
        b0, t0 = self.received(), time.monotonic()
        self._stop.wait(seconds)
        return (self.received() - b0) / (time.monotonic() - t0)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(30)


# -- the whole scenario ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    f = sub.add_parser("flood", help="run the flooder alone against --peer")
    f.add_argument("--peer", required=True)
    f.add_argument("--mode", choices=("bad", "valid"), default="bad")
    f.add_argument("--rate", type=float, default=20_000)
    f.add_argument("--duration", type=float, default=60.0)
    f.add_argument("--sources", type=int, default=1000)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--wait-stdin", action="store_true",
                   help='after linking, wait for "go" on stdin; "stop" ends the flood early')
    p.add_argument("--quick", action="store_true", help="a 10 s bad-mac1 flood instead of 60 s")
    p.add_argument("--rate", type=float, default=20_000, help="msg1s per second (both floods)")
    args = p.parse_args(argv)
    if args.cmd == "flood":
        return run_flooder(args)
    return run_scenario(args)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bad_mac1_flood(mesh, rate: float, seconds: float, baseline_s: float = 12.0,
                   warmup_s: float = 10.0) -> dict:
    """Nodes a-b linked, A streaming messages to B; the flooder linked to B."""
    from sporenet.local_mesh import wait_for
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    flooder = FlooderProcess(b.endpoint, "bad", rate, seconds)
    load = Goodput(a, b)
    rss = RssWatch(b.process.pid)
    try:
        flooder.linked()
        load.start()
        wait_for(lambda: load.received() > 0, 30, "A's messages to reach B")
        load.rate(warmup_s)  # the message load alone raises RSS ~4 MB in its first 30 s
        cpu0 = cpu_seconds(b.process.pid)
        t0 = time.monotonic()
        baseline = load.rate(baseline_s)
        t1 = time.monotonic()
        cpu_base = (cpu_seconds(b.process.pid) - cpu0) / (t1 - t0)
        before, got, cpu = guard(b), load.received(), cpu_seconds(b.process.pid)
        flooder.go()
        report = flooder.done(seconds + 30)
        t2 = time.monotonic()
        flood_goodput = (load.received() - got) / report["seconds"]
        cpu = (cpu_seconds(b.process.pid) - cpu) / report["seconds"]
        after = guard(b)
        mem = {"median_in_baseline": rss.median(t0, t1),
               "median_at_flood_end": rss.median(t2 - min(baseline_s, seconds), t2),
               "peak_in_baseline": rss.peak(t0, t1), "peak_in_flood": rss.peak(t1, t2)}
        mem["growth"] = mem["median_at_flood_end"] - mem["median_in_baseline"]
    finally:
        rss.close()
        load.stop()
        flooder.close()
    return {"flood": report,
            "b_dh_during_flood": after["dh_operations"] - before["dh_operations"],
            "b_screened": (after["initiations"]["bad_mac1_screened"]
                           - before["initiations"]["bad_mac1_screened"]),
            "goodput_baseline_Bps": round(baseline), "goodput_flood_Bps": round(flood_goodput),
            "goodput_ratio": round(flood_goodput / baseline, 3) if baseline else None,
            "b_rss_kb": mem,
            "b_cpu_share_in_baseline": round(cpu_base, 3),
            "b_cpu_share_in_flood": round(cpu, 3), "message_failures": load.failed}


def valid_mac1_flood(mesh, rate: float, sources: int = 1000) -> dict:
    """A fresh node c linked to b (no session yet); the flooder linked to b; c sends
    to b once b is under load."""
    from sporenet.local_mesh import send_message, wait_for
    b = mesh.nodes["b"]
    c = mesh.start_node("c", peers=[b.endpoint])
    wait_for(lambda: any(p["node_id"] == c.node_id for p in b.api.get("/v1/peers")["peers"]),
             20, "C to link with B")
    flooder = FlooderProcess(b.endpoint, "valid", rate, 60.0, sources=sources)
    try:
        flooder.linked()
        cpu, before = cpu_seconds(b.process.pid), guard(b)
        started = flooder.go()
        loaded = wait_for(lambda: (g := guard(b))["under_load"] and g, 10, "B under load")
        seen = time.monotonic() - started
        t0 = time.monotonic()
        res = send_message(c, b.info["address"], "hello", "through the flood", deadline=25.0)
        delivered_s = time.monotonic() - t0
        during = guard(b)
        counters = c.api.get("/v1/sessions")["counters"]
        flooder.stop()
        report = flooder.done(30)
        cpu = (cpu_seconds(b.process.pid) - cpu) / report["seconds"]
    finally:
        flooder.close()
    answered = during["initiations"]["answered"] - loaded["initiations"]["answered"]
    return {"flood": report,
            "under_load_after_s": round(loaded["under_load_since"] - started, 4),
            "under_load_seen_by_polling_s": round(seen, 3),
            "b_dh_before_load": loaded["dh_operations"] - before["dh_operations"],
            "b_dh_under_load": during["dh_operations"] - loaded["dh_operations"],
            "b_answered_under_load": answered,
            "b_cookies_sent": during["initiations"]["cookie_sent"],
            "b_rate_limited": {"screened": during["initiations"]["rate_limited_screened"],
                               "link": during["initiations"]["rate_limited_link"]},
            "c_message": res.get("state"), "c_delivered_after_s": round(delivered_s, 2),
            "c_handshakes": {k: n for k, n in counters.items()
                             if k.startswith("handshake_ok_after_")},
            "c_msg1s_sent": counters.get("handshake_sent", 0),
            "c_cookies_received": counters.get("cookie_received", 0),
            "b_cpu_share_in_flood": round(cpu, 3)}


def run_scenario(args: argparse.Namespace) -> int:
    import tempfile

    from sporenet.local_mesh import LocalMesh
    configure_logging("warning", "console")
    seconds = 10.0 if args.quick else 60.0
    out = {"load_average_at_start": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="sporenet-flood-") as tmp:
        with LocalMesh(Path(tmp), extra_args=("--probe-interval", "0.2")) as mesh:
            out["bad_mac1"] = bad_mac1_flood(mesh, args.rate, seconds)
            print(json.dumps({"bad_mac1": out["bad_mac1"]}, indent=2), flush=True)
            out["valid_mac1"] = valid_mac1_flood(mesh, args.rate)
            print(json.dumps({"valid_mac1": out["valid_mac1"]}, indent=2), flush=True)
    out["load_average_at_end"] = os.getloadavg()
    bad, valid = out["bad_mac1"], out["valid_mac1"]
    print(f"""
handshake flood, {args.rate:,.0f} msg1/s target ({out['cpus']} CPUs, load average at start
{out['load_average_at_start'][0]:.2f}, at end {out['load_average_at_end'][0]:.2f})
bad mac1, {bad['flood']['seconds']:.0f} s: {bad['flood']['rate']:,.0f}/s reached, \
{bad['flood']['sent']:,} sent, {bad['b_screened']:,} dropped by B's screen, \
{bad['b_dh_during_flood']} DH on B
  goodput A->B {bad['goodput_baseline_Bps'] / 1e6:.2f} MB/s before, \
{bad['goodput_flood_Bps'] / 1e6:.2f} MB/s during ({bad['goodput_ratio']:.0%}); \
B RSS {bad['b_rss_kb']['growth'] / 1024:+.1f} MB (median of the flood's last \
{min(12.0, seconds):.0f} s against the baseline's; peaks {bad['b_rss_kb']['peak_in_baseline'] / 1024:.1f} and \
{bad['b_rss_kb']['peak_in_flood'] / 1024:.1f} MB), \
B CPU {bad['b_cpu_share_in_flood']:.0%} (baseline {bad['b_cpu_share_in_baseline']:.0%})
valid mac1 from 1,000 sources: {valid['flood']['rate']:,.0f}/s reached; under load after \
{valid['under_load_after_s'] * 1000:.0f} ms (polling saw it after \
{valid['under_load_seen_by_polling_s'] * 1000:.0f} ms); {valid['b_dh_before_load']} DH before \
the load, {valid['b_dh_under_load']} under it ({valid['b_answered_under_load']} msg1s answered)
  C: {valid['c_message']} after {valid['c_delivered_after_s']} s, \
{valid['c_msg1s_sent']} msg1s sent, {valid['c_cookies_received']} cookie(s), \
handshakes {valid['c_handshakes']}; B CPU {valid['b_cpu_share_in_flood']:.0%}""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
