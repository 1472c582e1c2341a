"""The data path engine: IP packets between the TUN and the links, never via an actor.

docs/datapath.md has the design; in short:
- ``start()`` runs one thread, ``sporenet-tun-rx``, that owns the TUN's reads. Each
  read is one packet or a TCP superpacket with its virtio_net_hdr. The thread looks
  up the next hop and the data keypair of the destination's /64, seals it once, and
  hands one ``Routed``/``IpData`` frame to ``send(conn_id, frame)`` (a carrier's
  thread-safe ``send``: it only queues).
- ``rx(conn_id, frame, now)`` is chained into the carrier's ``rx_filter``, so it runs
  on the carrier's I/O thread for each inbound frame. An IP frame for our /64 is
  opened, its header sanitized and written to the TUN. One for another /64 is sent on
  to the next hop unopened. Either way rx returns True: the frame never becomes an
  event. Every other frame returns False and goes to the actors as before.
- ``routes`` and ``keys`` are ``Snapshot`` holders. The router and the session side
  publish immutable dicts by swapping the reference, and this engine reads them
  without asking anyone.
- Every drop is counted by reason in ``counters``, never logged per packet.

Not here yet: queueing packets while a session handshake runs (they are counted
``no_session``), and the contract's send/deliver points (``admit`` hooks are the
place, see docs/datapath.md).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import structlog

from sporenet.protocols.datapath import icmp6, keys, vnet
from sporenet.protocols.datapath.keys import DataKeypair, DataRejected
from sporenet.protocols.errors import DecodeError

from .log_limit import LimitedLogger
from .tun import TunDevice

log = LimitedLogger(structlog.get_logger(__name__))

HOP_LIMIT = 64
_PREFIX = 8  # a node owns a /64: the first 8 bytes of an address


@dataclass(frozen=True)
class DataKeys:
    """The session side's snapshot: who we can seal to and what we can open."""

    by_prefix: dict[bytes, DataKeypair] = field(default_factory=dict)  # dst /64 -> current
    by_index: dict[int, DataKeypair] = field(default_factory=dict)     # our index -> any live
    prefix_of: dict[bytes, bytes] = field(default_factory=dict)        # peer key -> its /64


class Snapshot:
    """One reference, swapped whole by its writer, read without a lock."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class DataPath:
    def __init__(self, tun: TunDevice, *, address: bytes,
                 send: Callable[[int, bytes], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if len(address) != 16:
            raise ValueError("address must be the node's 16-byte overlay address")
        self._tun, self._address, self._prefix = tun, address, address[:_PREFIX]
        self._send, self._clock = send, clock
        self.routes = Snapshot({})        # dst /64 -> next-hop connection id
        # connection ids of authenticated peer links: IP frames from anything else (a
        # connection still in its hello, a non-member) are dropped, so no one who is not
        # a member can inject packets or use this node as a relay
        self.links = Snapshot(frozenset())
        self.keys = Snapshot(DataKeys())
        self.counters: Counter[str] = Counter()
        self._open_locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ----- out: TUN -> link (the tun-rx thread) ---------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sporenet-tun-rx", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the TUN (which ends the blocked read) and join the reader."""
        self._stopping = True
        self._tun.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        tun = self._tun
        while not self._stopping:
            try:
                frame = tun.read()
            except OSError as exc:
                if self._stopping or tun.closed:
                    return
                self.counters["tun_read_failed"] += 1
                log.warning("tun_read_failed", error=exc.strerror or str(exc))
                continue
            self.outbound(frame, self._clock())

    def outbound(self, frame: bytes, now: float) -> None:
        """One TUN read: ``virtio_net_hdr`` + IP packet."""
        c = self.counters
        if len(frame) < vnet.SIZE + icmp6.IPV6_HEADER_SIZE or frame[vnet.SIZE] >> 4 != 6:
            c["not_ipv6"] += 1  # the overlay is IPv6; the kernel sends no IPv4 our way
            return
        src = frame[vnet.SIZE + 8:vnet.SIZE + 24]
        dst = frame[vnet.SIZE + 24:vnet.SIZE + 40]
        if dst[0] & 0xFE != 0x06:  # not in 600::/7: link-local chatter, multicast
            c["not_overlay"] += 1
            return
        prefix = dst[:_PREFIX]
        conn = self.routes.value.get(prefix)
        if conn is None:
            c["no_route"] += 1
            self._icmp_back(frame, icmp6.CODE_NO_ROUTE)
            return
        kp = self.keys.value.by_prefix.get(prefix)
        if kp is None or not kp.usable(now):
            c["no_session"] += 1
            return
        try:
            data = kp.seal(frame, now)
        except Exception:  # noqa: BLE001 (a keypair expired between the check and the seal)
            c["seal_failed"] += 1
            return
        if self._send(conn, keys.routed_ip_frame(src, dst, HOP_LIMIT, data)):
            c["packets_out"] += 1
            c["bytes_out"] += len(frame) - vnet.SIZE
        else:
            c["link_queue_full"] += 1

    def _icmp_back(self, frame: bytes, code: int) -> None:
        packet = memoryview(frame)[vnet.SIZE:]
        if not icmp6.should_answer(packet):
            return
        try:
            self._tun.write(vnet.PLAIN.encode()
                            + icmp6.destination_unreachable(self._address, packet, code))
            self.counters["icmp_sent"] += 1
        except OSError:
            self.counters["tun_write_failed"] += 1

    # ----- in and transit: link -> TUN or next hop (a carrier's I/O thread) ------------

    def rx(self, conn_id: int, frame: bytes, now: float) -> bool:
        """The carrier's ``rx_filter`` hook: True if the frame was an IP packet (handled
        here, delivered, forwarded or dropped and counted), False for anything else."""
        c = self.counters
        try:
            head = keys.parse_routed_ip(frame)
        except DecodeError:
            c["malformed"] += 1
            return True
        if head is None:
            return False
        if conn_id not in self.links.value:
            c["unauthenticated_link"] += 1
            return True
        _, dst, hop_limit, hops = head
        if dst[:_PREFIX] == self._prefix:
            self._deliver(frame, now)
        else:
            self._transit(frame, dst, hop_limit, hops)
        return True

    def _deliver(self, frame: bytes, now: float) -> None:
        c = self.counters
        data = memoryview(frame)[keys.ROUTED_HEADER:]
        try:
            index, counter = keys.parse_ip_data(data)
        except DecodeError:
            c["malformed"] += 1
            return
        kp = self.keys.value.by_index.get(index)
        if kp is None:
            c["unknown_index"] += 1
            return
        try:
            with self._lock_for(index):
                plaintext = kp.open(data, counter, now)
        except DataRejected as exc:
            c[exc.reason] += 1
            return
        try:
            hdr, packet = vnet.parse(plaintext)
            vnet.sanitize(hdr, packet)
            src, _ = icmp6.ipv6_addresses(packet)
        except DecodeError:
            c["bad_vnet"] += 1
            return
        if self.keys.value.prefix_of.get(kp.peer) != src[:_PREFIX]:
            c["spoofed_src"] += 1  # a member may only send from its own /64
            return
        try:
            self._tun.write(plaintext)
        except OSError:
            c["tun_write_failed"] += 1  # the kernel refused the header after all
            return
        c["packets_in"] += 1
        c["bytes_in"] += len(packet)

    def _transit(self, frame: bytes, dst: bytes, hop_limit: int, hops: int) -> None:
        c = self.counters
        if hop_limit <= 1:
            c["hop_limit"] += 1
            return
        conn = self.routes.value.get(dst[:_PREFIX])
        if conn is None:
            c["transit_no_route"] += 1
            return
        out = bytearray(frame)  # one copy per superpacket: the two header bytes change
        out[34], out[35] = hop_limit - 1, min(hops + 1, 255)
        if self._send(conn, bytes(out)):
            c["forwarded"] += 1
        else:
            c["link_queue_full"] += 1

    def _lock_for(self, index: int) -> threading.Lock:
        lock = self._open_locks.get(index)
        if lock is None:
            with self._locks_guard:
                lock = self._open_locks.setdefault(index, threading.Lock())
        return lock
