"""Node bus throughput: notices per second through the broker, in-process and across processes.

    python bench/bus_throughput.py [--count 100000] [--size 32]

Four figures, each end to end (publisher -> XSUB/XPUB broker -> subscriber):
- inproc notices: encode_notice + PUB, SUB + decode_notice, two threads of one process;
- inproc raw: pre-encoded frames, no codec (the broker and zmq alone);
- ipc notices / ipc raw: the publisher is a separate process on the ipc endpoints.
Each line also says how many were delivered (PUB/SUB drops past the high-water mark).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sporenet.logs import configure_logging
from sporenet.protocols.notices import Notice
from sporenet.transports.bus import Bus, BusClient, load_endpoints
from sporenet.transports.bus_codec import encode_notice


@dataclass(frozen=True, slots=True)
class BenchTick(Notice):
    TOPIC: ClassVar[str] = "bench.tick"
    seq: int
    blob: bytes


def publish(client: BusClient, count: int, size: int, raw: bool) -> None:
    blob = b"\xab" * size
    if raw:
        topic, payload = encode_notice(BenchTick(0, blob))
        for _ in range(count):
            client.publish_raw(topic, payload)
    else:
        for i in range(count):
            client.publish(BenchTick(i, blob))


def receive(client: BusClient, count: int, raw: bool, timeout: float = 30.0) -> tuple[int, float, float]:
    """(received, time of the first, time of the last)."""
    got, first, last = 0, 0.0, 0.0
    recv = client.recv_raw if raw else client.recv
    while got < count:
        if recv(timeout) is None:
            break
        last = time.perf_counter()
        if got == 0:
            first = last
        got += 1
    return got, first, last


def run_inproc(bus: Bus, count: int, size: int, raw: bool) -> tuple[int, float]:
    sub = bus.client()
    sub.subscribe("bench.")
    sub.sync()
    ready, start = threading.Event(), [0.0]

    def publisher() -> None:
        client = bus.client()
        client.sync()
        ready.set()
        start[0] = time.perf_counter()
        publish(client, count, size, raw)
        client.close()

    t = threading.Thread(target=publisher)
    t.start()
    got, _, last = receive(sub, count, raw)
    t.join()
    sub.close()
    return got, last - start[0]


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from bus_throughput import publish
from sporenet.transports.bus import BusClient, load_endpoints
c = BusClient(load_endpoints(sys.argv[2]))
c.sync()
publish(c, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "raw")
c.close()
"""


def run_ipc(bus: Bus, count: int, size: int, raw: bool) -> tuple[int, float]:
    sub = bus.client()
    sub.subscribe("bench.")
    sub.sync()
    here = str(Path(__file__).resolve().parent)
    child = subprocess.Popen([sys.executable, "-c", CHILD, here, str(bus.run_dir), str(count),
                              str(size), "raw" if raw else "notice"])
    got, first, last = receive(sub, count, raw)
    child.wait(timeout=60)
    sub.close()
    return got, last - first  # first to last arrival: the child's start-up is not counted


def main() -> int:
    ap = argparse.ArgumentParser(description="node bus throughput")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=32, help="bytes field size per notice")
    args = ap.parse_args()
    configure_logging("warning")
    run_dir = tempfile.mkdtemp(prefix="sn-bench-", dir="/tmp")
    bus = Bus(run_dir).start()
    try:
        load_endpoints(run_dir)
        print(f"bus throughput, {args.count} notices of {args.size} B payload field")
        for name, fn, raw in (("inproc notices", run_inproc, False), ("inproc raw", run_inproc, True),
                              ("ipc notices", run_ipc, False), ("ipc raw", run_ipc, True)):
            got, secs = fn(bus, args.count, args.size, raw)
            rate = got / secs if secs > 0 else float("nan")
            print(f"  {name:15s} {rate:>10,.0f} msg/s  ({got}/{args.count} delivered in {secs:.3f} s)")
    finally:
        bus.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
