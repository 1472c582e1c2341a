"""Noise IKpsk2 handshake micro-benchmark (sporenet/protocols/sessions/noise.py), one core.

Run: ``python3 bench/handshake.py`` (about 10 s; ``--quick`` for a smoke run).

Measures:
- full handshakes/s: ``Initiator`` construction + ``create_init`` + the responder's
  ``consume_init`` + ``consume_response``, both sides in this one process and core;
- µs per side: initiator (construct + create_init + consume_response) and responder
  (consume_init) measured apart;
- bad-mac1 rejections/s at the responder: from frame bytes (``decode_frame`` + mac1
  check) and from a decoded message (mac1 check alone); no DH is done for these.

Numbers from a shared 2-core machine vary by ±30 % run to run; compare runs made
side by side, never against a threshold in a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

from sporenet.protocols import wire
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.noise import (BadMac1, Initiator, PeerKey, Responder, StaticKey,
                                      TimestampSource)

T0 = 1_800_000_000.0


def best_rate(fn, n: int, repeats: int) -> float:
    """Best of ``repeats`` runs of ``n`` calls, in calls per second."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (few iterations)")
    args = ap.parse_args()
    n, n_bad, repeats = (50, 2_000, 1) if args.quick else (1_000, 100_000, 3)

    a, b = Identity(b"\x01" * 32), Identity(b"\x02" * 32)
    sa, sb = StaticKey(a), StaticKey(b)
    rng = random.Random(1).randbytes
    clock = TimestampSource()
    peers = {sa.public: PeerKey(a.public_key)}
    resp = Responder(sb, rng=rng)
    tick = [T0]

    def initiator() -> Initiator:
        return Initiator(sa, b.public_key, local_index=1, rng=rng, clock=clock)

    def respond(msg):
        tick[0] += 1.0  # past the 50/s flood limit, simulated time
        return resp.consume_init(msg, now=tick[0], local_index=2, lookup=peers.get)

    def full() -> None:
        ini = initiator()
        ini.consume_response(respond(ini.create_init(tick[0])).reply)

    def per_side_us() -> tuple[float, float]:
        """µs per initiator (create + finish) and per responder, for one batch of n."""
        t0 = time.perf_counter()
        pending = [(ini, ini.create_init(tick[0])) for ini in (initiator() for _ in range(n))]
        t1 = time.perf_counter()
        replies = [respond(m).reply for _, m in pending]
        t2 = time.perf_counter()
        for (ini, _), r in zip(pending, replies):
            ini.consume_response(r)
        t3 = time.perf_counter()
        return ((t1 - t0) + (t3 - t2)) / n * 1e6, (t2 - t1) / n * 1e6

    rows = [("full handshake (both sides)", best_rate(full, n, repeats))]
    sides = [per_side_us() for _ in range(repeats)]
    rows.append(("initiator side (create_init + consume_response)",
                 1e6 / min(i for i, _ in sides)))
    rows.append(("responder side (consume_init)", 1e6 / min(r for _, r in sides)))

    good = initiator().create_init(T0)
    bad = dataclasses.replace(good, mac1=bytes(16))
    bad_frame = wire.encode_frame(bad)

    def reject(msg) -> None:
        try:
            resp.consume_init(msg, now=T0, local_index=2, lookup=peers.get)
        except BadMac1:
            return
        raise AssertionError("bad mac1 accepted")

    rows.append(("bad mac1 rejected, from frame bytes",
                 best_rate(lambda: reject(wire.decode_frame(bad_frame)), n_bad, repeats)))
    rows.append(("bad mac1 rejected, decoded message",
                 best_rate(lambda: reject(bad), n_bad, repeats)))

    print(f"{'measure':<52} {'per s':>10} {'µs':>8}")
    for name, rate in rows:
        print(f"{name:<52} {rate:>10,.0f} {1e6 / rate:>8.1f}")


if __name__ == "__main__":
    main()
