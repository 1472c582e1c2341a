"""In-process carrier: ``mem://NAME`` endpoints on a shared ``MemoryNetwork``.

For tests and single-process meshes. It keeps the carrier contract of
``carrier.py`` exactly as ``TcpCarrier`` does: events come from the carrier's
own delivery thread, ``send`` is bounded (the bytes not yet delivered to the
peer's owner count against ``send_buffer``), frames are 1..``max_frame`` bytes,
``pause_reading`` holds a connection's frames back, and a close by one side
reaches the other after the frames sent before it.

Locking: one lock per ``MemoryNetwork`` guards every carrier and half-connection
on it; each carrier's delivery thread waits on a condition of that lock. Events
are taken under the lock and delivered outside it, so callbacks may call back in.
Delivery order: control events (``Connected``, ``DialFailed``, our own
``Disconnected``) first, then connections with frames, round-robin.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque

import structlog

from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.wire import MAX_FRAME_SIZE

from .carrier import (
    CarrierEvent,
    CarrierStats,
    Connected,
    ConnStats,
    DialFailed,
    Disconnected,
    EventCallback,
    FrameReceived,
    new_conn_id,
    split_endpoint,
)
from .errors import TransportClosed, TransportError
from .log_limit import LimitedLogger

log = structlog.get_logger(__name__)

DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
_STAT_KEYS = ("bytes_in", "bytes_out", "frames_in", "frames_out", "drops")


class MemoryNetwork:
    """The registry of ``mem://`` listeners that a group of carriers shares."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.listeners: dict[str, MemoryCarrier] = {}
        self.ids = itertools.count(1)


def parse_mem_endpoint(endpoint: str) -> str:
    """``"mem://a"`` -> ``"a"``; ``"mem://"`` -> ``""`` (listen picks a name)."""
    scheme, name = split_endpoint(endpoint)
    if scheme != "mem" or "/" in name:
        raise ValueError(f"endpoint {endpoint!r} is not mem://NAME")
    return name


class _Half:
    """One side of an in-memory connection; ``inbox`` holds frames for our owner."""

    __slots__ = ("id", "carrier", "remote", "outbound", "peer", "inbox", "inbox_bytes", "open",
                 "paused", "ready", "eof", *_STAT_KEYS)

    def __init__(self, conn_id: int, carrier: MemoryCarrier, remote: str, outbound: bool) -> None:
        self.id, self.carrier, self.remote, self.outbound = conn_id, carrier, remote, outbound
        self.peer: _Half | None = None
        self.inbox: deque[bytes] = deque()
        self.inbox_bytes = 0
        self.open = True
        self.paused = self.ready = False
        self.eof: tuple[str, bool] | None = None  # (reason, broken) once the peer closed
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = self.drops = 0

    def snapshot(self) -> ConnStats:
        return ConnStats(self.remote, self.outbound, self.bytes_in, self.bytes_out,
                         self.frames_in, self.frames_out, self.drops,
                         self.peer.inbox_bytes if self.peer else 0, self.paused)


class MemoryCarrier:
    """Frames between carriers of one ``MemoryNetwork``. Driven by the thread-safe
    methods of ``carrier.Carrier``; events go to ``on_event`` on the delivery thread."""

    scheme = "mem"

    def __init__(self, on_event: EventCallback, network: MemoryNetwork, *,
                 max_frame: int = MAX_FRAME_SIZE, send_buffer: int = DEFAULT_SEND_BUFFER,
                 name: str = "mem") -> None:
        if send_buffer < max_frame:
            raise LocalProtocolError("send_buffer must hold at least one largest frame")
        self.max_frame = max_frame
        self._on_event = on_event
        self._net = network
        self._send_buffer = send_buffer
        self._label = f"{name}{next(network.ids)}"
        self._log = LimitedLogger(log.bind(carrier=self._label))
        self._cond = threading.Condition(network.lock)
        # guarded by network.lock:
        self._conns: dict[int, _Half] = {}
        self._control: deque[CarrierEvent] = deque()
        self._ready: deque[_Half] = deque()
        self._listening: set[str] = set()
        self._totals: dict[str, int] = dict.fromkeys(
            (*_STAT_KEYS, "accepted", "dialled", "dial_failures", "disconnects"), 0)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"sporenet-{self._label}-deliver",
                                        daemon=True)
        self._thread.start()

    # ----- thread-safe API -------------------------------------------------------------

    def listen(self, endpoint: str) -> str:
        try:
            name = parse_mem_endpoint(endpoint)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        with self._net.lock:
            if self._stopped:
                raise TransportClosed("carrier is shut down")
            bound = f"mem://{name or f'auto-{next(self._net.ids)}'}"
            if bound in self._net.listeners:
                raise TransportError(f"cannot listen on {bound}: address in use")
            self._net.listeners[bound] = self
            self._listening.add(bound)
        self._log.info("listening", endpoint=bound)
        return bound

    def dial(self, endpoint: str) -> None:
        with self._net.lock:
            if self._stopped:
                raise TransportClosed("carrier is shut down")
            try:
                parse_mem_endpoint(endpoint)
                target = self._net.listeners.get(endpoint)
                reason = "" if target is not None else f"nothing listens on {endpoint}"
            except ValueError as exc:
                target, reason = None, f"bad endpoint: {exc}"
            if target is None:
                self._totals["dial_failures"] += 1
                self._push(DialFailed(endpoint, reason))
                return
            ours = _Half(new_conn_id(), self, endpoint, True)
            theirs = _Half(new_conn_id(), target, f"mem://~{self._label}.{ours.id}", False)
            ours.peer, theirs.peer = theirs, ours
            target._conns[theirs.id] = theirs
            target._totals["accepted"] += 1
            target._push(Connected(theirs.id, False, theirs.remote))
            self._conns[ours.id] = ours
            self._totals["dialled"] += 1
            self._push(Connected(ours.id, True, endpoint))

    def send(self, conn_id: int, frame: bytes) -> bool:
        n = len(frame)
        if not 0 < n <= self.max_frame:
            raise LocalProtocolError(f"frame of {n} bytes outside 1..{self.max_frame}")
        frame = frame if type(frame) is bytes else bytes(frame)
        with self._net.lock:
            half = self._conns.get(conn_id)
            if half is None or not half.open:
                raise TransportClosed(f"no open connection {conn_id}")
            peer = half.peer
            if peer.inbox_bytes + n > self._send_buffer:
                half.drops += 1
                return False
            half.frames_out += 1
            half.bytes_out += n
            if peer.open:  # else the peer closed: the bytes go nowhere, as on a socket
                peer.inbox.append(frame)
                peer.inbox_bytes += n
                peer.carrier._schedule(peer)
            return True

    def close(self, conn_id: int, reason: str = "closed") -> None:
        with self._net.lock:
            half = self._conns.get(conn_id)
            if half is not None:
                self._close_half(half, reason)

    def pause_reading(self, conn_id: int) -> None:
        with self._net.lock:
            half = self._conns.get(conn_id)
            if half is not None:
                half.paused = True

    def resume_reading(self, conn_id: int) -> None:
        with self._net.lock:
            half = self._conns.get(conn_id)
            if half is not None:
                half.paused = False
                self._schedule(half)

    def confirm(self, conn_id: int) -> None:
        """Nothing to do: in-process peers are the test's own, no pre-hello limit."""

    def stats(self) -> CarrierStats:
        with self._net.lock:
            conns = {cid: h.snapshot() for cid, h in self._conns.items()}
            totals = dict(self._totals)
        for s in conns.values():
            for key in _STAT_KEYS:
                totals[key] += getattr(s, key)
        return CarrierStats(conns=conns, **totals)

    def shutdown(self) -> None:
        with self._net.lock:
            if not self._stopped:
                self._stopped = True
                for endpoint in self._listening:
                    del self._net.listeners[endpoint]
                self._listening.clear()
                for half in list(self._conns.values()):
                    self._close_half(half, "shutdown")
                self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ----- under network.lock ----------------------------------------------------------

    def _push(self, event: CarrierEvent) -> None:
        self._control.append(event)
        self._cond.notify()

    def _schedule(self, half: _Half) -> None:
        if not half.ready and not half.paused and (half.inbox or half.eof):
            half.ready = True
            self._ready.append(half)
            self._cond.notify()

    def _close_half(self, half: _Half, reason: str) -> None:
        self._forget(half)
        half.inbox.clear()
        half.inbox_bytes = 0
        self._push(Disconnected(half.id, reason, False))
        peer = half.peer
        if peer.open and peer.eof is None:
            peer.eof = ("closed by peer", False)
            peer.carrier._schedule(peer)

    def _forget(self, half: _Half) -> None:
        half.open = False
        del self._conns[half.id]
        for key in _STAT_KEYS:
            self._totals[key] += getattr(half, key)
        self._totals["disconnects"] += 1

    def _next_event(self) -> CarrierEvent | None:
        if self._control:
            return self._control.popleft()
        while self._ready:
            half = self._ready.popleft()
            half.ready = False
            if not half.open or half.paused:
                continue
            if half.inbox:
                frame = half.inbox.popleft()
                half.inbox_bytes -= len(frame)
                half.frames_in += 1
                half.bytes_in += len(frame)
                self._schedule(half)  # round-robin: to the back of the line
                return FrameReceived(half.id, frame)
            if half.eof is not None:
                self._forget(half)
                return Disconnected(half.id, *half.eof)
        return None

    # ----- delivery thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                event = self._next_event()
                while event is None:
                    if self._stopped:
                        return
                    self._cond.wait()
                    event = self._next_event()
            try:
                self._on_event(event)
            except Exception:  # the owner's bug must not stop delivery for every link
                self._log.exception("on_event_failed", event_type=type(event).__name__)
