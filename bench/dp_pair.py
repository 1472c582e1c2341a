"""One end of a two-node data path without the rest of the node: a TUN, the data path
engine (sporenet/transports/datapath.py) and a TCP link carrier, with data keys from a
shared test seed instead of a handshake.

This isolates what the data path alone costs, and checks it end to end on real
devices (tests/test_datapath_pair.py; bench/README.md "Data path, engine only"). Run
one per network namespace, as root:

    ip netns exec sn-x python bench/dp_pair.py --role a --address 600:0:0:a::1 \
        --peer-address 600:0:0:b::1 --dial tcp://10.201.0.2:7000 --seed 00ff...
    ip netns exec sn-y python bench/dp_pair.py --role b --address 600:0:0:b::1 \
        --peer-address 600:0:0:a::1 --listen tcp://10.201.0.2:7000 --seed 00ff...

Prints ``{"ready": true, ...}`` once the link is up, then, on SIGTERM,
``{"counters": {...}, "cpu_s": ...}`` and exits.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import signal
import sys
import threading
import time

from sporenet.logs import configure_logging
from sporenet.protocols.datapath.keys import DataKeypair
from sporenet.transports.carrier import Connected, Disconnected
from sporenet.protocols.datapath.tables import DataKeys, DataLinks, DataRoutes
from sporenet.transports.datapath import DataPath
from sporenet.transports.tcp import TcpCarrier
from sporenet.transports.tun import TunDevice


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=("a", "b"), required=True)
    ap.add_argument("--address", required=True)
    ap.add_argument("--peer-address", required=True)
    ap.add_argument("--listen")
    ap.add_argument("--dial")
    ap.add_argument("--seed", required=True, help="hex; both ends derive the same test keys")
    ap.add_argument("--tun", default="sn-tun0")
    ap.add_argument("--mtu", type=int, default=1420)
    args = ap.parse_args(argv)
    configure_logging("warning", "console")

    seed = bytes.fromhex(args.seed)
    ka, kb = (hashlib.sha256(seed + s).digest() for s in (b"a", b"b"))
    me = ipaddress.IPv6Address(args.address).packed
    peer = ipaddress.IPv6Address(args.peer_address).packed
    now = time.monotonic()
    local, remote = (1, 2) if args.role == "a" else (2, 1)
    send_key, recv_key = (ka, kb) if args.role == "a" else (kb, ka)
    kp = DataKeypair(local_index=local, remote_index=remote, send_key=send_key,
                     recv_key=recv_key, peer=b"peer", now=now)

    tun = TunDevice.open(args.tun, args.address, mtu=args.mtu)
    carrier: TcpCarrier | None = None
    dp = DataPath(tun, address=me, send=lambda c, f: carrier.send(c, f))
    dp.keys.value = DataKeys(by_prefix={peer[:8]: (kp, None)}, by_index={local: kp},
                             prefix_of={b"peer": peer[:8]})
    peer_node = b"peer-node"  # the routes' next hop: a stand-in node id for the one link
    dp.routes.value = DataRoutes(next_hop={peer[:8]: peer_node})
    conns: dict[int, bytes] = {}

    def set_links(first: int | None) -> None:
        conn_of = {peer_node: first} if first is not None else {}
        dp.links.value = DataLinks(conn_of=conn_of, node_of=dict(conns))
    up = threading.Event()

    def on_event(ev: object) -> None:
        # No hello here: every connection counts as the peer's link (a test may open more,
        # to throw bad frames at the data path); the first one carries the route.
        if isinstance(ev, Connected):
            conns[ev.conn_id] = peer_node
            route = dp.links.value.conn_of.get(peer_node)
            set_links(ev.conn_id if route is None else route)
            up.set()
        elif isinstance(ev, Disconnected):
            conns.pop(ev.conn_id, None)
            route = dp.links.value.conn_of.get(peer_node)
            set_links(None if route == ev.conn_id else route)

    carrier = TcpCarrier(on_event, rx_filter=dp.rx, name="dp")
    if args.listen:
        carrier.listen(args.listen)
    if args.dial:
        def redial() -> None:  # the listener may not be up yet
            while not up.wait(0.2):
                carrier.dial(args.dial)
        threading.Thread(target=redial, daemon=True).start()
    dp.start()
    if not up.wait(20):
        print(json.dumps({"ready": False}), flush=True)
        return 1
    print(json.dumps({"ready": True, "offload": tun.offload, "tun": tun.name}), flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    t = os.times()
    print(json.dumps({"counters": dict(dp.counters), "cpu_s": round(t.user + t.system, 2)}),
          flush=True)
    dp.stop()
    carrier.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
