"""The data path engine: IP packets between the TUN and the links, never via an actor.

docs/datapath.md has the design; in short:
- ``start()`` runs one thread, ``sporenet-tun-rx``, that owns the TUN's reads. Each
  read is one packet or a TCP superpacket with its virtio_net_hdr. The thread looks
  up the next hop and the data keypair of the destination's /64, seals it once, and
  hands one ``Routed``/``IpData`` frame to ``send(conn_id, frame)``: the carrier's
  ``send_bulk`` where it has one (UDP: chunked datagrams, sent at once on this thread),
  else its thread-safe ``send`` (TCP: it only queues).
- ``rx(conn_id, frame, now)`` is chained into the carrier's ``rx_filter``, so it runs
  on the carrier's I/O thread for each inbound frame. An IP frame for our /64 is
  opened, its header sanitized and written to the TUN. One for another /64 is sent on
  to the next hop unopened. Either way rx returns True: the frame never becomes an
  event. Every other frame returns False and goes to the actors as before.
- ``routes`` and ``keys`` are ``Snapshot`` holders. The router and the session side
  publish immutable dicts by swapping the reference, and this engine reads them
  without asking anyone.
- Every drop is counted by reason in ``counters``, never logged per packet.

- ``reach`` (the contract's rules as /64 sets) is checked where a packet leaves the
  TUN (``refused_out``) and before one is delivered to it (``refused_in``); replies of
  a flow a member we may not reach opened go back (``protocols/datapath/flows.py``).
- A packet to a destination without a session waits in a bounded queue (64 per
  destination, 1,024 in all) and ``want_session(key)`` asks for a handshake (at most
  once a second per destination); a new keys snapshot wakes the reader to flush it.
  The same call asks for a rekey when the sealing keypair is due.
- ``on_confirm(index)`` tells the session side when a frame under its unconfirmed
  (responder's) keypair opened here: key confirmation, as a message would be.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import Counter, deque
from typing import Callable

import structlog

from sporenet.protocols.datapath import icmp6, keys, vnet
from sporenet.protocols.datapath.flows import ReplyFlows
from sporenet.protocols.datapath.keys import DataKeypair, DataRejected
from sporenet.protocols.datapath.tables import DataKeys, DataLinks, DataReach, DataRoutes
from sporenet.protocols.errors import DecodeError

from .errors import TransportError
from .log_limit import LimitedLogger
from .tun import TunDevice

log = LimitedLogger(structlog.get_logger(__name__))

HOP_LIMIT = 64
_PREFIX = 8  # a node owns a /64: the first 8 bytes of an address
QUEUE_PER_DESTINATION = 64   # superpackets waiting for a handshake, per destination
QUEUE_TOTAL = 1_024
QUEUE_TIMEOUT = 10.0         # s: queued packets older than this are dropped (no_session)
ASK_INTERVAL = 1.0           # s between want_session calls for one destination
# s of sending to a destination with nothing back before a new handshake (WireGuard's
# Keepalive + Rekey-Timeout rule): the peer may have restarted and lost our keys
NO_ANSWER_REKEY = 5.0


class Snapshot:
    """One reference, swapped whole by its writer, read without a lock."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class DataPlane:
    """What a node's agents share with its data path, made before any of them starts.

    The router, link, overlay and tun agents each write one snapshot here; the link
    agent sets ``carrier`` when it makes one (the data path sends on it), and the tun
    agent sets ``engine`` while its TUN is up. The carrier's ``rx_filter`` calls
    ``rx``, so IP frames never reach an actor, also while no TUN runs (then they are
    dropped and counted ``no_tun``). Agents restart on their own; these holders stay.
    """

    def __init__(self) -> None:
        self.routes = Snapshot(DataRoutes())  # dst /64 -> next-hop node id, dst's key
        # authenticated peer links: IP frames from anything else (a connection still in
        # its hello, a non-member) are dropped, so no one who is not a member can inject
        # packets or use this node as a relay
        self.links = Snapshot(DataLinks())
        self.keys = Snapshot(DataKeys())
        self.reach = Snapshot(DataReach())
        self.carrier: object | None = None
        self.engine: DataPath | None = None
        self.counters: Counter[str] = Counter()  # what arrives while no engine runs

    def send(self, conn_id: int, frame: bytes) -> bool:
        carrier = self.carrier
        if carrier is None:
            return False
        try:  # a datagram carrier sends IP data as chunks, not in its ordered stream
            send = getattr(carrier, "send_bulk", None) or carrier.send
            return send(conn_id, frame)
        except TransportError:  # closed under us: the link agent hears of it
            return False

    def rx(self, conn_id: int, frame: bytes, now: float) -> bool:
        engine = self.engine
        if engine is not None:
            return engine.rx(conn_id, frame, now)
        try:
            head = keys.parse_routed_ip(frame)
        except DecodeError:
            self.counters["malformed"] += 1
            return True
        if head is None:
            return False
        self.counters["no_tun"] += 1
        return True

    def publish_keys(self, value: DataKeys) -> None:
        self.keys.value = value
        engine = self.engine
        if engine is not None:
            engine.keys_changed()

    def publish_reach(self, value: DataReach) -> None:
        self.reach.value = value
        engine = self.engine
        if engine is not None:
            engine.reach_changed()


class DataPath:
    def __init__(self, tun: TunDevice, *, address: bytes, plane: DataPlane | None = None,
                 send: Callable[[int, bytes], bool] | None = None,
                 want_session: Callable[[bytes], None] | None = None,
                 on_confirm: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if len(address) != 16:
            raise ValueError("address must be the node's 16-byte overlay address")
        plane = plane if plane is not None else DataPlane()
        self._tun, self._address, self._prefix = tun, address, address[:_PREFIX]
        # the overlay MTU this node promised (its TUN's at start); an admin who raises the
        # device's MTU later gets Packet Too Big for what exceeds it, as from a router
        self._mtu = tun.mtu
        self._send, self._clock = send if send is not None else plane.send, clock
        self._want_session = want_session or (lambda key: None)
        self._on_confirm = on_confirm or (lambda index: None)
        self.plane = plane
        self.routes, self.links, self.keys, self.reach = (plane.routes, plane.links,
                                                          plane.keys, plane.reach)
        self.counters: Counter[str] = Counter()
        self._flows = ReplyFlows()
        self._flows_lock = threading.Lock()
        self._open_locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # packets waiting for a session (tun-rx thread only): dst /64 -> deque of (t, frame)
        self._pending: dict[bytes, deque] = {}
        self._pending_count = 0
        self._asked: dict[bytes, float] = {}  # dst /64 -> when want_session last went out
        # dst /64 -> when we began sending with nothing back (the rx side pops it)
        self._unanswered: dict[bytes, float] = {}
        self._keys_seen = -2
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def device(self) -> TunDevice:
        return self._tun

    def counters_snapshot(self) -> dict[str, int]:
        """A copy of the counters, safe while the data threads add new keys."""
        for _ in range(5):
            try:
                return dict(self.counters)
            except RuntimeError:  # a new reason appeared mid-copy: try again
                continue
        return {}

    # ----- the writers' side ----------------------------------------------------------

    def keys_changed(self) -> None:
        """A new keys snapshot is in: wake the reader if packets wait for a session."""
        if self._pending_count:
            self.wake()

    def reach_changed(self) -> None:
        """A new reach snapshot is in: forget the reply flows of peers no longer members."""
        reach = self.reach.value
        if reach.members is not None:
            with self._flows_lock:
                self._flows.forget(reach.members)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the reader wakes anyway

    # ----- out: TUN -> link (the tun-rx thread) ---------------------------------------

    def start(self) -> None:
        os.set_blocking(self._tun.fileno(), False)
        self._thread = threading.Thread(target=self._run, name="sporenet-tun-rx", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wake and join the reader, then close the TUN (the device goes with it)."""
        self._stopping = True
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._tun.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        tun, fd = self._tun, self._tun.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                frame = tun.read()
            except BlockingIOError:
                # Idle: wait for a packet or a wake-up (a new keys snapshot, stop).
                if self._pending_count:
                    self._flush(self._clock())
                poller.poll(1000 if self._pending_count else None)
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                if self._pending_count:
                    self._flush(self._clock())
                continue
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
        dst = frame[vnet.SIZE + 24:vnet.SIZE + 40]
        if dst[0] & 0xFE != 0x06:  # not in 600::/7: link-local chatter, multicast
            c["not_overlay"] += 1
            return
        if frame[1] & ~vnet.GSO_ECN == vnet.GSO_NONE and \
                len(frame) - vnet.SIZE > self._mtu:
            c["too_big"] += 1  # a GSO superpacket's segments are cut to the MTU; this is not
            self._icmp_back(frame, too_big=self._mtu)
            return
        prefix = dst[:_PREFIX]
        reach = self.reach.value
        if not reach.may_send(prefix):
            if not self._reply_ok(frame, prefix, reach, now):
                c["refused_out"] += 1  # the contract: we may not open flows to it
                self._icmp_back(frame, icmp6.CODE_ADMIN_PROHIBITED)
                return
        elif not reach.may_accept(prefix):  # it may not reach us: let its replies in
            with self._flows_lock:
                self._flows.saw_outbound(memoryview(frame)[vnet.SIZE:], prefix, now)
        routes = self.routes.value
        conn = _next_conn(routes, self.links.value, prefix)
        if conn is None:
            c["no_route"] += 1
            self._icmp_back(frame, icmp6.CODE_NO_ROUTE)
            return
        kp = _sealer(self.keys.value, prefix, now)
        if kp is None:
            self._queue(prefix, frame, now, routes.key_of.get(prefix))
            return
        since = self._unanswered.setdefault(prefix, now)
        if now - since >= NO_ANSWER_REKEY:
            self._unanswered[prefix] = now
            c["no_answer_rekey"] += 1
            self._ask(prefix, routes.key_of.get(prefix), now)
        elif kp.rekey_due(now):
            self._ask(prefix, routes.key_of.get(prefix), now)
        self._seal_send(kp, conn, frame, dst, now)

    def _seal_send(self, kp: DataKeypair, conn: int, frame: bytes, dst: bytes,
                   now: float) -> None:
        c = self.counters
        try:
            data = kp.seal(frame, now)
        except Exception:  # noqa: BLE001 (a keypair expired between the check and the seal)
            c["seal_failed"] += 1
            return
        src = frame[vnet.SIZE + 8:vnet.SIZE + 24]
        if self._send(conn, keys.routed_ip_frame(src, dst, HOP_LIMIT, data)):
            c["packets_out"] += 1
            c["bytes_out"] += len(frame) - vnet.SIZE
        else:
            c["link_queue_full"] += 1

    def _reply_ok(self, frame: bytes, prefix: bytes, reach: DataReach, now: float) -> bool:
        if reach.members is not None and prefix not in reach.members:
            return False
        with self._flows_lock:
            return self._flows.is_reply(memoryview(frame)[vnet.SIZE:], prefix, now)

    def _ask(self, prefix: bytes, key: bytes | None, now: float) -> None:
        if key is None or now - self._asked.get(prefix, float("-inf")) < ASK_INTERVAL:
            return
        if len(self._asked) > 4 * QUEUE_TOTAL:
            self._asked.clear()  # bounded: forgetting only means asking again
        self._asked[prefix] = now
        self.counters["session_asked"] += 1
        try:
            self._want_session(key)
        except Exception as exc:  # noqa: BLE001 (the session side is restarting: ask again later)
            log.warning("want_session_failed", error=repr(exc))

    def _queue(self, prefix: bytes, frame: bytes, now: float, key: bytes | None) -> None:
        c = self.counters
        if key is None:
            c["no_session"] += 1  # no key to open a session with: nothing to wait for
            return
        q = self._pending.get(prefix)
        if q is None:
            if len(self._pending) >= QUEUE_TOTAL:
                c["no_session"] += 1
                return
            q = self._pending[prefix] = deque()
        if len(q) >= QUEUE_PER_DESTINATION or self._pending_count >= QUEUE_TOTAL:
            c["queue_full"] += 1
        else:
            q.append((now, frame))
            self._pending_count += 1
            c["queued"] += 1
        self._ask(prefix, key, now)

    def _flush(self, now: float) -> None:
        """Send what waited for a session that now has keys; drop what waited too long."""
        keys_now, links, routes = self.keys.value, self.links.value, self.routes.value
        for prefix, q in list(self._pending.items()):
            kp = _sealer(keys_now, prefix, now)
            conn = _next_conn(routes, links, prefix)
            if kp is not None and conn is not None:
                while q:
                    _, frame = q.popleft()
                    self._pending_count -= 1
                    self._seal_send(kp, conn, frame, frame[vnet.SIZE + 24:vnet.SIZE + 40], now)
            else:
                while q and now - q[0][0] >= QUEUE_TIMEOUT:
                    q.popleft()
                    self._pending_count -= 1
                    self.counters["no_session"] += 1
            if not q:
                del self._pending[prefix]

    def _icmp_back(self, frame: bytes, code: int = 0, too_big: int = 0) -> None:
        packet = memoryview(frame)[vnet.SIZE:]
        if not icmp6.should_answer(packet):
            return
        answer = (icmp6.packet_too_big(self._address, packet, too_big) if too_big
                  else icmp6.destination_unreachable(self._address, packet, code))
        try:
            self._tun.write(vnet.PLAIN.encode() + answer)
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
        if conn_id not in self.links.value.node_of:
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
                first = not kp.confirmed
                kp.confirmed = True
        except DataRejected as exc:
            c[exc.reason] += 1
            return
        if first:  # the peer has our responder keys: the session side moves them to current
            self._on_confirm(index)
        try:
            hdr, packet = vnet.parse(plaintext)
            vnet.sanitize(hdr, packet)
            src, _ = icmp6.ipv6_addresses(packet)
        except DecodeError:
            c["bad_vnet"] += 1
            return
        src_prefix = src[:_PREFIX]
        if self.keys.value.prefix_of.get(kp.peer) != src_prefix:
            c["spoofed_src"] += 1  # a member may only send from its own /64
            return
        self._unanswered.pop(src_prefix, None)
        reach = self.reach.value
        if not reach.may_accept(src_prefix):
            with self._flows_lock:
                reply = (reach.members is None or src_prefix in reach.members) and \
                    self._flows.is_reply_in(packet, src_prefix, now)
            if not reply:
                c["refused_in"] += 1  # the contract: it may not reach us
                return
        if not reach.may_send(src_prefix):  # we may not reach it: only replies go back
            with self._flows_lock:
                self._flows.saw_inbound(packet, src_prefix, now)
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
        conn = _next_conn(self.routes.value, self.links.value, dst[:_PREFIX])
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


def _next_conn(routes: DataRoutes, links: DataLinks, prefix: bytes) -> int | None:
    """The connection of the next hop towards ``prefix``, if we route there and the link is up."""
    hop = routes.next_hop.get(prefix)
    return None if hop is None else links.conn_of.get(hop)


def _sealer(data_keys: DataKeys, prefix: bytes, now: float) -> DataKeypair | None:
    """The keypair to seal to ``prefix`` under: ``next`` once the peer confirmed it (a
    frame under it opened here), else ``current``; None if neither can seal now."""
    slot = data_keys.by_prefix.get(prefix)
    if slot is None:
        return None
    cur, nxt = slot
    kp = nxt if nxt is not None and nxt.confirmed else cur
    return kp if kp is not None and kp.usable(now) else None
