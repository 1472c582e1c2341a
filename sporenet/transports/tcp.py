"""TCP carrier: ``tcp://HOST:PORT`` endpoints (``tcp://[::1]:PORT`` for IPv6),
length-prefixed frames (``sporenet/protocols/link/framing.py``).

Threads and ownership (the yggdrasil ``_field`` convention: ``_``-fields of
``_Conn`` and of the carrier marked "I/O thread" are touched only by it):
- One I/O thread runs a ``selectors`` loop and owns every socket: listeners,
  connections, the wake-up socketpair. Other threads hand it work through
  ``_cmds`` (a deque) plus one byte on the wake-up socket.
- ``send`` runs on the caller's thread: it appends to the connection's bounded
  out-queue under the connection's lock and posts a ``flush`` only when the I/O
  thread is not already busy with that connection (``io_pending``).
- ``listen`` binds on the caller's thread (so it can return the bound endpoint
  and raise), then hands the socket over; the caller never touches it again.
- Host names in ``dial`` are resolved on a one-thread resolver pool, started on
  first need, so a slow DNS answer never stalls the I/O loop.

Receive filter: ``rx_filter`` (optional, ``(conn_id, frame, now) -> bool``, ``now``
on ``time.monotonic``'s scale) runs on the I/O thread for every whole inbound frame
before it becomes a ``FrameReceived``; True drops the frame there (counted in the
carrier's ``screened_frames``). The node passes the session guard's
``InitiationScreen.drop``, so a flood of handshake initiations (bad mac1, or valid
beyond a per-link rate) costs about one BLAKE2s per frame here and never reaches an
actor or the bus. The filter must be cheap and must not raise.

Inbound connections before their hello: at most ``max_pending`` in all and
``max_pending_per_source`` per source address wait for the link layer's ``confirm``
(``protocols/link/admission.py``); one more pushes out the oldest (counted
``pending_evicted``, reported ``Disconnected``). When ``accept`` fails for want of
descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the listeners leave the
selector for a back-off of 5 ms doubling to 1 s (Go's net/http does the same), so
the loop neither spins on a listener that stays readable nor stops serving the
established links; counted ``accept_paused``.

Logs: every line a remote party can cause goes through one ``LimitedLogger``.

Backpressure: outbound, ``send`` returns False once ``send_buffer`` bytes wait
unwritten; inbound, ``pause_reading`` takes the socket out of the read set, the
kernel buffers fill and TCP flow control stops the peer.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import selectors
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.link.admission import (
    DEFAULT_PER_SOURCE,
    DEFAULT_TOTAL,
    PendingLimit,
    source_key,
)
from sporenet.protocols.link.framing import PREFIX_SIZE, FrameDecoder
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

DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
DEFAULT_DIAL_TIMEOUT = 10.0
DEFAULT_LINGER = 2.0
_RECV_SIZE = 256 * 1024
_IOV_MAX = 512       # buffers per sendmsg (Linux allows 1024)
_WRITE_ROUNDS = 4    # sendmsg calls per turn before yielding to other sockets
_ACCEPTS_PER_TURN = 64
_ACCEPT_BACKOFF_MIN, _ACCEPT_BACKOFF_MAX = 0.005, 1.0
# accept() failures that mean "out of descriptors or memory": retrying at once spins
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PREFIX = struct.Struct("!I")
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


def parse_tcp_endpoint(endpoint: str) -> tuple[str, int]:
    """``"tcp://127.0.0.1:80"`` -> ``("127.0.0.1", 80)``; ``"tcp://[::1]:0"`` -> ``("::1", 0)``."""
    return parse_host_port_endpoint(endpoint, "tcp")


def format_tcp_endpoint(host: str, port: int) -> str:
    return format_host_port_endpoint("tcp", host, port)


class _Conn:
    """One TCP connection. ``lock`` guards the fields shared with senders."""

    __slots__ = ("id", "remote", "outbound", "lock", "out", "queued", "io_pending", "open",
                 "frames_out", "drops", "bytes_in", "bytes_out", "frames_in",
                 "_sock", "_wbuf", "_decoder", "_mask", "_paused", "_state", "_wr_shut",
                 "_wants_write")

    def __init__(self, sock: socket.socket, remote: str, outbound: bool, max_frame: int) -> None:
        self.id = new_conn_id()
        self.remote, self.outbound = remote, outbound
        self.lock = threading.Lock()
        self.out: list[bytes] = []  # queued by send(), not yet taken by the I/O thread
        self.queued = 0             # bytes queued or taken but not yet written
        self.io_pending = False     # the I/O thread will look at ``out`` without a new post
        self.open = False           # between Connected and close()/Disconnected
        self.frames_out = self.drops = 0
        self.bytes_in = self.bytes_out = self.frames_in = 0  # written by the I/O thread
        self._sock: socket.socket | None = sock
        self._wbuf: list[bytes | memoryview] = []
        self._decoder = FrameDecoder(max_frame)
        self._mask = 0
        self._paused = self._wr_shut = self._wants_write = False
        self._state = "connecting" if outbound else "open"  # -> "open" -> "linger"

    def snapshot(self) -> ConnStats:
        return ConnStats(self.remote, self.outbound, self.bytes_in, self.bytes_out,
                         self.frames_in, self.frames_out, self.drops, self.queued, self._paused)


class TcpCarrier:
    """Frames over TCP. Driven by its own I/O thread plus the thread-safe methods of
    ``carrier.Carrier``; events go to ``on_event`` on the I/O thread."""

    scheme = "tcp"

    def __init__(self, on_event: EventCallback, *, max_frame: int = MAX_FRAME_SIZE,
                 send_buffer: int = DEFAULT_SEND_BUFFER, dial_timeout: float = DEFAULT_DIAL_TIMEOUT,
                 linger: float = DEFAULT_LINGER, name: str = "tcp",
                 rx_filter: Callable[[int, bytes, float], bool] | None = None,
                 max_pending: int = DEFAULT_TOTAL,
                 max_pending_per_source: int = DEFAULT_PER_SOURCE) -> None:
        if send_buffer < max_frame + PREFIX_SIZE:
            raise LocalProtocolError("send_buffer must hold at least one largest frame")
        self.max_frame = max_frame
        self._on_event = on_event
        self._rx_filter = rx_filter
        self._send_buffer, self._dial_timeout, self._linger = send_buffer, dial_timeout, linger
        self._log = LimitedLogger(log.bind(carrier=name))
        self._lock = threading.Lock()  # guards _conns, _totals, _stopped
        self._conns: dict[int, _Conn] = {}
        self._totals: Counter[str] = Counter()
        self._stopped = False
        self._cmds: deque[tuple] = deque()
        self._wakeup = Wakeup()
        # I/O thread only:
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wakeup.reader, _R, "wake")
        self._listeners: list[socket.socket] = []
        self._live: set[_Conn] = set()            # every conn that still has a socket
        # connecting and lingering conns: conn -> due, and a heap of (due, seq, conn)
        # whose entries no longer matching _deadlines are skipped when they surface
        self._deadlines: dict[_Conn, float] = {}
        self._deadline_heap: list[tuple[float, int, _Conn]] = []
        self._seq = itertools.count()
        self._pending = PendingLimit(max_pending, max_pending_per_source)
        self._accept_resume: float | None = None  # listeners out of the selector until then
        self._accept_backoff = 0.0
        self._resolving: Counter[str] = Counter()
        self._resolver: ThreadPoolExecutor | None = None
        self._rbuf = bytearray(_RECV_SIZE)
        self._handlers = {"flush": self._do_flush, "close": self._do_close, "dial": self._do_dial,
                          "resolved": self._do_resolved, "adopt": self._do_adopt,
                          "pause": self._do_pause, "confirm": self._do_confirm,
                          "stop": self._do_stop}
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"sporenet-{name}-io", daemon=True)
        self._thread.start()

    # ----- thread-safe API -------------------------------------------------------------

    def listen(self, endpoint: str) -> str:
        family, addr = listen_address(endpoint, "tcp", socket.SOCK_STREAM)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
            bound = format_tcp_endpoint(*sock.getsockname()[:2])
            self._post(("adopt", sock))
        except OSError as exc:
            sock.close()
            raise listen_failed(endpoint, exc) from None
        except TransportClosed:
            sock.close()
            raise
        self._log.info("listening", endpoint=bound)
        return bound

    def dial(self, endpoint: str) -> None:
        self._post(("dial", endpoint))

    def send(self, conn_id: int, frame: bytes) -> bool:
        n = len(frame)
        if not 0 < n <= self.max_frame:
            raise LocalProtocolError(f"frame of {n} bytes outside 1..{self.max_frame}")
        conn = self._conns.get(conn_id)
        if conn is None:
            raise TransportClosed(f"no open connection {conn_id}")
        with conn.lock:
            if not conn.open:
                raise TransportClosed(f"connection {conn_id} is closed")
            if conn.queued + n + PREFIX_SIZE > self._send_buffer:
                conn.drops += 1
                return False
            conn.out += (_PREFIX.pack(n), frame if type(frame) is bytes else bytes(frame))
            conn.queued += n + PREFIX_SIZE
            conn.frames_out += 1
            if conn.io_pending:
                return True
            conn.io_pending = True
        self._post(("flush", conn))
        return True

    def close(self, conn_id: int, reason: str = "closed") -> None:
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        with conn.lock:
            if not conn.open:
                return
            conn.open = False
        try:
            self._post(("close", conn, reason))
        except TransportClosed:
            pass  # shutdown closes it

    def pause_reading(self, conn_id: int) -> None:
        self._post(("pause", conn_id, True))

    def confirm(self, conn_id: int) -> None:
        """The link layer authenticated ``conn_id``: it leaves the pre-hello limit."""
        try:
            self._post(("confirm", conn_id))
        except TransportClosed:
            pass

    def resume_reading(self, conn_id: int) -> None:
        self._post(("pause", conn_id, False))

    def stats(self) -> CarrierStats:
        with self._lock:
            conns = {cid: c.snapshot() for cid, c in self._conns.items()}
            totals = Counter(self._totals)
        totals["pending"] = len(self._pending)  # a gauge; read racily, it is only shown
        for s in conns.values():
            totals.update(bytes_in=s.bytes_in, bytes_out=s.bytes_out, frames_in=s.frames_in,
                          frames_out=s.frames_out, drops=s.drops)
        return CarrierStats(conns=conns, **totals)

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

    def _post(self, cmd: tuple) -> None:
        with self._lock:
            if self._stopped:
                raise TransportClosed("carrier is shut down")
            self._cmds.append(cmd)
        self._wakeup.wake()


    # ----- I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._running:
                due = self._next_due()
                timeout = None if due is None else max(0.0, due - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    self._dispatch(key.data, mask)
                if self._deadline_heap or self._accept_resume is not None:
                    self._expire(time.monotonic())
        finally:
            self._teardown()

    def _dispatch(self, what: object, mask: int) -> None:
        if what == "wake":
            self._wakeup.drain()
            while self._cmds and self._running:
                cmd = self._cmds.popleft()
                self._handlers[cmd[0]](*cmd[1:])
        elif isinstance(what, _Conn):
            if what._sock is None:
                return
            if what._state == "connecting":
                self._connect_done(what)
                return
            if mask & _W:
                self._write(what)
            if mask & _R and what._sock is not None:
                self._read(what)
        else:
            self._accept(what)

    def _emit(self, event: object) -> None:
        try:
            self._on_event(event)
        except Exception:  # the owner's bug must not take every link down with the I/O thread
            self._log.exception("on_event_failed", event_type=type(event).__name__)

    def _next_due(self) -> float | None:
        heap = self._deadline_heap
        while heap and self._deadlines.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        due = heap[0][0] if heap else None
        if self._accept_resume is not None and (due is None or self._accept_resume < due):
            due = self._accept_resume
        return due

    def _set_deadline(self, conn: _Conn, due: float) -> None:
        self._deadlines[conn] = due
        heapq.heappush(self._deadline_heap, (due, next(self._seq), conn))

    def _set_mask(self, conn: _Conn) -> None:
        if conn._sock is None:
            return
        want = _W if conn._wants_write or conn._state == "connecting" else 0
        if conn._state == "linger" or (conn._state == "open" and not conn._paused):
            want |= _R
        if want == conn._mask:
            return
        if not conn._mask:
            self._sel.register(conn._sock, want, conn)
        elif not want:
            self._sel.unregister(conn._sock)
        else:
            self._sel.modify(conn._sock, want, conn)
        conn._mask = want

    def _do_adopt(self, sock: socket.socket) -> None:
        self._listeners.append(sock)
        if self._accept_resume is None:
            self._sel.register(sock, _R, sock)

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    self._pause_accepting(exc)
                    return
                # ECONNABORTED and the like: that one connection is gone, go on
                self._log.info("accept_failed", key=("accept_failed", exc.errno),
                               error=exc.strerror or str(exc))
                continue
            self._accept_backoff = 0.0
            conn = _Conn(sock, format_tcp_endpoint(*addr[:2]), False, self.max_frame)
            self._count("accepted")
            evicted = self._pending.add(conn, source_key(addr[0]))
            for old in evicted:  # before the new one: its descriptor is free again first
                self._evict(old)
            self._adopt_conn(conn)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors (or memory): the pending connection stays in the kernel's
        backlog and its listener stays readable, so stop selecting listeners for a
        back-off instead of waking on them again at once."""
        b = self._accept_backoff
        b = _ACCEPT_BACKOFF_MIN if b <= 0 else min(2 * b, _ACCEPT_BACKOFF_MAX)
        self._accept_backoff = b
        self._accept_resume = time.monotonic() + b
        for lsock in self._listeners:
            try:
                self._sel.unregister(lsock)
            except KeyError:
                pass
        self._count("accept_paused")
        self._log.warning("accept_paused", key=("accept_paused", exc.errno),
                          error=exc.strerror or str(exc), backoff=round(b, 3),
                          hint="raise the node's open-file limit (ulimit -n) if this persists")

    def _resume_accepting(self) -> None:
        self._accept_resume = None
        for lsock in self._listeners:
            self._sel.register(lsock, _R, lsock)

    def _evict(self, conn: _Conn) -> None:
        """Close a connection pushed out of the pre-hello limit: at once, no linger."""
        self._count("pending_evicted")
        self._log.warning("pending_evicted", remote=conn.remote,
                          detail="too many connections waiting for their hello; oldest closed")
        self._drop_socket(conn)
        self._announce_gone(conn, "pre-hello limit: too many connections waiting for their hello",
                            broken=False)

    def _adopt_conn(self, conn: _Conn) -> None:
        sock = conn._sock
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn._state = "open"
        conn.open = True
        self._live.add(conn)
        with self._lock:
            self._conns[conn.id] = conn
        self._log.debug("connected", conn=conn.id, remote=conn.remote, outbound=conn.outbound)
        self._emit(Connected(conn.id, conn.outbound, conn.remote))
        self._set_mask(conn)

    def _do_dial(self, endpoint: str) -> None:
        try:
            host, port = parse_tcp_endpoint(endpoint)
        except ValueError as exc:
            self._dial_failed(endpoint, f"bad endpoint: {exc}")
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_NUMERICHOST)
        except socket.gaierror:  # a host name: resolve off the I/O thread
            if self._resolver is None:
                self._resolver = ThreadPoolExecutor(1, thread_name_prefix="sporenet-tcp-dns")
            self._resolving[endpoint] += 1
            self._resolver.submit(self._resolve, endpoint, host, port)
            return
        self._connect(endpoint, infos)

    def _resolve(self, endpoint: str, host: str, port: int) -> None:  # resolver thread
        try:
            result: object = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result = exc
        try:
            self._post(("resolved", endpoint, result))
        except TransportClosed:
            pass  # the teardown reports this dial as failed

    def _do_resolved(self, endpoint: str, result: object) -> None:
        self._resolving[endpoint] -= 1
        if isinstance(result, OSError):
            self._dial_failed(endpoint, f"cannot resolve: {result}")
        else:
            self._connect(endpoint, result)

    def _connect(self, endpoint: str, infos: list) -> None:
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._dial_failed(endpoint, f"connect failed: {errno.errorcode.get(err, err)}")
            return
        conn = _Conn(sock, endpoint, True, self.max_frame)
        self._live.add(conn)
        self._set_deadline(conn, time.monotonic() + self._dial_timeout)
        self._set_mask(conn)

    def _connect_done(self, conn: _Conn) -> None:
        err = conn._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop_socket(conn)
            self._dial_failed(conn.remote, f"connect failed: {errno.errorcode.get(err, err)}")
            return
        self._deadlines.pop(conn, None)
        self._adopt_conn(conn)
        self._count("dialled")

    def _dial_failed(self, endpoint: str, reason: str) -> None:
        self._count("dial_failures")
        self._log.info("dial_failed", endpoint=endpoint, reason=reason)
        self._emit(DialFailed(endpoint, reason))

    def _do_flush(self, conn: _Conn) -> None:
        if conn._sock is not None:
            self._write(conn)

    def _write(self, conn: _Conn) -> None:
        for _ in range(_WRITE_ROUNDS):
            if not conn._wbuf:
                with conn.lock:
                    if not conn.out:
                        conn.io_pending = False
                        self._drained(conn)
                        return
                    conn._wbuf, conn.out = conn.out, []
            batch = conn._wbuf[:_IOV_MAX]
            try:
                n = conn._sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._finish(conn, f"send failed: {exc.strerror or exc}", broken=True)
                return
            conn.bytes_out += n
            with conn.lock:
                conn.queued -= n
            if not self._consume(conn, n):
                break  # the kernel took less than offered: the socket is full
        conn._wants_write = True
        self._set_mask(conn)

    @staticmethod
    def _consume(conn: _Conn, n: int) -> bool:
        """Drop ``n`` written bytes from the write buffer; True if the whole batch went."""
        buf, i = conn._wbuf, 0
        batch = min(len(buf), _IOV_MAX)
        while i < batch and n >= len(buf[i]):
            n -= len(buf[i])
            i += 1
        if i < batch and n:
            buf[i] = memoryview(buf[i])[n:]
        del buf[:i]
        return i == batch

    def _drained(self, conn: _Conn) -> None:
        conn._wants_write = False
        if conn._state == "linger" and not conn._wr_shut:
            conn._wr_shut = True
            try:
                conn._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop_socket(conn)
                return
        self._set_mask(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            n = conn._sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(conn, f"connection error: {exc.strerror or exc}", broken=True)
            return
        if conn._state == "linger":  # closed by us: discard until the peer's end of stream
            if not n:
                self._drop_socket(conn)
            return
        if not n:
            held = conn._decoder.buffered
            if held:
                self._malformed(conn, f"end of stream inside a frame ({held} bytes held)")
            else:
                self._finish(conn, "closed by peer", broken=False)
            return
        conn.bytes_in += n
        try:
            frames = conn._decoder.feed(memoryview(self._rbuf)[:n])
        except DecodeError as exc:
            self._malformed(conn, f"malformed stream: {exc}")
            return
        conn.frames_in += len(frames)
        screen = self._rx_filter
        screened = 0
        now = time.monotonic() if screen is not None else 0.0
        for frame in frames:
            if screen is not None and screen(conn.id, frame, now):
                screened += 1
                continue
            self._emit(FrameReceived(conn.id, frame))
        if screened:
            self._count("screened_frames", screened)

    def _malformed(self, conn: _Conn, reason: str) -> None:
        self._count("malformed_frames")
        self._log.warning("malformed_stream", conn=conn.id, remote=conn.remote, reason=reason)
        self._finish(conn, reason, broken=True)

    def _do_confirm(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._pending.discard(conn)

    def _do_pause(self, conn_id: int, paused: bool) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn._paused = paused
            self._set_mask(conn)

    def _do_close(self, conn: _Conn, reason: str) -> None:
        if self._conns.get(conn.id) is not conn:
            return  # already reported gone (the peer closed first)
        self._announce_gone(conn, reason, broken=False)
        if self._linger <= 0:
            self._drop_socket(conn)
            return
        conn._state = "linger"
        self._set_deadline(conn, time.monotonic() + self._linger)
        self._write(conn)

    def _finish(self, conn: _Conn, reason: str, broken: bool) -> None:
        lingering = conn._state == "linger"
        self._drop_socket(conn)
        if not lingering:
            self._announce_gone(conn, reason, broken)

    def _announce_gone(self, conn: _Conn, reason: str, broken: bool) -> None:
        with conn.lock:
            conn.open = False
        with self._lock:
            self._conns.pop(conn.id, None)
            s = conn.snapshot()
            self._totals.update(bytes_in=s.bytes_in, bytes_out=s.bytes_out, frames_in=s.frames_in,
                                frames_out=s.frames_out, drops=s.drops, disconnects=1)
        self._log.debug("disconnected", conn=conn.id, reason=reason, broken=broken)
        self._emit(Disconnected(conn.id, reason, broken))

    def _drop_socket(self, conn: _Conn) -> None:
        if conn._sock is None:
            return
        if conn._mask:
            self._sel.unregister(conn._sock)
            conn._mask = 0
        conn._sock.close()
        conn._sock = None
        self._deadlines.pop(conn, None)
        self._pending.discard(conn)
        self._live.discard(conn)

    def _expire(self, now: float) -> None:
        if self._accept_resume is not None and self._accept_resume <= now:
            self._resume_accepting()
        heap = self._deadline_heap
        while heap and heap[0][0] <= now:
            due, _, conn = heapq.heappop(heap)
            if self._deadlines.get(conn) != due:
                continue  # stale: the conn left, or got a later deadline
            connecting = conn._state == "connecting"
            self._drop_socket(conn)
            if connecting:
                self._dial_failed(conn.remote, "connect timed out")

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._totals[key] += n

    def _do_stop(self) -> None:
        self._running = False

    def _teardown(self) -> None:
        with self._lock:
            self._stopped = True  # also when _run died of a bug: callers get TransportClosed
        while self._cmds:  # posted before "stop": settle them without doing I/O
            cmd = self._cmds.popleft()
            if cmd[0] in ("dial", "resolved"):
                self._resolving[cmd[1]] -= cmd[0] == "resolved"
                self._dial_failed(cmd[1], "carrier shut down")
            elif cmd[0] == "adopt":
                cmd[1].close()
        for endpoint, count in self._resolving.items():
            for _ in range(count):
                self._dial_failed(endpoint, "carrier shut down")
        for lsock in self._listeners:
            lsock.close()
        for conn in list(self._live):
            if conn._state == "connecting":
                self._drop_socket(conn)
                self._dial_failed(conn.remote, "carrier shut down")
            else:
                self._finish(conn, "shutdown", broken=False)
        if self._resolver is not None:
            self._resolver.shutdown(wait=False, cancel_futures=True)
        self._sel.close()
        self._wakeup.close()
