"""A connection flood against a node's link port: many TCP connections that never say
hello, plus slowloris senders that trickle one byte a second (the issue "A connection
flood makes a node spin and flood its log").

    python bench/conn_flood.py tcp://127.0.0.1:PORT --connections 3000 --hold 8 \
        --source 127.0.0.2 --slowloris 8 --slow-source 127.0.0.3

Run as its own process (the attacker): it raises its own open-file limit to the hard
limit so it can hold thousands of sockets. It only ever connects to the endpoint it is
given (loopback here). Prints one JSON line when done: connections opened, how many
the node closed on us while held, slowloris reconnects, bytes trickled.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time


def parse_target(endpoint: str) -> tuple[str, int]:
    rest = endpoint.removeprefix("tcp://")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def open_nonblocking(source: str, target: tuple[str, int]) -> socket.socket | None:
    s = socket.socket()
    s.setblocking(False)
    try:
        s.bind((source, 0))
        err = s.connect_ex(target)
    except OSError:
        s.close()
        return None
    if err not in (0, errno.EINPROGRESS):
        s.close()
        return None
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("endpoint")
    ap.add_argument("--connections", type=int, default=3000)
    ap.add_argument("--hold", type=float, default=8.0, help="seconds to hold them open")
    ap.add_argument("--source", default="127.0.0.2")
    ap.add_argument("--slowloris", type=int, default=8, help="connections sending 1 byte/s")
    ap.add_argument("--slow-source", default="127.0.0.3")
    args = ap.parse_args(argv)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    target = parse_target(args.endpoint)
    sel = selectors.DefaultSelector()
    started = time.monotonic()

    held: list[socket.socket] = []
    for _ in range(args.connections):
        s = open_nonblocking(args.source, target)
        if s is not None:
            held.append(s)
            sel.register(s, selectors.EVENT_READ, "held")

    # The slowloris: a length prefix announcing a big frame, then one byte a second.
    trickle = b"\x00\x00\xff\xf0" + b"x" * 64
    slow: dict[socket.socket, int] = {}
    reconnects = trickled = closed_on_us = 0

    def open_slow() -> None:
        s = open_nonblocking(args.slow_source, target)
        if s is not None:
            slow[s] = 0
            sel.register(s, selectors.EVENT_READ, "slow")

    for _ in range(args.slowloris):
        open_slow()

    next_tick = time.monotonic()
    end = started + args.hold
    while (now := time.monotonic()) < end:
        for key, _ in sel.select(max(0.0, min(next_tick, end) - now)):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # the node's Hello: never answered
            sel.unregister(s)
            s.close()
            if key.data == "held":
                closed_on_us += 1
            else:
                del slow[s]
                reconnects += 1
                open_slow()
        if time.monotonic() >= next_tick:
            next_tick += 1.0
            for s in list(slow):
                i = slow[s]
                try:
                    s.send(trickle[i % len(trickle):i % len(trickle) + 1])
                    slow[s] = i + 1
                    trickled += 1
                except (BlockingIOError, OSError):
                    pass  # not connected yet, or gone: its close shows as readable
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    print(json.dumps({"opened": len(held), "closed_by_node": closed_on_us,
                      "slowloris": args.slowloris, "slow_reconnects": reconnects,
                      "bytes_trickled": trickled, "seconds": round(time.monotonic() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
