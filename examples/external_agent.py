"""An external agent: a separate process on the node's ipc bus, using only pyzmq + msgpack.

It imports nothing from sporenet on purpose: this is all an agent in any language
needs (see examples/README.md "The wire format").

    python examples/external_agent.py --run-dir /run/user/1000/sporenet-1a2b3c4d [--count N]

It reads ``<run_dir>/bus.json``, subscribes to ``link.``, ``prober.`` and
``example.``, confirms the subscription is live, prints ``ready``, then prints
each notice it sees and answers each with an ``external.seen`` notice of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import msgpack
import zmq

TOPICS = (b"link.", b"prober.", b"example.")


def connect(run_dir: str) -> tuple[zmq.Socket, zmq.Socket]:
    with open(os.path.join(run_dir, "bus.json")) as f:
        bus = json.load(f)
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.connect(bus["pub"])  # we publish into the bus's XSUB side
    sub.connect(bus["sub"])  # and read from its XPUB side
    return pub, sub


def sync(pub: zmq.Socket, sub: zmq.Socket, timeout: float = 5.0) -> None:
    """PUB/SUB drops messages until subscriptions have propagated ("slow joiner"):
    publish to ourselves on a private topic until it comes back."""
    topic = b"_bus.sync." + uuid.uuid4().hex.encode()
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.send_multipart([topic, b""])
        if sub.poll(20) and sub.recv_multipart()[0] == topic:
            sub.setsockopt(zmq.UNSUBSCRIBE, topic)
            return
    raise SystemExit(f"the bus did not answer within {timeout} s")


def show(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--count", type=int, default=0, help="exit after N notices (0: run until ^C)")
    args = ap.parse_args()
    pub, sub = connect(args.run_dir)
    for t in TOPICS:
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sync(pub, sub)
    print("ready", flush=True)
    seen = 0
    try:
        while args.count == 0 or seen < args.count:
            topic, payload = sub.recv_multipart()
            if topic.startswith(b"_bus."):
                continue  # the bus's own sync traffic
            fields = msgpack.unpackb(payload, raw=False)
            shown = " ".join(f"{k}={show(v)}" for k, v in fields.items())
            print(f"saw {topic.decode()} {shown}", flush=True)
            reply = {"topic": topic.decode(), "pid": os.getpid(), "n": seen}
            pub.send_multipart([b"external.seen", msgpack.packb(reply, use_bin_type=True)])
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        pub.close(linger=1000)  # let the last replies leave
        sub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
