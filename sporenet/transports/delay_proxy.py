"""A userspace TCP delay proxy, for demos and tests on kernels without netem.

``DelayProxy`` accepts TCP connections, connects each to one target, and
forwards bytes both ways; every chunk is released ``delay_ms`` (one-way, plus
optional jitter) after it was read, so a link through it has an RTT of about
``2 * delay_ms`` more than the direct one.

Invariants:
- One I/O thread owns every socket (listener, connection pairs, the wake-up
  socketpair): a ``selectors`` loop plus a heap of release times. Other threads
  only post commands (``set_delay`` just stores a number).
- Per direction, bytes are delivered in the order they were read: a chunk's
  release time is never earlier than the previous chunk's, so jitter (or a
  lower ``set_delay``) delays but never reorders.
- A side that closes (EOF) closes the other only after the bytes read before
  the EOF were delivered: EOF travels through the delay like data (half-close),
  and a pair is closed once both directions are done. A reset does the same,
  then resets the other side.
- ``cut()`` resets every connection and resets new ones at once until
  ``restore()``. ``cut(silent=True)`` is a blackhole: connections stay open but
  every byte (in flight or new) is discarded, and EOFs are held back until
  ``restore()``. The proxy has already acknowledged the discarded bytes, so
  unlike a real outage TCP will not retransmit them: a stream is corrupt after a
  silent cut, which is what a "link went silent" demo wants.
- Buffering is bounded: a direction holding ``max_buffer`` bytes stops reading
  its source, and TCP flow control slows the sender.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import random
import selectors
import socket
import struct
import threading
import time
from collections import deque

import structlog

from sporenet.protocols.errors import LocalProtocolError

from .errors import TransportClosed, TransportError
from .tcp import format_tcp_endpoint, parse_tcp_endpoint
from .log_limit import LimitedLogger

log = structlog.get_logger(__name__)

DEFAULT_MAX_BUFFER = 1024 * 1024
_RECV_SIZE = 64 * 1024
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE
_LINGER_RST = struct.pack("ii", 1, 0)
_seq = itertools.count()


def _reset_close(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


class _Pipe:
    """One direction of a pair. I/O thread only."""

    __slots__ = ("src", "dst", "out", "queued", "last_release", "eof", "reset", "done")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.out = bytearray()   # released, not yet written to dst
        self.queued = 0          # bytes read but not yet written (in the heap or in out)
        self.last_release = 0.0
        self.eof = 0             # 0 open, 1 read EOF, 2 EOF scheduled, 3 EOF released
        self.reset = False       # the source was reset rather than closed
        self.done = False        # EOF delivered (dst shut down for writing)


class _Pair:
    """A client connection and its upstream connection. I/O thread only."""

    __slots__ = ("client", "upstream", "up", "down", "connecting", "closed", "masks")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.up = _Pipe(client, upstream)     # client -> target
        self.down = _Pipe(upstream, client)   # target -> client
        self.connecting = True
        self.closed = False
        self.masks: dict[socket.socket, int] = {}


class DelayProxy:
    """Forward TCP connections from ``listen`` to ``target`` with a one-way delay.

    Each chunk read waits ``delay_ms`` plus a uniform draw from ``+-jitter_ms`` (from
    ``random.Random(rng_seed)``, floored at 0), raised if needed to the previous
    chunk's release time so a direction never reorders. ``connections`` counts the
    live connection pairs.

    Driven by ``start()`` (binds, returns the bound ``tcp://`` endpoint, starts the
    I/O thread), the thread-safe ``set_delay``/``cut``/``restore``, and ``stop()``
    (closes every fd and joins the thread; idempotent).
    """

    def __init__(self, listen: str = "tcp://127.0.0.1:0", target: str = "", delay_ms: float = 0.0,
                 jitter_ms: float = 0.0, rng_seed: int | None = None, *,
                 max_buffer: int = DEFAULT_MAX_BUFFER, name: str = "delay-proxy") -> None:
        try:
            self._listen_addr = parse_tcp_endpoint(listen)
            self._target_addr = parse_tcp_endpoint(target)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        if delay_ms < 0 or jitter_ms < 0:
            raise LocalProtocolError("delay_ms and jitter_ms must be >= 0")
        self.target = target
        self.endpoint: str | None = None
        self._delay = delay_ms / 1000.0
        self._jitter = jitter_ms / 1000.0
        self._rng = random.Random(rng_seed)
        self._max_buffer = max_buffer
        self._name = name
        self._log = LimitedLogger(log.bind(proxy=name))
        self._lock = threading.Lock()  # guards _cmds posting, _state
        self._state = "new"            # new -> running -> stopped
        self._cmds: deque[tuple] = deque()
        self._thread: threading.Thread | None = None
        self.connections = 0           # live pairs, written by the I/O thread only
        # I/O thread only (after start):
        self._sel: selectors.BaseSelector | None = None
        self._lsock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._pairs: set[_Pair] = set()
        self._heap: list[tuple[float, int, int, _Pipe, _Pair, bytes | None]] = []
        self._epoch = 0                # bumped by a silent cut: older heap entries are void
        self._cut: str | None = None   # None, "reset" or "silent"
        self._target_sockaddr: tuple = ()
        self._target_family = socket.AF_INET

    # ----- thread-safe API ---------------------------------------------------------------

    @property
    def delay_ms(self) -> float:
        return self._delay * 1000.0

    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000.0

    def start(self) -> str:
        """Bind the listener, start the I/O thread, return the bound endpoint."""
        with self._lock:
            if self._state != "new":
                raise LocalProtocolError(f"proxy is {self._state}; start() runs once")
            self._state = "starting"
        try:
            self._open_sockets()
        except BaseException:
            self._close_fds()
            with self._lock:
                self._state = "stopped"
            raise
        self._thread = threading.Thread(target=self._run, name=f"sporenet-{self._name}-io",
                                        daemon=True)
        with self._lock:
            self._state = "running"
        self._thread.start()
        self._log.info("delay_proxy_started", listen=self.endpoint, target=self.target,
                       delay_ms=self.delay_ms, jitter_ms=self.jitter_ms)
        return self.endpoint

    def set_delay(self, delay_ms: float, jitter_ms: float | None = None) -> None:
        """Change the one-way delay (and optionally the jitter) for chunks read from now on."""
        if delay_ms < 0 or (jitter_ms is not None and jitter_ms < 0):
            raise LocalProtocolError("delay_ms and jitter_ms must be >= 0")
        self._delay = delay_ms / 1000.0
        if jitter_ms is not None:
            self._jitter = jitter_ms / 1000.0

    def cut(self, silent: bool = False) -> None:
        """Drop every connection (RST) and refuse new ones until ``restore()``;
        ``silent=True`` keeps connections open and discards every byte instead.
        Returns once the I/O thread has applied it."""
        self._call("cut", "silent" if silent else "reset")

    def restore(self) -> None:
        """Undo ``cut()``: new bytes and connections flow again. Returns once applied."""
        self._call("restore")

    def stop(self) -> None:
        """Close every socket and join the I/O thread. Safe to call more than once."""
        with self._lock:
            state, self._state = self._state, "stopped"
            if state == "running":
                self._cmds.append((None, "stop"))
        if state == "running":  # a proxy never started has nothing open
            self._wake()
            if threading.current_thread() is not self._thread:
                self._thread.join()

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, *cmd: object) -> None:
        """Run ``cmd`` on the I/O thread and wait until it ran (or the proxy stopped)."""
        done = threading.Event()
        with self._lock:
            if self._state != "running":
                raise TransportClosed(f"proxy is {self._state}")
            self._cmds.append((done, *cmd))
        self._wake()
        while not done.wait(0.1):
            if not self._thread.is_alive():
                raise TransportClosed("proxy stopped")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # buffer full (a wake-up is pending anyway) or torn down

    # ----- setup and teardown --------------------------------------------------------------

    def _open_sockets(self) -> None:
        host, port = self._listen_addr
        try:
            family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
            tfamily, _, _, _, taddr = socket.getaddrinfo(*self._target_addr,
                                                         type=socket.SOCK_STREAM)[0]
        except OSError as exc:
            raise TransportError(f"cannot resolve: {exc}") from None
        self._target_family, self._target_sockaddr = tfamily, taddr
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _R, "wake")
        self._lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._lsock.bind(addr)
            self._lsock.listen(128)
        except OSError as exc:
            raise TransportError(f"cannot listen on {format_tcp_endpoint(host, port)}: "
                                 f"{exc.strerror or exc}") from None
        self._lsock.setblocking(False)
        self._sel.register(self._lsock, _R, "listen")
        self.endpoint = format_tcp_endpoint(*self._lsock.getsockname()[:2])

    def _close_fds(self) -> None:
        for pair in list(self._pairs):
            self._close_pair(pair, rst=False)
        for sock in (self._lsock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._sel is not None:
            self._sel.close()

    # ----- I/O thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                timeout = None
                if self._heap:
                    timeout = max(0.0, self._heap[0][0] - time.monotonic())
                events = self._sel.select(timeout)
                # Commands first: a restore() posted before a client connects applies to it.
                if any(key.data == "wake" for key, _ in events) and self._do_commands():
                    return
                for key, mask in events:
                    if key.data == "wake":
                        continue
                    if key.data == "listen":
                        self._accept()
                    else:
                        self._dispatch(key.data, key.fileobj, mask)
                self._release(time.monotonic())
        finally:
            self._close_fds()
            self._log.info("delay_proxy_stopped", listen=self.endpoint)

    def _do_commands(self) -> bool:
        """Run posted commands; True once told to stop."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._cmds:
            done, what, *args = self._cmds.popleft()
            if what == "stop":
                return True
            if what == "cut":
                self._do_cut(*args)
            elif what == "restore":
                self._do_restore()
            done.set()
        return False

    def _do_cut(self, mode: str) -> None:
        self._cut = mode
        if mode == "reset":
            for pair in list(self._pairs):
                self._close_pair(pair, rst=True)
            return
        self._epoch += 1  # every chunk and EOF in flight is lost
        for pair in self._pairs:
            for pipe in (pair.up, pair.down):
                pipe.out.clear()
                pipe.queued = 0
                pipe.last_release = 0.0
                if pipe.eof == 2:
                    pipe.eof = 1
            self._update(pair)

    def _do_restore(self) -> None:
        was, self._cut = self._cut, None
        if was != "silent":
            return
        now = time.monotonic()
        for pair in list(self._pairs):
            for pipe in (pair.up, pair.down):
                if pipe.eof == 1:  # held back by the blackhole: the FIN gets through now
                    self._schedule(pipe, pair, None, now)
            self._update(pair)

    def _accept(self) -> None:
        for _ in range(64):
            if self._cmds:
                return  # a cut() or restore() posted meanwhile applies to the rest: run it first
            try:
                client, _addr = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log.warning("accept_failed", error=str(exc))
                return
            if self._cut == "reset":
                _reset_close(client)
                continue
            self._open_pair(client)

    def _open_pair(self, client: socket.socket) -> None:
        client.setblocking(False)
        upstream = socket.socket(self._target_family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        self._pairs.add(pair)
        self.connections = len(self._pairs)
        err = upstream.connect_ex(self._target_sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._log.info("target_unreachable", target=self.target, errno=err)
            self._close_pair(pair, rst=True)
            return
        self._update(pair)

    def _dispatch(self, pair: _Pair, sock: socket.socket, mask: int) -> None:
        if pair.closed:
            return
        if pair.connecting:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._log.info("target_unreachable", target=self.target, errno=err)
                self._close_pair(pair, rst=True)
                return
            pair.connecting = False
            self._update(pair)
            return
        if mask & _W:
            self._write(pair, pair.up if sock is pair.upstream else pair.down)
        if mask & _R and not pair.closed:
            self._read(pair, pair.up if sock is pair.client else pair.down)
        if not pair.closed:
            self._update(pair)

    def _read(self, pair: _Pair, pipe: _Pipe) -> None:
        now = time.monotonic()
        try:
            data = pipe.src.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, pipe.reset = b"", True
        if data and self._cut != "silent":
            self._schedule(pipe, pair, data, now)
        elif not data:
            pipe.eof = 1
            if self._cut != "silent":
                self._schedule(pipe, pair, None, now)

    def _schedule(self, pipe: _Pipe, pair: _Pair, chunk: bytes | None, now: float) -> None:
        delay = self._delay
        if self._jitter:
            delay = max(0.0, delay + self._rng.uniform(-self._jitter, self._jitter))
        release = max(now + delay, pipe.last_release)  # never before the previous chunk
        pipe.last_release = release
        if chunk is None:
            pipe.eof = 2
        else:
            pipe.queued += len(chunk)
        heapq.heappush(self._heap, (release, next(_seq), self._epoch, pipe, pair, chunk))

    def _release(self, now: float) -> None:
        touched: set[_Pair] = set()
        while self._heap and self._heap[0][0] <= now:
            _, _, epoch, pipe, pair, chunk = heapq.heappop(self._heap)
            if pair.closed or epoch != self._epoch:
                continue
            if chunk is None:
                pipe.eof = 3
            else:
                pipe.out += chunk
            touched.add(pair)
        for pair in touched:
            for pipe in (pair.up, pair.down):
                if not pair.closed and not pipe.done and not pair.connecting:
                    self._write(pair, pipe)
            if not pair.closed:
                self._update(pair)

    def _write(self, pair: _Pair, pipe: _Pipe) -> None:
        if pipe.out:
            try:
                n = pipe.dst.send(pipe.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close_pair(pair, rst=True)  # the other side is gone: nothing to deliver to
                return
            del pipe.out[:n]
            pipe.queued -= n
        if pipe.out or pipe.eof != 3 or pipe.done:
            return
        pipe.done = True  # every byte before the EOF is delivered: pass the EOF on
        if pipe.reset:
            self._close_pair(pair, rst=True)
            return
        try:
            pipe.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_pair(pair, rst=True)
            return
        if pair.up.done and pair.down.done:
            self._close_pair(pair, rst=False)

    def _update(self, pair: _Pair) -> None:
        """Register each socket of ``pair`` for what it is waiting on now."""
        if pair.closed:
            return
        if pair.connecting:
            wanted = {pair.client: 0, pair.upstream: _W}
        else:
            wanted = {}
            for sock, src_of, dst_of in ((pair.client, pair.up, pair.down),
                                         (pair.upstream, pair.down, pair.up)):
                mask = 0
                if src_of.eof == 0 and src_of.queued < self._max_buffer:
                    mask |= _R
                if dst_of.out:
                    mask |= _W
                wanted[sock] = mask
        for sock, mask in wanted.items():
            old = pair.masks.get(sock, 0)
            if mask == old:
                continue
            if not old:
                self._sel.register(sock, mask, pair)
            elif not mask:
                self._sel.unregister(sock)
            else:
                self._sel.modify(sock, mask, pair)
            pair.masks[sock] = mask

    def _close_pair(self, pair: _Pair, *, rst: bool) -> None:
        if pair.closed:
            return
        pair.closed = True
        for sock in (pair.client, pair.upstream):
            if pair.masks.get(sock):
                self._sel.unregister(sock)
            if rst:
                _reset_close(sock)
            else:
                sock.close()
        pair.masks.clear()
        self._pairs.discard(pair)
        self.connections = len(self._pairs)
