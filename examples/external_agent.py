"""An external agent: a separate process on the node's ipc bus, using only pyzmq + msgpack.

It imports nothing from sporenet on purpose: this is all an agent in any language
needs (see examples/README.md "The wire format").

    python examples/external_agent.py --run-dir /run/user/1000/sporenet-1a2b3c4d \
        [--topic PREFIX ...] [--count N]

``--run-dir`` is the running node's run directory (``sporenet up --run-dir``, or
``run_dir`` in its ``node.json``); it defaults to ``$SPORENET_RUN_DIR``. The agent
reads ``<run_dir>/bus.json``, subscribes to the ``--topic`` prefixes (default
``link.table.peer_``, ``prober.`` and ``example.``), confirms the subscription is live,
prints ``ready``, then prints each notice it sees and answers each with an
``external.seen`` notice of its own. ^C (SIGINT) stops it with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid

import msgpack
import zmq

# Peer up/down, link measurements and the in-process example's counts. Not all of
# "link.": on a real node "link.rx"/"link.tx" carry every probe frame.
TOPICS = ("link.peer_", "prober.", "example.")


def connect(run_dir: str) -> tuple[zmq.Socket, zmq.Socket]:
    try:
        with open(os.path.join(run_dir, "bus.json")) as f:
            bus = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"no node bus in {run_dir} (is the node running?): {e}") from None
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=os.environ.get("SPORENET_RUN_DIR"),
                    required="SPORENET_RUN_DIR" not in os.environ,
                    help="the node's run directory (default: $SPORENET_RUN_DIR)")
    ap.add_argument("--topic", dest="topics", action="append", metavar="PREFIX",
                    help=f"topic prefix to hear, repeatable (default: {' '.join(TOPICS)})")
    ap.add_argument("--count", type=int, default=0, help="exit after N notices (0: run until ^C)")
    args = ap.parse_args()
    # ^C and SIGTERM stop us cleanly even when started with SIGINT ignored (a child of
    # a background job inherits that, and Python then never raises KeyboardInterrupt).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    pub, sub = connect(args.run_dir)
    for t in args.topics or TOPICS:
        sub.setsockopt(zmq.SUBSCRIBE, t.encode())
    sync(pub, sub)
    print("ready", flush=True)
    seen = 0
    try:
        while args.count == 0 or seen < args.count:
            # Poll with a timeout rather than block in recv: Python runs its SIGINT
            # handler between calls, so ^C is seen within 0.2 s however busy the host.
            if not sub.poll(200):
                continue
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
