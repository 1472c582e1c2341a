"""Frame codec and TCP carrier micro-benchmarks.

Run: ``python3 bench/frame_codec.py`` (about 15 s; ``--quick`` for a smoke run).

Measures:
- length-prefix framing (sporenet/protocols/link/framing.py): µs per frame to encode, and to
  decode from a stream fed in 64 KiB chunks, at 64 B, 1,400 B and 64 KiB;
- wire ``encode_frame``/``decode_frame`` µs for the link messages ``Hello`` and
  ``Probe`` (sporenet/protocols/link/messages.py), when that module is present;
- TcpCarrier frames/s and MB/s over loopback between two carriers in this
  process at 1,400 B and 64 KiB (sender thread -> I/O thread -> kernel -> I/O
  thread -> callback). Both carriers share one GIL, so this is a floor for one
  node talking to another process.

Numbers from a shared 2-core machine vary by ±30 % run to run; compare runs made
side by side, never against a threshold in a test.
"""

from __future__ import annotations

import argparse
import threading
import time

from sporenet.protocols.link.framing import FrameDecoder, encode_length_prefixed
from sporenet.transports.carrier import Connected, FrameReceived
from sporenet.transports.tcp import TcpCarrier

SIZES = {"64 B": 64, "1,400 B": 1400, "64 KiB": 65536}


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def bench_framing(scale: float) -> list[tuple[str, str, float]]:
    rows = []
    for label, size in SIZES.items():
        frame = bytes(size)
        n = max(200, int(scale * 2_000_000 / max(size, 256)))
        enc = per_call_us(lambda: encode_length_prefixed(frame), n)
        stream = encode_length_prefixed(frame) * n
        chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]
        dec = FrameDecoder()
        t0 = time.perf_counter()
        got = 0
        for chunk in chunks:
            got += len(dec.feed(chunk))
        assert got == n
        rows.append((label, "framing encode", enc))
        rows.append((label, "framing decode", (time.perf_counter() - t0) / n * 1e6))
    return rows


def bench_wire(scale: float) -> list[tuple[str, str, float]]:
    try:
        from sporenet.protocols.link import messages
        from sporenet.protocols.wire import decode_frame, encode_frame
    except ImportError:
        return []
    hello = messages.Hello(public_key=b"k" * messages.PUBLIC_KEY_SIZE,
                           nonce=b"n" * messages.NONCE_SIZE,
                           endpoint="tcp://192.0.2.1:7000", name="node-a")
    probe = messages.Probe(seq=12345)
    n = max(500, int(50_000 * scale))
    rows = []
    for msg in (hello, probe):
        raw = encode_frame(msg)
        assert decode_frame(raw) == msg
        label = f"{type(msg).__name__} ({len(raw)} B)"
        rows.append((label, "wire encode_frame", per_call_us(lambda: encode_frame(msg), n)))
        rows.append((label, "wire decode_frame", per_call_us(lambda: decode_frame(raw), n)))
    return rows


class _Sink:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frames = 0
        self.target = 0  # wake the waiter once this many frames are in
        self.conn: int | None = None

    def __call__(self, event) -> None:
        if isinstance(event, FrameReceived):
            with self.cond:
                self.frames += 1
                if self.frames == self.target:
                    self.cond.notify_all()
        elif isinstance(event, Connected):
            with self.cond:
                self.conn = event.conn_id
                self.cond.notify_all()

    def wait(self, pred, timeout: float = 60.0, target: int = 0) -> None:
        with self.cond:
            self.target = target
            if not self.cond.wait_for(pred, timeout):
                raise RuntimeError("benchmark stalled")


def bench_tcp(size: int, seconds: float) -> tuple[float, float]:
    """(frames/s, MB/s of frame payload) from one carrier to another over loopback."""
    tx, rx = _Sink(), _Sink()
    a, b = TcpCarrier(tx, name="bench-tx"), TcpCarrier(rx, name="bench-rx")
    try:
        a.dial(b.listen("tcp://127.0.0.1:0"))
        tx.wait(lambda: tx.conn is not None)
        rx.wait(lambda: rx.conn is not None)
        frame, conn, sent = bytes(size), tx.conn, 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(64):
                if a.send(conn, frame):
                    sent += 1
                else:  # queue full: wait for the receiver to catch up a little
                    target = sent - 8
                    rx.wait(lambda: rx.frames >= target, target=target)
                    break
        rx.wait(lambda: rx.frames >= sent, target=sent)
        elapsed = time.perf_counter() - t0
        assert b.stats().frames_in == sent and b.stats().bytes_in == sent * (size + 4)
        return sent / elapsed, sent * size / elapsed / 1e6
    finally:
        a.shutdown()
        b.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run, to check it works")
    args = ap.parse_args()
    scale, seconds = (0.02, 0.3) if args.quick else (1.0, 3.0)
    import structlog
    import logging
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    print(f"{'size':<18} {'what':<20} {'µs/frame':>10}")
    for label, what, us in bench_framing(scale) + bench_wire(scale):
        print(f"{label:<18} {what:<20} {us:>10.2f}")
    print()
    print(f"{'size':<18} {'what':<20} {'frames/s':>10} {'MB/s':>8}")
    for label in ("1,400 B", "64 KiB"):
        fps, mbps = bench_tcp(SIZES[label], seconds)
        print(f"{label:<18} {'tcp loopback':<20} {fps:>10,.0f} {mbps:>8.1f}")


if __name__ == "__main__":
    main()
