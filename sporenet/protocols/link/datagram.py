"""Connections over datagrams, sans-IO: what the UDP carrier runs (aioquic's shape).

``DatagramEndpoint`` is every connection of one UDP socket. The transport feeds it
what arrives (``receive(addr, data, now)``), asks it what to send
(``transmit(now)`` -> ``[(addr, datagram)]``), wakes it at ``next_deadline()``
(``handle_timer(now)``) and drains ``events()``. No sockets, threads or clocks here.

Each connection carries two kinds of frame:
- **stream frames** (``send``): reliable and in order, the carrier contract that the
  link layer needs for hellos, route updates, handshakes and messages. Frames are
  length-prefixed into a byte stream, cut into numbered segments of ``mss`` bytes
  (small frames share a segment, large ones span many) and retransmitted until
  acknowledged: cumulative ack plus a 64-segment selective-ack bitmap, RTO from
  smoothed RTT (RFC 6298, Karn's rule), fast retransmit after three later segments
  are acknowledged, a receive window in segments so a paused reader stops the sender.
- **datagrams** (``send_datagram``): one frame per UDP datagram, never retransmitted,
  possibly reordered. The prober uses them: a lost datagram stays lost, so the prober
  sees real loss.
- **chunked frames** (``send_chunked``): the data path's superpackets (up to 64
  chunks, ~90 KB), cut into equal chunks that leave in one ``UDP_SEGMENT`` send and
  are delivered as soon as all of a frame's chunks are in, in whatever order frames
  complete. No window, no ordering, no waiting behind other frames: the inner TCP does
  congestion control, as over WireGuard. What it cannot do cheaply is lose one chunk
  of 45 (at 2 % loss three superpackets in five would miss one), so the receiver
  reports the holes (NACK) as soon as a later frame or a frame's last chunk shows
  them, and the sender, which holds what it sent for a moment (``HOLD_BYTES``,
  ``HOLD_TIME``), sends just those chunks again, at most ``MAX_NACKS`` times.

Why not TCP-in-UDP for everything: over a TCP carrier one lost segment stalls every
flow behind it (bench/README.md, 2 % loss). Why not QUIC (aioquic): it would encrypt
and pace every datagram in Python a second time; the link hello authenticates the
peer and the session layer encrypts end to end already.

Packets (big-endian; ``token`` is the receiver's connection token, like WireGuard's
receiver index, and the packet must come from the connection's address):
  CONNECT  1 | dialer token u32 | version u8 | zero padding to CONNECT_SIZE
  ACCEPT   2 | dialer token u32 | listener token u32
  DATA     3 | token u32 | seq u32 | ack u32 | window u16 | tsval u32 | tsecr u32 | stream bytes
  ACK      4 | token u32 | ack u32 | window u16 | flags u8 | sack u64 | tsecr u32
``tsval`` is the sender's clock in µs (mod 2**32), ``tsecr`` the last one it received,
echoed once (RFC 7323's timestamps): an RTT sample needs no guess about which copy of
which segment an ack answers, which a lossy link makes ambiguous.
  DGRAM    5 | token u32 | frame
  RESET    6 | token u32 | graceful u8 | reason (utf-8)
  CHUNK    7 | token u32 | frame id u32 | index u16 | count u16 | chunk
  NACK     8 | token u32 | frame id u32 | missing u64 (bit i: chunk i; all ones: the
             whole frame, whose chunks were never seen)
Frame ids count up from 0 per connection and wrap; the receiver unwraps them against
the highest it saw, so a gap in the ids shows frames lost whole.
CONNECT is padded to at least the size of its answer, so a spoofed source gains
nothing by reflection. An orderly close is a FIN record in the stream (length 0,
then the reason), so it arrives after every frame sent before it.
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from sporenet.protocols.errors import LocalProtocolError

from .admission import DEFAULT_PER_SOURCE, DEFAULT_TOTAL, PendingLimit

VERSION = 1
CONNECT, ACCEPT, DATA, ACK, DGRAM, RESET, CHUNK, NACK = 1, 2, 3, 4, 5, 6, 7, 8
CONNECT_SIZE = 32
_CONNECT = struct.Struct("!BIB")
_ACCEPT = struct.Struct("!BII")
_DATA = struct.Struct("!BIIIHII")
_ACK = struct.Struct("!BIIHBQI")
_TOKEN = struct.Struct("!BI")
_RESET = struct.Struct("!BIB")
_LEN = struct.Struct("!I")
_REASON = struct.Struct("!H")
_CHUNK = struct.Struct("!BIIHH")
_NACK = struct.Struct("!BIIQ")
DATA_HEADER, DGRAM_HEADER, CHUNK_HEADER = _DATA.size, _TOKEN.size, _CHUNK.size
ACK_PING = 0x01  # the sender wants an ACK back (keepalive, zero-window probe)
RESET_GRACEFUL = 0x01  # an orderly end (shutdown), not a fault
RESET_YOURS = 0x02     # the token is the one the receiver gave us, not ours: we lost it
_STRANGER = "it does not know this connection (restarted?)"
MAX_TOMBSTONES = 4_096
ANSWER_RATE, ANSWER_BURST = 200.0, 200.0  # answers to unproven sources, per second

DEFAULT_MSS = 1_400              # stream bytes per DATA: an IPv6 + UDP packet fits 1,500
DEFAULT_WINDOW = 512             # segments we buffer beyond what was delivered
DEFAULT_SEND_BUFFER = 4 * 1024 * 1024
MAX_IN_FLIGHT = 256              # segments sent and not yet acknowledged
RTO_MIN, RTO_MAX, RTO_INITIAL = 0.02, 2.0, 0.25
DIAL_TIMEOUT = 5.0
DEAD_AFTER = 15.0                # nothing heard (or nothing acknowledged) for this long
KEEPALIVE = 5.0
LINGER = 2.0                     # a close waits this long for its queue to be acknowledged
TIME_WAIT = 5.0                  # a closed token still answers retransmissions this long
HELLO_TIMEOUT = 5.0              # an inbound connection the link layer never confirmed
# chunked frames
MAX_CHUNKS = 64                  # the kernel's UDP_MAX_SEGMENTS: one frame, one GSO send
HOLD_BYTES = 8 * 1024 * 1024     # what a sender keeps to repair, per connection...
HOLD_TIME = 1.0                  # ... and for how long (s): past that a repair is useless
MAX_PARTIAL = 256                # frames with chunks missing, per connection...
PARTIAL_BYTES = 4 * 1024 * 1024  # ... and the bytes of their chunks (the oldest goes)
MAX_NACKS = 3                    # reports of one frame's holes before it counts as lost
NACK_DELAY_MIN = 0.002           # s: the first report of a tail loss, at the soonest
ID_WINDOW = 1_024                # frame ids this far below the highest are too old
MAX_GHOSTS = 8                   # frames lost whole that one gap in the ids reports
_ALL = (1 << 64) - 1
_INDEXES = bytes(range(MAX_CHUNKS))


def _unwrap(fid: int, top: int) -> int:
    """A 32-bit frame id as the full id nearest ``top`` (the highest seen; -1: none)."""
    return fid if top < 0 else top + ((fid - top + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _reorder_wait(conn: _Conn) -> float:
    """How long chunks that seem lost may still be on their way: a quarter round trip."""
    return (conn.srtt or 0.004) / 4


def _clock(now: float) -> int:
    return int(now * 1e6) & 0xFFFFFFFF


# ----- events -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Opened:
    conn_id: int
    outbound: bool
    addr: Hashable


@dataclass(frozen=True, slots=True)
class Received:
    conn_id: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    conn_id: int
    reason: str
    broken: bool


@dataclass(frozen=True, slots=True)
class OpenFailed:
    conn_id: int
    reason: str


DatagramEvent = Opened | Received | Closed | OpenFailed


class _Segment:
    __slots__ = ("data", "first_sent", "sends", "sent_at", "seq")

    def __init__(self, seq: int, data: bytes, now: float) -> None:
        self.seq, self.data = seq, data
        self.sent_at = self.first_sent = now
        self.sends = 1


class _Conn:
    """One connection's both directions. Only the endpoint touches it."""

    def __init__(self, conn_id: int, addr: Hashable, token: int, outbound: bool,
                 now: float, window: int) -> None:
        self.id, self.addr, self.token, self.outbound = conn_id, addr, token, outbound
        self.peer_token = 0
        self.state = "connecting" if outbound else "open"  # -> open -> closing -> gone
        self.created = now
        self.close_reason = ""
        self.closing_since = 0.0
        self.wake: float | None = None  # the due time of this conn's live timer
        self.probe_due = 0.0
        # sending
        self.stream = bytearray()       # framed bytes not yet cut into segments
        self.queued = 0                 # bytes in ``stream`` and in flight: the send_buffer
        self.next_seq = 0
        self.flight: dict[int, _Segment] = {}  # insertion order is seq order
        self.peer_window = window
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self.rto_due: float | None = None
        self.last_sent = now
        self.fin_queued = False
        self.connect_sends = 0
        self.connect_due = now
        # receiving
        self.rcv_next = 0
        self.ooo: dict[int, bytes] = {}
        self.rbuf = bytearray()          # in-order stream bytes not yet parsed
        self.ready: deque[bytes] = deque()  # whole frames held while paused
        self.ready_bytes = 0
        self.paused = False
        self.ack_due = False
        self.ack_ping = False
        self.ts_recent = 0  # the peer's last tsval, until we echo it
        self.last_heard = now
        self.fin_received = False
        # counters the transport reads
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = 0
        self.drops = 0
        self.retransmits = 0
        # chunked frames: sending (id -> _Held, oldest first) and receiving
        self.tx_id = 0
        self.held: dict[int, _Held] = {}
        self.held_bytes = 0
        self.rx_top = -1                 # the highest frame id seen, unwrapped
        self.partial: dict[int, _Partial] = {}  # unwrapped id -> chunks so far, oldest first
        self.partial_bytes = 0
        self.unflagged: list[int] = []   # partial frames no later frame has followed yet
        self.done: set[int] = set()      # ids delivered lately (duplicates of repairs)


class _Held:
    __slots__ = ("cnt", "frame", "repairs", "sent_at")

    def __init__(self, frame: bytes, cnt: int, now: float) -> None:
        self.frame, self.cnt, self.sent_at, self.repairs = frame, cnt, now, 0


class _Partial:
    """A frame some of whose chunks are in; ``cnt`` 0 while none is (lost whole)."""

    __slots__ = ("cnt", "have", "nack_due", "nacks", "parts", "size")

    def __init__(self, cnt: int, due: float) -> None:
        self.cnt, self.have, self.nacks, self.nack_due, self.size = cnt, 0, 0, due, 0
        self.parts: list = [None] * cnt

    def missing(self) -> int:
        if not self.cnt:
            return _ALL
        return sum(1 << i for i, part in enumerate(self.parts) if part is None)


class DatagramEndpoint:
    """Every connection on one datagram socket. Not thread-safe: one owner drives it.

    ``new_id`` gives connection ids (the transport's process-wide counter); ``rng``
    gives tokens. ``max_frame`` bounds one stream frame, ``send_buffer`` the bytes one
    connection may hold unacknowledged, ``window`` the segments it buffers for us.
    """

    def __init__(self, *, rng: random.Random, new_id: Callable[[], int],
                 max_frame: int, mss: int = DEFAULT_MSS, window: int = DEFAULT_WINDOW,
                 send_buffer: int = DEFAULT_SEND_BUFFER, dial_timeout: float = DIAL_TIMEOUT,
                 dead_after: float = DEAD_AFTER, linger: float = LINGER,
                 hello_timeout: float = HELLO_TIMEOUT, listening: bool = False,
                 max_pending: int = DEFAULT_TOTAL,
                 max_pending_per_source: int = DEFAULT_PER_SOURCE,
                 source_of: Callable[[Hashable], str] = str) -> None:
        if send_buffer < max_frame + _LEN.size:
            raise LocalProtocolError("send_buffer must hold at least one largest frame")
        self.max_frame, self.mss, self.window = max_frame, mss, window
        self.send_buffer = send_buffer
        self.dial_timeout, self.dead_after, self.linger = dial_timeout, dead_after, linger
        self.hello_timeout = hello_timeout
        self.listening = listening
        self._rng, self._new_id, self._source_of = rng, new_id, source_of
        self.conns: dict[int, _Conn] = {}
        self._by_token: dict[int, _Conn] = {}
        self._by_peer: dict[tuple[Hashable, int], _Conn] = {}  # (addr, peer token) of inbound
        self._tombstones: dict[int, tuple[Hashable, int, int, float]] = {}  # token -> addr, peer token, ack, until
        self._pending = PendingLimit(max_pending, max_pending_per_source)
        self._events: list[DatagramEvent] = []
        self._out: list[tuple[Hashable, bytes]] = []
        self._batches: list[tuple[Hashable, bytes, int]] = []  # (addr, chunks, stride)
        self._dirty: set[_Conn] = set()   # conns that may have something to transmit
        self._timers: list[tuple[float, int, int]] = []  # (due, seq, conn id), lazily invalid
        self._tseq = itertools.count()
        self.closed_totals: Counter[str] = Counter()  # counts of connections now gone
        self._answers, self._answers_at = ANSWER_BURST, 0.0
        self.counters: dict[str, int] = {k: 0 for k in (
            "malformed", "unknown_token", "wrong_source", "retransmits", "resets_sent",
            "pending_evicted", "handshake_timeouts", "dgram_in", "dgram_out", "dgram_too_big",
            "answers_suppressed", "chunked_out", "chunked_in", "chunked_too_big",
            "chunks_duplicate", "chunks_unconfirmed", "nacks_sent", "chunks_repaired",
            "repair_unheld", "chunked_lost")}

    # ----- the owner's calls ------------------------------------------------------------

    def connect(self, addr: Hashable, now: float) -> int:
        """Start a connection to ``addr``; ``Opened`` or ``OpenFailed`` follows."""
        conn = self._new_conn(addr, True, now)
        self._dirty.add(conn)
        return conn.id

    def send(self, conn_id: int, frame: bytes) -> bool:
        """Queue one stream frame; False when the connection's send buffer is full.
        Raises KeyError for a connection that is not open (the caller's misuse)."""
        conn = self._open_conn(conn_id)
        if not 0 < len(frame) <= self.max_frame:
            raise LocalProtocolError(f"frame of {len(frame)} bytes: must be 1..{self.max_frame}")
        need = _LEN.size + len(frame)
        if conn.queued + need > self.send_buffer:
            conn.drops += 1
            return False
        conn.stream += _LEN.pack(len(frame))
        conn.stream += frame
        conn.queued += need
        conn.frames_out += 1
        self._dirty.add(conn)
        return True

    def send_datagram(self, conn_id: int, frame: bytes) -> bool:
        """Send ``frame`` once, unreliably, in one datagram; False if it does not fit
        ``mss`` or the connection is not open yet."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.state not in ("open", "closing"):
            return False
        if not 0 < len(frame) <= self.mss + DATA_HEADER - DGRAM_HEADER:
            self.counters["dgram_too_big"] += 1
            return False
        self._out.append((conn.addr, _TOKEN.pack(DGRAM, conn.peer_token) + frame))
        self.counters["dgram_out"] += 1
        conn.bytes_out += DGRAM_HEADER + len(frame)
        return True

    @property
    def chunk_size(self) -> int:
        """Frame bytes per chunk: a chunk packet is as long as a full DATA packet."""
        return self.mss + DATA_HEADER - CHUNK_HEADER

    def send_chunked(self, conn_id: int, frame: bytes, now: float) -> bool:
        """Send ``frame`` as chunks, repaired on a loss report but neither ordered nor
        flow-controlled; False if it needs over ``MAX_CHUNKS`` chunks or the connection
        is not open. ``frame`` is held as given (not copied): pass ``bytes``."""
        batch = self.chunked(conn_id, frame, now)
        if batch is None:
            return False
        self._batches.append(batch)
        return True

    def chunked(self, conn_id: int, frame: bytes, now: float) -> tuple[Hashable, bytes, int] | None:
        """``send_chunked`` for a transport that sends the chunks itself, at once:
        ``(addr, data, stride)`` as ``transmit_batches`` gives them, or None."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.state not in ("open", "closing"):
            return None
        size, n = self.chunk_size, len(frame)
        cnt = -(-n // size)
        if not 0 < cnt <= MAX_CHUNKS:
            self.counters["chunked_too_big"] += 1
            return None
        fid, conn.tx_id = conn.tx_id, (conn.tx_id + 1) & 0xFFFFFFFF
        data = self._chunks(conn, fid, frame, cnt, range(cnt))
        conn.bytes_out += len(data)
        conn.frames_out += 1
        self.counters["chunked_out"] += 1
        held = conn.held
        held[fid] = _Held(frame, cnt, now)
        conn.held_bytes += n
        while held and (conn.held_bytes > HOLD_BYTES
                        or now - next(iter(held.values())).sent_at > HOLD_TIME):
            conn.held_bytes -= len(held.pop(next(iter(held))).frame)
        return conn.addr, data, size + CHUNK_HEADER

    def _chunks(self, conn: _Conn, fid: int, frame: bytes, cnt: int, indexes) -> bytes:
        """Chunks ``indexes`` of ``frame`` (of ``cnt``), each with its header, back to back."""
        size, view, pack, token = self.chunk_size, memoryview(frame), _CHUNK.pack, conn.peer_token
        parts = []
        for i in indexes:
            parts.append(pack(CHUNK, token, fid, i, cnt))
            parts.append(view[i * size:(i + 1) * size])
        return b"".join(parts)

    def close(self, conn_id: int, reason: str, now: float) -> None:
        """Close after what is queued is acknowledged (for at most ``linger``)."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.state in ("closing", "gone"):
            return
        if conn.state == "connecting":
            self._end(conn, reason, False)
            return
        conn.state, conn.close_reason = "closing", reason
        raw = reason.encode()[:512]
        conn.stream += _LEN.pack(0) + _REASON.pack(len(raw)) + raw
        conn.fin_queued = True
        conn.closing_since = now
        self._dirty.add(conn)

    def abort(self, conn_id: int, reason: str) -> None:
        """Drop the connection now and tell the peer once (shutdown, eviction)."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        if conn.state != "connecting":
            self._reset(conn.addr, conn.peer_token, True, reason)
        self._end(conn, reason, False)

    def pause(self, conn_id: int, paused: bool) -> None:
        conn = self.conns.get(conn_id)
        if conn is None or conn.paused == paused:
            return
        conn.paused = paused
        if not paused:
            self._deliver(conn)
            conn.ack_due = True  # the window opened: say so
            self._dirty.add(conn)

    def confirm(self, conn_id: int) -> None:
        conn = self.conns.get(conn_id)
        if conn is not None:
            self._pending.confirm(conn)

    def unreachable(self, addr: Hashable, reason: str) -> None:
        """The network said ``addr`` does not answer (ICMP): dials to it fail now."""
        for conn in [c for c in self.conns.values() if c.addr == addr and c.state == "connecting"]:
            self._fail(conn, reason)

    def events(self) -> list[DatagramEvent]:
        out, self._events = self._events, []
        return out

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ----- input ---------------------------------------------------------------------------

    def receive_batch(self, addr: Hashable, data: bytes, stride: int, now: float) -> None:
        """A GRO read: datagrams of ``stride`` bytes from ``addr`` back to back (the last
        may be shorter). The common case, one chunked frame whole and in order, is
        checked and joined in a few C-level steps; anything else goes datagram by
        datagram through ``receive``."""
        if not (len(data) > stride > CHUNK_HEADER and data[0] == CHUNK
                and self._whole_frame(addr, data, stride, now)):
            view = memoryview(data)
            for i in range(0, len(data), stride):
                self.receive(addr, view[i:i + stride], now)

    def _whole_frame(self, addr: Hashable, data: bytes, stride: int, now: float) -> bool:
        n = len(data)
        _, token, fid, idx, cnt = _CHUNK.unpack_from(data)
        if idx or cnt != -(-n // stride) or cnt > MAX_CHUNKS or n - (cnt - 1) * stride <= CHUNK_HEADER:
            return False
        # every header the same but its index, and the indexes 0, 1, 2, ...: byte k of
        # every header is data[k::stride]
        for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12):
            if data[k::stride] != data[k:k + 1] * cnt:
                return False
        if data[9::stride] != bytes(cnt) or data[10::stride] != _INDEXES[:cnt]:
            return False
        conn = self._by_token.get(token)
        if (conn is None or conn.addr != addr or conn.state not in ("open", "closing")
                or (not conn.outbound and conn in self._pending)):
            return False  # the slow path counts it
        full = _unwrap(fid, conn.rx_top)
        if full <= conn.rx_top:
            return False  # a repair, a duplicate, a reordered frame: the slow path sorts it
        conn.last_heard = now
        conn.bytes_in += n
        self._newer(conn, full, now)
        view = memoryview(data)
        self._complete(conn, full, [view[i + CHUNK_HEADER:i + stride] for i in range(0, n, stride)])
        return True

    def receive(self, addr: Hashable, data: bytes | memoryview, now: float) -> None:
        """One datagram from ``addr``. Anything malformed is dropped and counted. A
        chunk may come as a memoryview (a slice of a GRO read): it is copied once, when
        its frame is joined."""
        if len(data) < 5:
            self.counters["malformed"] += 1
            return
        kind = data[0]
        if kind != CHUNK and type(data) is not bytes:
            data = bytes(data)
        if kind == CONNECT:
            self._on_connect(addr, data, now)
            return
        token = int.from_bytes(data[1:5], "big")
        conn = self._by_token.get(token)
        if conn is None:
            self._on_stranger(addr, kind, token, data, now)
            return
        if conn.addr != addr:
            self.counters["wrong_source"] += 1
            return
        conn.last_heard = now
        try:
            if kind == ACCEPT:
                self._on_accept(conn, data, now)
            elif kind == DATA:
                self._on_data(conn, data, now)
            elif kind == ACK:
                self._on_ack(conn, data, now)
            elif kind == DGRAM:
                if conn.state in ("open", "closing"):
                    self.counters["dgram_in"] += 1
                    conn.bytes_in += len(data)
                    self._events.append(Received(conn.id, data[DGRAM_HEADER:]))
            elif kind == CHUNK:
                self._on_chunk(conn, data, now)
            elif kind == NACK:
                self._on_nack(conn, data, now)
            elif kind == RESET:
                self._on_reset(conn, data)
            else:
                self.counters["malformed"] += 1
        except (struct.error, UnicodeDecodeError):
            self.counters["malformed"] += 1

    def _on_connect(self, addr: Hashable, data: bytes, now: float) -> None:
        if len(data) < CONNECT_SIZE or not self.listening:
            self.counters["malformed" if len(data) < CONNECT_SIZE else "unknown_token"] += 1
            return
        _, peer_token, version = _CONNECT.unpack_from(data)
        if version != VERSION:
            if not self._answer_ok(now):
                return
            # short enough to be smaller than the CONNECT: no gain in reflecting it
            self._reset(addr, peer_token, False, f"version {version} unsupported"[:CONNECT_SIZE - 6])
            return
        conn = self._by_peer.get((addr, peer_token))
        if conn is None:
            conn = self._new_conn(addr, False, now)
            conn.peer_token = peer_token
            self._by_peer[(addr, peer_token)] = conn
            for old in self._pending.add(conn, self._source_of(addr)):
                self.counters["pending_evicted"] += 1
                self.abort(old.id, "evicted: too many connections waiting for their hello")
            if conn.id not in self.conns:
                return
            self._dirty.add(conn)
            self._events.append(Opened(conn.id, False, addr))
        # answer again for a retransmitted CONNECT: our ACCEPT may have been lost
        if self._answer_ok(now):
            self._out.append((addr, _ACCEPT.pack(ACCEPT, peer_token, conn.token)))

    def _answer_ok(self, now: float) -> bool:
        """A token bucket for what we send to a source that has not proven anything (an
        ACCEPT, a RESET to a stranger, a repeated final ACK): each answer is smaller
        than what provoked it, and this bounds their rate too, so a spoofed flood makes
        us a slow, small reflector at worst."""
        self._answers = min(ANSWER_BURST, self._answers + (now - self._answers_at) * ANSWER_RATE)
        self._answers_at = now
        if self._answers < 1.0:
            self.counters["answers_suppressed"] += 1
            return False
        self._answers -= 1.0
        return True

    def _on_stranger(self, addr: Hashable, kind: int, token: int, data: bytes, now: float) -> None:
        stone = self._tombstones.get(token)
        if stone is not None and stone[0] == addr:
            if kind == DATA and self._answer_ok(now):  # our last ACK was lost: repeat it
                _, peer_token, ack, _until = stone
                self._out.append((addr, _ACK.pack(ACK, peer_token, ack, 0, 0, 0, 0)))
            return
        if kind == RESET and len(data) >= _RESET.size and data[5] & RESET_YOURS:
            # "I do not know the connection you call <token>": ``token`` is the peer's
            conn = self._by_peer.get((addr, token))
            if conn is not None:
                self._on_reset(conn, data)
                return
        self.counters["unknown_token"] += 1
        if kind in (DATA, ACK) and self._answer_ok(now):
            # the peer holds a connection we do not know (we restarted): say so in a
            # bare header, smaller than what it sent, naming the token it used
            self._reset(addr, token, False, "", RESET_YOURS)

    def _on_accept(self, conn: _Conn, data: bytes, now: float) -> None:
        if conn.state != "connecting":
            return
        _, _, conn.peer_token = _ACCEPT.unpack_from(data)
        conn.state = "open"
        self._by_peer[(conn.addr, conn.peer_token)] = conn
        self._events.append(Opened(conn.id, True, conn.addr))
        conn.last_sent = now
        self._dirty.add(conn)

    def _on_data(self, conn: _Conn, data: bytes, now: float) -> None:
        if conn.state == "connecting":
            return  # our ACCEPT is lost: the CONNECT we repeat brings another
        _, _, seq, ack, window, tsval, tsecr = _DATA.unpack_from(data)
        conn.ts_recent = tsval or 1
        self._acked(conn, ack, window, 0, tsecr, now)
        payload = data[DATA_HEADER:]
        conn.bytes_in += len(data)
        conn.ack_due = True
        self._dirty.add(conn)
        if conn.fin_received or seq < conn.rcv_next or seq - conn.rcv_next >= self.window:
            return  # a duplicate (our ACK was lost) or beyond the window: the ACK says where we are
        if seq != conn.rcv_next:
            conn.ooo[seq] = payload
            return
        if conn.paused and self._window_left(conn) == 0 and (conn.ready_bytes + len(conn.rbuf)) // self.mss > 2 * self.window:
            return  # a peer ignoring our window (we are paused): it resends later
        conn.rbuf += payload
        conn.rcv_next += 1
        while conn.rcv_next in conn.ooo:
            conn.rbuf += conn.ooo.pop(conn.rcv_next)
            conn.rcv_next += 1
        self._parse(conn, now)

    def _parse(self, conn: _Conn, now: float) -> None:
        buf, pos = conn.rbuf, 0
        while len(buf) - pos >= _LEN.size:
            (n,) = _LEN.unpack_from(buf, pos)
            if n == 0:  # FIN: the peer closed after everything before this
                if len(buf) - pos < _LEN.size + _REASON.size:
                    break
                (rn,) = _REASON.unpack_from(buf, pos + _LEN.size)
                end = pos + _LEN.size + _REASON.size + rn
                if len(buf) < end:
                    break
                reason = bytes(buf[pos + _LEN.size + _REASON.size:end]).decode("utf-8", "replace")
                conn.fin_received = True
                del buf[:end]
                self._deliver(conn, force=True)
                self._peer_closed(conn, f"closed by peer: {reason}", now)
                return
            if n > self.max_frame:
                self._broken(conn, f"peer sent a frame of {n} bytes (limit {self.max_frame})")
                return
            if len(buf) - pos < _LEN.size + n:
                break
            conn.ready.append(bytes(buf[pos + _LEN.size:pos + _LEN.size + n]))
            conn.ready_bytes += n
            pos += _LEN.size + n
        del buf[:pos]
        self._deliver(conn)

    def _deliver(self, conn: _Conn, force: bool = False) -> None:
        while conn.ready and (force or not conn.paused):
            conn.frames_in += 1
            frame = conn.ready.popleft()
            conn.ready_bytes -= len(frame)
            self._events.append(Received(conn.id, frame))

    def _on_ack(self, conn: _Conn, data: bytes, now: float) -> None:
        if conn.state == "connecting":
            return
        _, _, ack, window, flags, sack, tsecr = _ACK.unpack_from(data)
        self._acked(conn, ack, window, sack, tsecr, now)
        if flags & ACK_PING:
            conn.ack_due = True
        self._dirty.add(conn)

    def _acked(self, conn: _Conn, ack: int, window: int, sack: int, tsecr: int,
               now: float) -> None:
        if conn.state == "connecting":
            return
        conn.peer_window = window
        if tsecr:
            self._rtt_sample(conn, ((_clock(now) - tsecr) & 0xFFFFFFFF) / 1e6)
        flight, progress = conn.flight, False
        for seq in [s for s in flight if s < ack or (s > ack and sack >> (s - ack - 1) & 1)]:
            conn.queued -= len(flight.pop(seq).data)
            progress = True
        if sack:
            # every hole below the highest segment the peer holds is lost, or late: resend
            # each once per round trip (RFC 6675's idea, without its pipe accounting)
            top = ack + sack.bit_length()
            wait = 1.25 * (conn.srtt or RTO_INITIAL)
            for seq, seg in flight.items():
                if seq >= top:
                    break
                if now - seg.sent_at > wait:
                    self._resend(conn, seg, now)
        if not flight:
            conn.rto_due = None
        elif progress:
            conn.rto_due = now + conn.rto
        if conn.state == "closing" and conn.fin_queued and not conn.stream and not flight:
            self._end(conn, conn.close_reason, False)

    def _rtt_sample(self, conn: _Conn, rtt: float) -> None:
        if conn.srtt is None:
            conn.srtt, conn.rttvar = rtt, rtt / 2
        else:
            conn.rttvar = 0.75 * conn.rttvar + 0.25 * abs(conn.srtt - rtt)
            conn.srtt = 0.875 * conn.srtt + 0.125 * rtt
        conn.rto = min(RTO_MAX, max(RTO_MIN, conn.srtt + 4 * conn.rttvar))

    def _on_chunk(self, conn: _Conn, data: memoryview | bytes, now: float) -> None:
        if conn.state not in ("open", "closing"):
            return
        if not conn.outbound and conn in self._pending:
            # IP data before the link hello: nothing to deliver it to, so no memory for it
            self.counters["chunks_unconfirmed"] += 1
            return
        _, _, fid, idx, cnt = _CHUNK.unpack_from(data)
        if not 0 < cnt <= MAX_CHUNKS or idx >= cnt or len(data) == CHUNK_HEADER:
            self.counters["malformed"] += 1
            return
        conn.bytes_in += len(data)
        top = conn.rx_top
        full = _unwrap(fid, top)
        if full <= top - ID_WINDOW or full in conn.done:
            self.counters["chunks_duplicate"] += 1
            return
        partial = conn.partial
        if full > top:
            self._newer(conn, full, now)
            if cnt == 1:
                self._complete(conn, full, [data[CHUNK_HEADER:]])
                return
            p = partial[full] = _Partial(cnt, now + self._nack_delay(conn))
            conn.unflagged.append(full)
            self._dirty.add(conn)  # arm the timer of its tail's report
        else:
            p = partial.get(full)
            if p is None:
                if cnt != 1:  # a frame already given up, or older than every hole
                    self.counters["chunks_duplicate"] += 1
                    return
                self._complete(conn, full, [data[CHUNK_HEADER:]])
                return
            if not p.cnt:
                p.cnt, p.parts = cnt, [None] * cnt
            elif p.cnt != cnt:
                self.counters["malformed"] += 1
                return
        if p.parts[idx] is not None:
            self.counters["chunks_duplicate"] += 1
            return
        part = p.parts[idx] = data[CHUNK_HEADER:]
        p.have += 1
        if p.have == p.cnt:
            del partial[full]
            conn.partial_bytes -= p.size
            self._complete(conn, full, p.parts)
            return
        p.size += len(part)
        conn.partial_bytes += len(part)
        while conn.partial_bytes > PARTIAL_BYTES or len(partial) > MAX_PARTIAL:
            self._lost(conn, next(iter(partial)))
        if idx == cnt - 1 and not p.nacks:  # the last chunk is in before others: the same
            p.nack_due = min(p.nack_due, now + _reorder_wait(conn))
            self._dirty.add(conn)

    def _newer(self, conn: _Conn, full: int, now: float) -> None:
        """Frame ``full`` is the highest id yet: what that says about the frames before."""
        top, partial = conn.rx_top, conn.partial
        conn.rx_top = full
        # a later frame began: the holes of the frames before it are losses, unless
        # the network reorders (then the chunks come within a quarter round trip)
        soon = now + _reorder_wait(conn)
        for g in conn.unflagged:
            q = partial.get(g)
            if q is not None and not q.nacks and q.nack_due > soon:
                q.nack_due = soon
        conn.unflagged.clear()
        if top >= 0 and full - top > 1:  # frames lost whole: ask for them
            lost = range(max(top + 1, full - MAX_GHOSTS), full)
            self.counters["chunked_lost"] += full - top - 1 - len(lost)
            for g in lost:
                partial[g] = _Partial(0, soon)
            self._dirty.add(conn)  # arm the timer of their report
        elif partial:
            self._dirty.add(conn)

    def _complete(self, conn: _Conn, full: int, parts: list) -> None:
        done = conn.done
        done.add(full)
        if len(done) > 2 * ID_WINDOW:
            floor = conn.rx_top - ID_WINDOW
            conn.done = {d for d in done if d > floor}
        conn.frames_in += 1
        self.counters["chunked_in"] += 1
        self._events.append(Received(conn.id, b"".join(parts)))

    def _lost(self, conn: _Conn, full: int) -> None:
        conn.partial_bytes -= conn.partial.pop(full).size
        conn.done.add(full)  # late chunks of it are duplicates now
        self.counters["chunked_lost"] += 1

    def _nack_delay(self, conn: _Conn) -> float:
        return max(NACK_DELAY_MIN, 1.25 * (conn.srtt or 0.01))

    def _report(self, conn: _Conn, now: float) -> None:
        """NACK every frame whose report is due; give up on those reported enough."""
        delay = None
        for full, p in list(conn.partial.items()):
            if p.nack_due > now:
                continue
            if p.nacks >= MAX_NACKS:
                self._lost(conn, full)
                continue
            self._out.append((conn.addr, _NACK.pack(NACK, conn.peer_token, full & 0xFFFFFFFF,
                                                    p.missing())))
            self.counters["nacks_sent"] += 1
            p.nacks += 1
            delay = delay or self._nack_delay(conn)
            p.nack_due = now + delay * 2 ** p.nacks
            self._dirty.add(conn)

    def _on_nack(self, conn: _Conn, data: bytes, now: float) -> None:
        if conn.state not in ("open", "closing"):
            return
        _, _, fid, missing = _NACK.unpack_from(data)
        held = conn.held.get(fid)
        if held is None or held.repairs > MAX_NACKS:
            self.counters["repair_unheld"] += 1  # too old: the inner TCP resends it
            return
        held.repairs += 1
        lost = [i for i in range(held.cnt) if missing >> i & 1]
        if lost:
            data = self._chunks(conn, fid, held.frame, held.cnt, lost)
            self._batches.append((conn.addr, data, self.chunk_size + CHUNK_HEADER))
            conn.bytes_out += len(data)
            self.counters["chunks_repaired"] += len(lost)

    def _on_reset(self, conn: _Conn, data: bytes) -> None:
        graceful = data[5] & RESET_GRACEFUL
        reason = data[_RESET.size:_RESET.size + 512].decode("utf-8", "replace") or (
            _STRANGER if data[5] & RESET_YOURS else "reset")
        if conn.state == "connecting":
            self._fail(conn, f"refused by peer: {reason}")
            return
        verb = "closed by peer" if graceful else "reset by peer"
        self._end(conn, f"{verb}: {reason}", not graceful)

    # ----- output and timers -------------------------------------------------------------

    def transmit(self, now: float) -> list[tuple[Hashable, bytes]]:
        """Every datagram due now; also arms the timers they need."""
        out, batches = self.transmit_batches(now)
        for addr, data, stride in batches:
            out.extend((addr, data[i:i + stride]) for i in range(0, len(data), stride))
        return out

    def transmit_batches(self, now: float) -> tuple[list[tuple[Hashable, bytes]],
                                                    list[tuple[Hashable, bytes, int]]]:
        """``transmit`` for a transport with segmentation offload: the datagrams, in
        order, and the chunked frames, each one buffer of ``stride``-byte datagrams (the
        last may be shorter) for one ``UDP_SEGMENT`` send."""
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            if conn.id in self.conns:
                self._flush(conn, now)
                if conn.id in self.conns:
                    self._rearm(conn)
        out, self._out = self._out, []
        batches, self._batches = self._batches, []
        return out, batches

    def _flush(self, conn: _Conn, now: float) -> None:
        if conn.state == "connecting":
            if conn.connect_due <= now:
                self._send_connect(conn, now)
            return
        window = min(MAX_IN_FLIGHT, conn.peer_window)
        sent = False
        while conn.stream and len(conn.flight) < window:
            chunk = bytes(conn.stream[:self.mss])
            del conn.stream[:self.mss]
            seg = _Segment(conn.next_seq, chunk, now)
            conn.next_seq += 1
            conn.flight[seg.seq] = seg
            self._emit_data(conn, seg)
            sent = True
        if sent and not conn.ooo:  # the DATA carried our ack; a hole needs the sack'
            conn.ack_due = False
            if conn.rto_due is None:
                conn.rto_due = now + conn.rto
        if conn.stream and conn.peer_window == 0 and not conn.flight and conn.probe_due <= now:
            conn.probe_due = now + conn.rto  # probe the closed window then
        if conn.ack_due:
            self._emit_ack(conn, conn.ack_ping)
            conn.ack_due = conn.ack_ping = False
            conn.last_sent = now

    def _emit_data(self, conn: _Conn, seg: _Segment) -> None:
        head = _DATA.pack(DATA, conn.peer_token, seg.seq, conn.rcv_next, self._window_left(conn),
                          _clock(seg.sent_at) or 1, conn.ts_recent)
        conn.ts_recent = 0  # echoed once
        conn.bytes_out += len(head) + len(seg.data)
        self._out.append((conn.addr, head + seg.data))
        conn.last_sent = seg.sent_at

    def _emit_ack(self, conn: _Conn, ping: bool = False) -> None:
        sack = 0
        for seq in conn.ooo:
            off = seq - conn.rcv_next - 1
            if 0 <= off < 64:
                sack |= 1 << off
        self._out.append((conn.addr, _ACK.pack(ACK, conn.peer_token, conn.rcv_next,
                                               self._window_left(conn),
                                               ACK_PING if ping else 0, sack, conn.ts_recent)))
        conn.ts_recent = 0

    def _window_left(self, conn: _Conn) -> int:
        held = len(conn.ooo) + (len(conn.rbuf) + conn.ready_bytes) // self.mss
        return max(0, min(0xFFFF, self.window - held))

    def _resend(self, conn: _Conn, seg: _Segment, now: float) -> None:
        seg.sent_at, seg.sends = now, seg.sends + 1
        conn.retransmits += 1
        self.counters["retransmits"] += 1
        self._emit_data(conn, seg)

    def _send_connect(self, conn: _Conn, now: float) -> None:
        if now - conn.created >= self.dial_timeout:
            self._fail(conn, f"no answer within {self.dial_timeout:g} s")
            return
        packet = _CONNECT.pack(CONNECT, conn.token, VERSION)
        self._out.append((conn.addr, packet + bytes(CONNECT_SIZE - len(packet))))
        conn.connect_sends += 1
        conn.connect_due = now + min(1.0, RTO_INITIAL * 2 ** (conn.connect_sends - 1))

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run next (``None``: no timer)."""
        while self._timers:
            due, _, cid = self._timers[0]
            conn = self.conns.get(cid)
            if conn is not None and conn.wake == due:
                return due
            heapq.heappop(self._timers)  # stale: the conn is gone or re-armed earlier
        return None

    def handle_timer(self, now: float) -> None:
        """Run every timer due by ``now``: retransmissions, dials, keepalives, closes."""
        while self._timers and self._timers[0][0] <= now:
            due, _, cid = heapq.heappop(self._timers)
            conn = self.conns.get(cid)
            if conn is not None and conn.wake == due:
                conn.wake = None
                self._check(conn, now)
                self._dirty.add(conn)
        while self._tombstones:
            token, stone = next(iter(self._tombstones.items()))
            if stone[3] > now:
                break
            del self._tombstones[token]

    def _check(self, conn: _Conn, now: float) -> None:
        if conn.state == "connecting":
            if conn.connect_due <= now:
                self._send_connect(conn, now)
            return
        if conn.state == "closing" and now - conn.closing_since >= self.linger:
            # the queue did not drain in time: tell the peer, which would otherwise wait
            self._reset(conn.addr, conn.peer_token, False, "closed before its queue was delivered")
            self._end(conn, conn.close_reason, False)
            return
        if (not conn.outbound and conn in self._pending
                and now - conn.created >= self.hello_timeout):
            self.counters["handshake_timeouts"] += 1
            self.abort(conn.id, f"no hello within {self.hello_timeout:g} s")
            return
        if now - conn.last_heard >= self.dead_after:
            self._broken(conn, f"peer silent for {self.dead_after:g} s")
            return
        if conn.flight:
            oldest = next(iter(conn.flight.values()))
            if now - oldest.first_sent >= self.dead_after:
                self._broken(conn, f"nothing acknowledged for {self.dead_after:g} s")
                return
            if conn.rto_due is not None and conn.rto_due <= now:
                self._resend(conn, oldest, now)
                conn.rto = min(RTO_MAX, conn.rto * 2)
                conn.rto_due = now + conn.rto
        elif conn.stream and conn.peer_window == 0 and conn.probe_due <= now:
            conn.ack_ping = conn.ack_due = True  # probe: the answer carries the window
            conn.probe_due = now + conn.rto
        if now - conn.last_sent >= KEEPALIVE:
            conn.ack_ping = conn.ack_due = True
        if conn.partial:
            self._report(conn, now)

    def _next_due(self, conn: _Conn) -> float:
        if conn.state == "connecting":
            return conn.connect_due
        due = min(conn.last_sent + KEEPALIVE, conn.last_heard + self.dead_after)
        if conn.flight:
            due = min(due, next(iter(conn.flight.values())).first_sent + self.dead_after)
            if conn.rto_due is not None:
                due = min(due, conn.rto_due)
        elif conn.stream and conn.peer_window == 0:
            due = min(due, conn.probe_due)
        if not conn.outbound and conn in self._pending:
            due = min(due, conn.created + self.hello_timeout)
        if conn.state == "closing":
            due = min(due, conn.closing_since + self.linger)
        if conn.partial:
            due = min(due, min(p.nack_due for p in conn.partial.values()))
        return due

    def _rearm(self, conn: _Conn) -> None:
        """One live timer per conn, at its earliest due time; a later one waits for it."""
        due = self._next_due(conn)
        if conn.wake is None or due < conn.wake:
            conn.wake = due
            heapq.heappush(self._timers, (due, next(self._tseq), conn.id))

    # ----- bookkeeping -----------------------------------------------------------------

    def _new_conn(self, addr: Hashable, outbound: bool, now: float) -> _Conn:
        token = self._rng.getrandbits(32)
        while token == 0 or token in self._by_token or token in self._tombstones:
            token = self._rng.getrandbits(32)
        conn = _Conn(self._new_id(), addr, token, outbound, now, self.window)
        self.conns[conn.id] = conn
        self._by_token[token] = conn
        return conn

    def _open_conn(self, conn_id: int) -> _Conn:
        conn = self.conns.get(conn_id)
        if conn is None or conn.state != "open":
            raise KeyError(conn_id)
        return conn

    def _reset(self, addr: Hashable, token: int, graceful: bool, reason: str,
               flags: int = 0) -> None:
        self.counters["resets_sent"] += 1
        self._out.append((addr, _RESET.pack(RESET, token, flags | (RESET_GRACEFUL if graceful else 0))
                          + reason.encode()[:200]))

    def _peer_closed(self, conn: _Conn, reason: str, now: float) -> None:
        self._emit_ack(conn)
        if len(self._tombstones) >= MAX_TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]
        self._tombstones[conn.token] = (conn.addr, conn.peer_token, conn.rcv_next,
                                        now + TIME_WAIT)
        mine = conn.state == "closing"
        self._end(conn, conn.close_reason if mine else reason, False)

    def _end(self, conn: _Conn, reason: str, broken: bool) -> None:
        self._forget(conn)
        self._events.append(Closed(conn.id, reason, broken))

    def _fail(self, conn: _Conn, reason: str) -> None:
        self._forget(conn)
        self._events.append(OpenFailed(conn.id, reason))

    def _broken(self, conn: _Conn, reason: str) -> None:
        """A fault: tell the peer, then report the connection broken."""
        self._reset(conn.addr, conn.peer_token, False, reason)
        self._end(conn, reason, True)

    def _forget(self, conn: _Conn) -> None:
        if self.conns.pop(conn.id, None) is not None:
            self.closed_totals.update(bytes_in=conn.bytes_in, bytes_out=conn.bytes_out,
                                      frames_in=conn.frames_in, frames_out=conn.frames_out,
                                      drops=conn.drops)
        conn.state = "gone"
        self._by_token.pop(conn.token, None)
        if self._by_peer.get((conn.addr, conn.peer_token)) is conn:
            del self._by_peer[(conn.addr, conn.peer_token)]
        self._pending.discard(conn)
        self._dirty.discard(conn)
