"""A userspace UDP proxy that loses a share of datagrams (this kernel has no netem).

``LossProxy(target="udp://127.0.0.1:7000", loss=0.2).start()`` returns a
``udp://127.0.0.1:PORT`` endpoint; a node that dials it instead of the target gets a
link on which each datagram, either way, is dropped with probability ``loss``. Each
client address gets its own upstream socket, so the target sees one peer per client.
Loopback only: it is a test and demo tool (``tests/test_node_udp.py``), like
``delay_proxy`` for TCP.
"""

from __future__ import annotations

import random
import selectors
import socket
import threading

from .udp import format_udp_endpoint, parse_udp_endpoint

_MAX_CLIENTS = 64


class LossProxy:
    def __init__(self, target: str, loss: float, *, listen: str = "udp://127.0.0.1:0",
                 seed: int | None = None) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss {loss!r} must be in [0, 1)")
        self._target = parse_udp_endpoint(target)
        self._listen = parse_udp_endpoint(listen)
        self.loss = loss
        self._rng = random.Random(seed)
        self.counts = {"forwarded": 0, "dropped": 0}
        self._sel = selectors.DefaultSelector()
        self._front: socket.socket | None = None
        self._upstream: dict[tuple, socket.socket] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        front.bind(self._listen)
        front.setblocking(False)
        self._front = front
        self._sel.register(front, selectors.EVENT_READ, None)
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._thread = threading.Thread(target=self._run, name="sporenet-loss-proxy", daemon=True)
        self._thread.start()
        return format_udp_endpoint(*front.getsockname()[:2])

    def _lost(self) -> bool:
        lost = self._rng.random() < self.loss
        self.counts["dropped" if lost else "forwarded"] += 1
        return lost

    def _run(self) -> None:
        front = self._front
        assert front is not None
        while True:
            for key, _ in self._sel.select():
                if key.data == "stop":
                    return
                sock = key.fileobj
                while True:
                    try:
                        data, addr = sock.recvfrom(65535)
                    except OSError:  # drained, or an ICMP error from the far side
                        break
                    if self._lost():
                        continue
                    if key.data is None:  # client -> target, through its own upstream socket
                        up = self._upstream.get(addr)
                        if up is None:
                            if len(self._upstream) >= _MAX_CLIENTS:
                                continue
                            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            up.connect(self._target)
                            up.setblocking(False)
                            self._upstream[addr] = up
                            self._sel.register(up, selectors.EVENT_READ, addr)
                        try:
                            up.send(data)
                        except OSError:
                            pass
                    else:  # target -> the client this upstream socket serves
                        try:
                            front.sendto(data, key.data)
                        except OSError:
                            pass

    def stop(self) -> None:
        if self._thread is not None:
            self._stop_w.send(b"x")
            self._thread.join(5)
            self._thread = None
        for sock in [self._front, *self._upstream.values()]:
            if sock is not None:
                sock.close()
        self._upstream.clear()
        self._sel.close()
        self._stop_r.close()
        self._stop_w.close()
