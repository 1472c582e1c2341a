"""Handshake floods against a real node (security.md T08, issue [3/7] "flood tests").

Real ``sporenet up`` processes on loopback: A and B linked, and a flooder (``bench/
flood.py flood``, a separate process) linked to B as a real neighbour: it runs the
project's own link code (signed hello, probe echoes), then sends pre-built ``Routed``
frames to B's address, each carrying a ``HandshakeInit``, paced to a target rate.
Everything is read off the nodes' API (``GET /v1/sessions``: ``guard`` and session rows)
and B's ``/proc/PID/status``.

(a) 20,000 bad-mac1 msg1s/s for 60 s while A streams messages to B over their session:
    B does no Diffie-Hellman operation for them (they die in B's link I/O thread,
    ``InitiationScreen``, before the bus), A→B goodput keeps >= 80 % of what it was
    just before without the flood (12 s; two windows of the same load without any
    flood differed by up to 19 % here), B's RSS grows < 10 MB (the median of 4
    samples/s over the flood's last 12 s against that of the 12 s before it: the
    message load alone moves RSS by a few MB either way within seconds, and raises it
    ~4 MB in its first 30 s, ~1 MB/min after; hence a 10 s warm-up). The flooder reached
    ~20,000/s on this 2-core machine (shared with other jobs, load average 4-8) in
    every run; the test requires 90 % of it.
(b) 20,000 valid-mac1 msg1s/s from 1,000 claimed sources (no cookies: a spoofer never
    receives them): B is under load < 1 s after the flood starts (its own clock says
    when the load began; monotonic clocks are system-wide), and A, starting a session
    with B during the flood, completes its handshake in <= 2 msg1s (the first gets a
    cookie reply, the retry carries mac2). While under load B does DH work for A's
    handshakes only (4 DH each); before the load began the flood cost about one link
    burst of DH (the link bucket's 50 plus what refills while they are answered: 1-47
    seen; bounded here by the screen's burst, 100).

Runtime: ~90 s for (a) (10 s of warm-up, 12 s of baseline, the 60 s flood), ~10 s
for (b). The sans-IO tests of the screen and of the overflow rule take milliseconds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sporenet.local_mesh import send_message, wait_for
from sporenet.protocols import wire
from sporenet.protocols.sessions.cookie import CookieJar
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.noise import noise_public_key
from sporenet.protocols.routed import Proto, Routed
from sporenet.protocols.sessions.events import SessionFrameIn
from sporenet.protocols.sessions.guard import (LINK_BURST, SCREEN_BURST, InitiationScreen,
                                              ROUTED_INIT_SIZE)
from sporenet.protocols.sessions.messages import HandshakeInit
from sporenet.protocols.sessions.manager import SessionManager

RATE = 20_000            # msg1s per second, both floods
FLOOD_SECONDS = 60.0     # the bad-mac1 flood
WARMUP_SECONDS = 10.0    # the message load alone raises B's RSS ~4 MB in its first 30 s
BASELINE_SECONDS = 12.0  # goodput without the flood, just before it (and RSS medians)
VALID_SECONDS = 30.0     # upper bound of the valid-mac1 flood (stopped once A is in)
DH_PER_ANSWER = 4        # es, ss, ee, se: a responder's DH work for one accepted msg1


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "flood.py"
    spec = importlib.util.spec_from_file_location("sporenet_bench_flood", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


# -- sans-IO: the screen on the link's receive path, and the overflow rule -------------

ME, OTHER = Identity(bytes([7]) * 32), Identity(bytes([8]) * 32)


def msg1(rng, dst_key, good_mac1, src=None, dst=None, proto=Proto.SESSION_HANDSHAKE):
    msg = HandshakeInit(rng.getrandbits(32), rng.randbytes(32), rng.randbytes(48),
                        rng.randbytes(28))
    msg = (CookieJar(noise_public_key(dst_key)).stamp(msg, 0.0) if good_mac1
           else dataclasses.replace(msg, mac1=rng.randbytes(16)))
    src = src or ipaddress.IPv6Address(0x0600 << 112 | rng.getrandbits(100)).packed
    return wire.encode_frame(Routed(src, dst or ME.address.packed, 64, 0, proto,
                                    wire.encode_frame(msg)))


def test_screen_drops_bad_mac1_msg1s_for_us_and_passes_everything_else():
    rng, screen = random.Random(1), InitiationScreen(ME.public_key)
    bad, good = msg1(rng, ME.public_key, False), msg1(rng, ME.public_key, True)
    assert len(bad) == len(good) == ROUTED_INIT_SIZE
    assert screen.drop(1, bad, 0.0) and not screen.drop(1, good, 0.0)
    # a msg1 for another node (transit), or made for another key, or another proto
    assert not screen.drop(1, msg1(rng, OTHER.public_key, False, dst=OTHER.address.packed), 0.0)
    assert screen.drop(1, msg1(rng, OTHER.public_key, True), 0.0)  # mac1 for the wrong key
    assert not screen.drop(1, msg1(rng, ME.public_key, False, proto=Proto.E2E_DATA), 0.0)
    assert not screen.drop(1, bad[:-1], 0.0) and not screen.drop(1, bad + b"x", 0.0)
    assert screen.dropped == 2 and screen.rate_limited == 0
    for n in range(2_000):  # never raises, whatever the bytes
        screen.drop(1, rng.randbytes(rng.choice((0, 1, 2, ROUTED_INIT_SIZE, n % 300))), 0.0)


def test_screen_sheds_valid_msg1s_beyond_its_rate_per_connection():
    rng, screen = random.Random(2), InitiationScreen(ME.public_key)
    frames = [msg1(rng, ME.public_key, True) for _ in range(300)]
    passed = [not screen.drop(1, f, 0.0) for f in frames]
    assert sum(passed) == SCREEN_BURST and screen.rate_limited == 300 - SCREEN_BURST
    assert not screen.drop(2, frames[0], 0.0)  # another link has its own bucket
    assert not screen.drop(1, frames[0], 1.0)  # and the bucket refills


def test_a_link_over_its_rate_puts_the_node_under_load_and_floods_get_cookies():
    rng = random.Random(3)
    b = SessionManager(ME, rng=random.Random(4), pq=False)
    link = rng.randbytes(32)
    now = 100.0
    for _ in range(int(LINK_BURST) + 1):  # the burst queues, the next one overflows
        src = ipaddress.IPv6Address(0x0600 << 112 | rng.getrandbits(100))
        frame = wire.decode_frame(msg1(rng, ME.public_key, True, src=src.packed)).payload
        b.handle(SessionFrameIn(bytes(frame), link, src), now)
    report = b.guard_report(now)
    assert report["under_load"] and report["under_load_since"] == now
    assert report["initiations"]["rate_limited_link"] == 1
    b.on_timer(now)  # the queued burst: cookie replies, no DH
    b.on_timer(now)
    report = b.guard_report(now)
    assert report["dh_operations"] == 0 and report["initiations"]["cookie_sent"] == LINK_BURST
    assert not b.guard_report(now + 1.5)["under_load"]  # sticky for 1 s only


# -- real nodes ----------------------------------------------------------------------------


def peers(node) -> set[str]:
    return {p["node_id"] for p in node.api.get("/v1/peers")["peers"]}


def linked_pair(mesh):
    a = mesh.start_node("a")
    b = mesh.start_node("b", peers=[a.endpoint])
    wait_for(lambda: a.node_id in peers(b) and b.node_id in peers(a), 20, "A and B to link")
    return a, b


@pytest.mark.slow
def test_bad_mac1_flood_costs_no_dh_and_the_session_keeps_its_goodput(mesh):
    a, b = linked_pair(mesh)
    flooder = bench.FlooderProcess(b.endpoint, "bad", RATE, FLOOD_SECONDS)
    load = bench.Goodput(a, b)
    rss = bench.RssWatch(b.process.pid)
    try:
        flooder.linked()
        load.start()
        wait_for(lambda: load.received() > 0, 30, "A's messages to reach B over a session")
        load.rate(WARMUP_SECONDS)  # sessions, PQ rekey, and RSS most of its way up
        t0 = time.monotonic()
        baseline = load.rate(BASELINE_SECONDS)
        t1 = time.monotonic()
        before, received_before = bench.guard(b), load.received()
        flooder.go()
        report = flooder.done(FLOOD_SECONDS + 30)
        t2 = time.monotonic()
        flood_goodput = (load.received() - received_before) / report["seconds"]
        after = bench.guard(b)
        rss_before = rss.median(t0, t1)
        rss_after = rss.median(t2 - BASELINE_SECONDS, t2)
        peaks = (rss.peak(t0, t1), rss.peak(t1, t2))
    finally:
        rss.close()
        load.stop()
        flooder.close()

    figures = {"flood": report, "goodput_baseline": round(baseline),
               "goodput_flood": round(flood_goodput),
               "rss_kb": {"medians": (rss_before, rss_after), "peaks": peaks},
               "guard_after": after}
    print(figures)
    assert not report["link_lost"], figures
    assert report["rate"] >= 0.9 * RATE, figures
    # every flood frame died in B's link I/O thread, and none cost a DH
    screened = (after["initiations"]["bad_mac1_screened"]
                - before["initiations"]["bad_mac1_screened"])
    assert screened == report["sent"], figures
    assert after["dh_operations"] == before["dh_operations"], figures
    assert baseline > 0 and flood_goodput >= 0.8 * baseline, figures
    # RSS: the median of the flood's last 8 s against the baseline window's (the message
    # load alone swings RSS by a few MB within seconds: bench/README.md)
    assert rss_after - rss_before < 10 * 1024, figures


@pytest.mark.slow
def test_valid_mac1_flood_puts_the_node_under_load_and_a_peer_still_gets_in(mesh):
    a, b = linked_pair(mesh)
    flooder = bench.FlooderProcess(b.endpoint, "valid", RATE, VALID_SECONDS, sources=1000)
    try:
        flooder.linked()
        assert not bench.guard(b)["under_load"]
        started = flooder.go()
        loaded = wait_for(lambda: (g := bench.guard(b))["under_load"] and g, 10,
                          lambda: f"B under load: {bench.guard(b)}")
        # B's own record of when the load began (its monotonic clock is the system's)
        assert loaded["under_load_since"] - started < 1.0, (started, loaded)
        assert loaded["dh_operations"] <= SCREEN_BURST, loaded  # before the load: ~ one burst

        res = send_message(a, b.info["address"], "hello", "through the flood", deadline=25.0)
        assert res["state"] == "delivered", res
        during = bench.guard(b)
        counters = a.api.get("/v1/sessions")["counters"]
        shown = subprocess.run([sys.executable, "-m", "sporenet.cli", "sessions", "--api",
                                b.info["api"]], capture_output=True, text=True, timeout=60)
        flooder.stop()
        report = flooder.done(30)
    finally:
        flooder.close()

    print({"flood": report, "under_load_after_s": loaded["under_load_since"] - started,
           "a_counters": counters, "b_guard": during})
    assert report["rate"] >= 0.9 * RATE and not report["link_lost"], report
    # A got in within two msg1s: a cookie reply, then the retry with mac2
    ok = {k: n for k, n in counters.items() if k.startswith("handshake_ok_after_")}
    assert ok and set(ok) <= {"handshake_ok_after_1", "handshake_ok_after_2"}, counters
    assert counters.get("cookie_received", 0) >= 1, counters
    # B stayed under load, and under load spent DH only on A's accepted msg1s
    assert during["under_load"] and during["under_load_entries"] == 1, during
    answered = during["initiations"]["answered"] - loaded["initiations"]["answered"]
    assert answered >= 1
    assert during["dh_operations"] - loaded["dh_operations"] == DH_PER_ANSWER * answered, during
    assert during["initiations"]["cookie_sent"] > 0
    # what an operator sees: `sporenet sessions` on B, during the flood
    assert shown.returncode == 0, shown.stderr
    assert "handshake guard: UNDER LOAD" in shown.stdout and "DH operations" in shown.stdout
