"""UDP carrier: ``udp://HOST:PORT`` endpoints, connections over datagrams.

The connections themselves (setup, reliable stream frames, unreliable datagrams,
close) are ``sporenet/protocols/link/datagram.py``, sans-IO; this module owns the
sockets and the thread that drives it.

Threads and ownership:
- One I/O thread owns every socket (listeners, the dial socket per address family,
  the wake-up socketpair) and runs a ``selectors`` loop.
- Each socket has one ``DatagramEndpoint``; all of them are guarded by ``_lock``.
  ``send``, ``send_datagram``, ``close``, ... run on the caller's thread: they change
  the endpoint under the lock and wake the I/O thread, which transmits. Events are
  delivered on the I/O thread outside the lock, so ``on_event`` may call back in.
- ``listen`` binds on the caller's thread (so it can return the bound endpoint and
  raise) and hands the socket over.

A dial goes out from a listening socket of the same family when there is one, so the
peer sees (and a NAT maps) the port we listen on; otherwise from a per-family socket
on an ephemeral port. ``IP_RECVERR`` turns an ICMP port-unreachable into an immediate
``DialFailed`` instead of a dial timeout.

``send_datagram(conn_id, frame)`` and ``send_bulk(conn_id, frame)`` are this carrier's
additions to ``carrier.Carrier``. ``send_datagram``: one frame, one datagram, no
retransmission; the receiver sees a ``FrameReceived`` (through ``rx_filter`` like every
frame) or nothing; ``datagram_max`` is its bound. ``send_bulk``, the data path's: a
superpacket cut into chunks that leave in one ``UDP_SEGMENT`` send, arrive in one
``UDP_GRO`` read where the path has it, and are repaired on a loss report.

Backpressure: outbound, ``send`` returns False once ``send_buffer`` bytes wait
unacknowledged; inbound, ``pause_reading`` holds delivered frames and shrinks the
window we advertise, which stops the peer's sender.
"""

from __future__ import annotations

import errno
import os
import random
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

import structlog

from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.link import datagram as dg
from sporenet.protocols.link.admission import (
    DEFAULT_PER_SOURCE,
    DEFAULT_TOTAL,
    source_key,
)
from sporenet.protocols.wire import MAX_FRAME_SIZE

from .carrier import (
    CarrierStats,
    Connected,
    ConnStats,
    DialFailed,
    Disconnected,
    EventCallback,
    FrameReceived,
    format_host_port_endpoint,
    listen_address,
    listen_failed,
    new_conn_id,
    parse_host_port_endpoint,
)
from .errors import TransportClosed
from .log_limit import LimitedLogger
from .wakeup import Wakeup

log = structlog.get_logger(__name__)

DEFAULT_SEND_BUFFER = dg.DEFAULT_SEND_BUFFER
_SOCK_BUFFER = 4 * 1024 * 1024
_READS_PER_TURN = 256
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
# UDP segmentation offload (<linux/udp.h>): one sendmsg of equal-size datagrams that the
# kernel (or the NIC) cuts, and GRO that hands several back in one recvmsg with their size
_SOL_UDP, _UDP_SEGMENT, _UDP_GRO = 17, 103, 104
_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES = 64, 65_000
_GRO_ANC = socket.CMSG_SPACE(4)
_R = selectors.EVENT_READ


def parse_udp_endpoint(endpoint: str) -> tuple[str, int]:
    """``"udp://127.0.0.1:80"`` -> ``("127.0.0.1", 80)``; ``"udp://[::1]:0"`` -> ``("::1", 0)``."""
    return parse_host_port_endpoint(endpoint, "udp")


def format_udp_endpoint(host: str, port: int) -> str:
    return format_host_port_endpoint("udp", host, port)


class _Socket:
    """One UDP socket and the endpoint of its connections."""

    __slots__ = ("endpoint", "family", "gro", "gso", "listening", "sock")

    def __init__(self, sock: socket.socket, endpoint: dg.DatagramEndpoint, listening: bool) -> None:
        self.sock, self.family, self.endpoint = sock, sock.family, endpoint
        self.listening = listening
        self.gso = True   # until a segmented send fails: then one datagram per call
        try:
            sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
            self.gro = True
        except OSError:
            self.gro = False


class UdpCarrier:
    """Frames over UDP. Driven by its own I/O thread plus the thread-safe methods of
    ``carrier.Carrier``; events go to ``on_event`` on the I/O thread."""

    scheme = "udp"

    def __init__(self, on_event: EventCallback, *, max_frame: int = MAX_FRAME_SIZE,
                 send_buffer: int = DEFAULT_SEND_BUFFER, dial_timeout: float = dg.DIAL_TIMEOUT,
                 linger: float = dg.LINGER, name: str = "udp",
                 rx_filter: Callable[[int, bytes, float], bool] | None = None,
                 max_pending: int = DEFAULT_TOTAL,
                 max_pending_per_source: int = DEFAULT_PER_SOURCE,
                 mss: int = dg.DEFAULT_MSS, dead_after: float = dg.DEAD_AFTER) -> None:
        if send_buffer < max_frame + 4:
            raise LocalProtocolError("send_buffer must hold at least one largest frame")
        self.max_frame = max_frame
        self.datagram_max = mss + dg.DATA_HEADER - dg.DGRAM_HEADER
        self._on_event, self._rx_filter = on_event, rx_filter
        self._opts = dict(max_frame=max_frame, mss=mss, send_buffer=send_buffer,
                          dial_timeout=dial_timeout, linger=linger, dead_after=dead_after,
                          max_pending=max_pending, max_pending_per_source=max_pending_per_source)
        self._rng = random.Random(int.from_bytes(os.urandom(16), "big"))
        self._log = LimitedLogger(log.bind(carrier=name))
        self._lock = threading.RLock()  # guards everything below marked "shared"
        self._stopped = False                           # shared
        self._socks: list[_Socket] = []                 # shared (appended by the I/O thread)
        self._where: dict[int, _Socket] = {}            # shared: conn id -> its socket
        self._remote: dict[int, str] = {}               # shared: conn id -> endpoint string
        self._dials: dict[int, str] = {}                # shared: dial conn id -> endpoint
        self._totals: Counter[str] = Counter()          # shared: CarrierStats fields only
        self._io: Counter[str] = Counter()              # I/O thread: send_dropped, gso_sends
        self._totals_io: Counter[str] = Counter()       # shared: failed sends on callers' threads
        self._cmds: deque[tuple] = deque()              # shared
        self._wakeup = Wakeup()
        self._resolver: ThreadPoolExecutor | None = None
        # I/O thread only:
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wakeup.reader, _R, None)
        self._late: list[DialFailed] = []  # lock held: failures found before a dial started
        self._stopping = False
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"sporenet-{name}-io", daemon=True)
        self._thread.start()

    # ----- thread-safe API -------------------------------------------------------------

    def listen(self, endpoint: str) -> str:
        family, addr = listen_address(endpoint, "udp", socket.SOCK_DGRAM)
        sock = self._socket(family)
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise listen_failed(endpoint, exc) from None
        bound = format_udp_endpoint(*sock.getsockname()[:2])
        try:
            self._post(("adopt", self._wrap(sock, listening=True)))
        except TransportClosed:
            sock.close()
            raise
        self._log.info("listening", endpoint=bound)
        return bound

    def dial(self, endpoint: str) -> None:
        try:
            host, port = parse_udp_endpoint(endpoint)
        except ValueError as exc:
            self._post(("dial_failed", endpoint, str(exc)))
            return
        self._post(("dial", endpoint, host, port))

    def send(self, conn_id: int, frame: bytes) -> bool:
        n = len(frame)
        if not 0 < n <= self.max_frame:
            raise LocalProtocolError(f"frame of {n} bytes outside 1..{self.max_frame}")
        with self._lock:
            where = self._where.get(conn_id)
            if where is None or self._stopped:
                raise TransportClosed(f"no open connection {conn_id}")
            try:
                ok = where.endpoint.send(conn_id, frame if type(frame) is bytes else bytes(frame))
            except KeyError:
                raise TransportClosed(f"connection {conn_id} is closed") from None
        if ok:
            self._wakeup.wake()
        return ok

    def send_bulk(self, conn_id: int, frame: bytes) -> bool:
        """IP data: one frame as chunked datagrams, repaired on loss reports, neither
        ordered nor held behind the stream (``DatagramEndpoint.send_chunked``); a frame
        over 64 chunks goes in the stream instead."""
        frame = frame if type(frame) is bytes else bytes(frame)  # held for repairs
        with self._lock:
            where = self._where.get(conn_id)
            if where is None or self._stopped:
                raise TransportClosed(f"no open connection {conn_id}")
            ep = where.endpoint
            batch = ep.chunked(conn_id, frame, time.monotonic())
            if batch is None:
                try:
                    ok = len(frame) <= self.max_frame and ep.send(conn_id, frame)
                except KeyError:
                    raise TransportClosed(f"connection {conn_id} is closed") from None
        if batch is None:
            if ok:
                self._wakeup.wake()
            return ok
        # Sent here, on the caller's (the data path's) thread, not handed to the I/O
        # thread: one wake-up less per packet each way (docs/decisions.md). A datagram
        # socket has no framing two writers could interleave.
        self._send_chunks(where, *batch)
        return True

    def send_datagram(self, conn_id: int, frame: bytes) -> bool:
        """One frame in one datagram, unreliably; False if it is over ``datagram_max`` or
        the connection is not open."""
        with self._lock:
            where = self._where.get(conn_id)
            if where is None:
                return False
            ok = where.endpoint.send_datagram(conn_id, frame)
        if ok:
            self._wakeup.wake()
        return ok

    def close(self, conn_id: int, reason: str = "closed") -> None:
        with self._lock:
            where = self._where.get(conn_id)
            if where is None or self._stopped:
                return
            where.endpoint.close(conn_id, reason, time.monotonic())
        self._wakeup.wake()

    def pause_reading(self, conn_id: int) -> None:
        self._call(conn_id, lambda ep: ep.pause(conn_id, True))

    def resume_reading(self, conn_id: int) -> None:
        self._call(conn_id, lambda ep: ep.pause(conn_id, False))

    def confirm(self, conn_id: int) -> None:
        self._call(conn_id, lambda ep: ep.confirm(conn_id))

    def stats(self) -> CarrierStats:
        with self._lock:
            totals = Counter(self._totals)
            conns = {}
            for where in self._socks:
                ep = where.endpoint
                totals["pending"] += ep.pending
                totals["malformed_frames"] += ep.counters["malformed"]
                totals["pending_evicted"] += ep.counters["pending_evicted"]
                totals.update(ep.closed_totals)
                for cid, c in ep.conns.items():
                    if c.state == "connecting" or cid not in self._remote:
                        continue
                    conns[cid] = ConnStats(self._remote[cid], c.outbound, c.bytes_in, c.bytes_out,
                                           c.frames_in, c.frames_out, c.drops, c.queued, c.paused)
        for s in conns.values():
            totals.update(bytes_in=s.bytes_in, bytes_out=s.bytes_out, frames_in=s.frames_in,
                          frames_out=s.frames_out, drops=s.drops)
        return CarrierStats(conns=conns, **totals)

    def counters(self) -> dict[str, int]:
        """The datagram layer's own counts (retransmits, unknown tokens, ...), summed."""
        with self._lock:
            out: Counter[str] = Counter()
            for where in self._socks:
                out.update(where.endpoint.counters)
        out.update(self._io)
        out.update(self._totals_io)
        return dict(out)

    def shutdown(self) -> None:
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._cmds.append(("stop",))
                self._wakeup.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()
            if self._resolver is not None:
                self._resolver.shutdown(wait=True, cancel_futures=True)

    # ----- helpers for the API ------------------------------------------------------------

    def _call(self, conn_id: int, fn: Callable[[dg.DatagramEndpoint], None]) -> None:
        with self._lock:
            where = self._where.get(conn_id)
            if where is None:
                return
            fn(where.endpoint)
        self._wakeup.wake()

    def _post(self, cmd: tuple) -> None:
        with self._lock:
            if self._stopped:
                raise TransportClosed("carrier is shut down")
            self._cmds.append(cmd)
        self._wakeup.wake()

    def _socket(self, family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUFFER)
            except OSError:
                pass
        try:  # ICMP errors (port unreachable) reach us through the error queue
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        except OSError:
            pass
        sock.setblocking(False)
        return sock

    def _wrap(self, sock: socket.socket, listening: bool) -> _Socket:
        ep = dg.DatagramEndpoint(rng=self._rng, new_id=new_conn_id, listening=listening,
                                 source_of=lambda addr: source_key(addr[0]), **self._opts)
        return _Socket(sock, ep, listening)

    # ----- I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._running:
                with self._lock:
                    due = min((d for w in self._socks
                               if (d := w.endpoint.next_deadline()) is not None), default=None)
                timeout = None if due is None else max(0.0, due - time.monotonic())
                ready = self._sel.select(timeout)
                now = time.monotonic()
                inbound: list[tuple[_Socket, Hashable, bytes, int]] = []
                for key, _mask in ready:
                    if key.data is None:
                        self._wakeup.drain()
                    else:
                        self._read(key.data, inbound)
                self._turn(inbound, now)
        finally:
            self._teardown()

    def _read(self, where: _Socket, into: list) -> None:
        sock, gro = where.sock, where.gro
        for _ in range(_READS_PER_TURN):
            try:
                if gro:
                    data, anc, _flags, addr = sock.recvmsg(65535, _GRO_ANC)
                else:
                    data, addr = sock.recvfrom(65535)
                    anc = ()
            except BlockingIOError:
                return
            except OSError:
                self._read_errors(where)
                continue
            peer = (addr[0], addr[1])
            stride = next((int.from_bytes(d[:4], "little") for lvl, typ, d in anc
                           if lvl == _SOL_UDP and typ == _UDP_GRO and len(d) >= 2), 0)
            # several datagrams of one sender, coalesced (stride: their size), or one
            into.append((where, peer, data, stride if 0 < stride < len(data) else 0))

    def _read_errors(self, where: _Socket) -> None:
        """ICMP errors on the error queue: the address each one was for."""
        for _ in range(64):
            try:
                _, _, _, addr = where.sock.recvmsg(1, 512, _MSG_ERRQUEUE)
            except OSError:
                return
            if addr:
                with self._lock:
                    where.endpoint.unreachable((addr[0], addr[1]), "port unreachable (ICMP)")

    def _turn(self, inbound: list, now: float) -> None:
        """Feed what arrived, run the timers, run commands, send, then emit events."""
        with self._lock:
            for where, addr, data, stride in inbound:
                if stride:
                    where.endpoint.receive_batch(addr, data, stride, now)
                else:
                    where.endpoint.receive(addr, data, now)
            while self._cmds:
                cmd = self._cmds.popleft()
                self._command(cmd, now)
            out: list[tuple[_Socket, Hashable, bytes]] = []
            batches: list[tuple[_Socket, Hashable, bytes, int]] = []
            events: list[tuple[_Socket | None, object]] = [(None, e) for e in self._late]
            self._late.clear()
            for where in self._socks:
                ep = where.endpoint
                ep.handle_timer(now)
                single, chunked = ep.transmit_batches(now)
                out.extend((where, addr, data) for addr, data in single)
                batches.extend((where, addr, data, stride) for addr, data, stride in chunked)
                events.extend((where, e) for e in ep.events())
        self._send_all(out)
        for where, addr, data, stride in batches:
            self._send_chunks(where, addr, data, stride)
        for where, event in events:
            self._deliver(where, event, now)
        if self._stopping:
            self._running = False

    def _send_all(self, out: list[tuple[_Socket, Hashable, bytes]]) -> None:
        """Send in order; runs of equal-size datagrams to one address go in one
        ``UDP_SEGMENT`` sendmsg (the last of a run may be shorter), the rest one by one."""
        i, n = 0, len(out)
        while i < n:
            where, addr, first = out[i]
            j, total, size = i + 1, len(first), len(first)
            if where.gso:
                while (j < n and j - i < _GSO_MAX_SEGMENTS and out[j][0] is where
                       and out[j][1] == addr and total + len(out[j][2]) <= _GSO_MAX_BYTES
                       and len(out[j][2]) <= size and len(out[j - 1][2]) == size):
                    total += len(out[j][2])
                    j += 1
            if j - i > 1 and self._send_segmented(where, addr, [d for _, _, d in out[i:j]], size):
                i = j
                continue
            for k in range(i, j):
                self._send_one(where, addr, out[k][2])
            i = j

    def _send_chunks(self, where: _Socket, addr: Hashable, data: bytes, stride: int) -> None:
        """A chunked frame or its repair, from any thread (the data path's, or the I/O
        thread's for repairs): one ``UDP_SEGMENT`` send, or datagram by datagram. Only
        errors are counted (under the lock: the I/O thread's counters are its own); ICMP
        errors wait on the socket's error queue for the I/O thread, which the socket wakes."""
        try:
            if len(data) > stride and where.gso:
                where.sock.sendmsg([data], [(_SOL_UDP, _UDP_SEGMENT, stride.to_bytes(2, "little"))],
                                   0, addr)
            else:
                view = memoryview(data)
                for i in range(0, len(data), stride):
                    where.sock.sendto(view[i:i + stride], addr)
        except BlockingIOError:
            with self._lock:
                self._totals_io["send_dropped"] += -(-len(data) // stride)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                return
            if where.gso and len(data) > stride:
                where.gso = False  # no segmentation offload here: one by one from now on
                self._log.info("udp_gso_off", error=str(exc))
                self._send_chunks(where, addr, data, stride)
                return
            with self._lock:
                self._totals_io["send_failed"] += 1

    def _send_segmented(self, where: _Socket, addr: Hashable, parts: list[bytes], size: int) -> bool:
        try:
            where.sock.sendmsg([b"".join(parts)],
                               [(_SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, "little"))], 0, addr)
            self._io["gso_sends"] += 1
            return True
        except BlockingIOError:  # the socket buffer is full: every segment is lost
            self._io["send_dropped"] += -(-sum(len(p) for p in parts) // size)
            return True
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                self._read_errors(where)
                return True
            where.gso = False  # no segmentation offload here (EIO, EINVAL): one by one
            self._log.info("udp_gso_off", error=str(exc))
            return False

    def _send_one(self, where: _Socket, addr: Hashable, data: bytes) -> None:
        try:
            where.sock.sendto(data, addr)
        except BlockingIOError:
            self._io["send_dropped"] += 1  # a lost datagram: resent if it was a segment
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                self._read_errors(where)
            else:
                self._log.warning("send_failed", peer=str(addr), error=str(exc))

    def _command(self, cmd: tuple, now: float) -> None:  # lock held
        kind = cmd[0]
        if kind == "adopt":
            where = cmd[1]
            self._socks.append(where)
            self._sel.register(where.sock, _R, where)
        elif kind == "dial":
            _, endpoint, host, port = cmd
            try:  # literal addresses at once; names on the resolver thread
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                           flags=socket.AI_NUMERICHOST)
            except socket.gaierror:
                if self._resolver is None:
                    self._resolver = ThreadPoolExecutor(1, thread_name_prefix="sporenet-udp-dns")
                self._resolver.submit(self._resolve, endpoint, host, port)
                return
            self._start_dial(endpoint, infos, now)
        elif kind == "resolved":
            _, endpoint, infos = cmd
            if isinstance(infos, str):
                self._dial_failed(endpoint, infos)
            else:
                self._start_dial(endpoint, infos, now)
        elif kind == "dial_failed":
            self._dial_failed(cmd[1], cmd[2])
        elif kind == "stop":
            for where in self._socks:
                for cid in list(where.endpoint.conns):
                    where.endpoint.abort(cid, "shutdown")
            self._stopping = True

    def _resolve(self, endpoint: str, host: str, port: int) -> None:  # resolver thread
        try:
            result: object = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            result = f"cannot resolve {host!r}: {exc}"
        try:
            self._post(("resolved", endpoint, result))
        except TransportClosed:
            pass

    def _start_dial(self, endpoint: str, infos: list, now: float) -> None:  # lock held
        family, _, _, _, addr = infos[0]
        where = next((w for w in self._socks if w.family == family and w.listening), None)
        where = where or next((w for w in self._socks if w.family == family), None)
        if where is None:
            where = self._wrap(self._socket(family), listening=False)
            where.sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
            self._socks.append(where)
            self._sel.register(where.sock, _R, where)
        cid = where.endpoint.connect((addr[0], addr[1]), now)
        self._where[cid] = where
        self._dials[cid] = endpoint

    def _dial_failed(self, endpoint: str, reason: str) -> None:  # lock held
        self._totals["dial_failures"] += 1
        self._late.append(DialFailed(endpoint, reason))

    def _deliver(self, where: _Socket, event: object, now: float) -> None:
        if where is None:  # an event of our own: a dial that failed before it started
            self._emit(event)
        elif isinstance(event, dg.Received):
            if self._rx_filter is not None and self._rx_filter(event.conn_id, event.frame, now):
                with self._lock:
                    self._totals["screened_frames"] += 1
                return
            self._emit(FrameReceived(event.conn_id, event.frame))
        elif isinstance(event, dg.Opened):
            with self._lock:
                if event.outbound:
                    remote = self._dials.pop(event.conn_id)
                    self._totals["dialled"] += 1
                else:
                    remote = format_udp_endpoint(*event.addr)
                    self._where[event.conn_id] = where
                    self._totals["accepted"] += 1
                self._remote[event.conn_id] = remote
            self._emit(Connected(event.conn_id, event.outbound, remote))
        elif isinstance(event, dg.Closed):
            with self._lock:
                self._gone(where, event.conn_id)
                self._totals["disconnects"] += 1
            self._emit(Disconnected(event.conn_id, event.reason, event.broken))
        elif isinstance(event, dg.OpenFailed):
            with self._lock:
                endpoint = self._dials.pop(event.conn_id, "")
                self._where.pop(event.conn_id, None)
                self._totals["dial_failures"] += 1
            self._emit(DialFailed(endpoint, event.reason))

    def _gone(self, where: _Socket, conn_id: int) -> None:  # lock held
        self._where.pop(conn_id, None)
        self._remote.pop(conn_id, None)

    def _emit(self, event: object) -> None:
        try:
            self._on_event(event)
        except Exception:  # the owner's bug must not kill the I/O thread
            self._log.exception("on_event_failed", event=type(event).__name__)

    def _teardown(self) -> None:
        for where in self._socks:
            try:
                self._sel.unregister(where.sock)
            except (KeyError, ValueError):
                pass
            where.sock.close()
        self._sel.close()
        self._wakeup.close()
