"""Session transport: keypairs, data frames (type 0x23) and the per-peer key ring.

Driven by ``KeyRing.install(result, now)`` after each completed handshake
(``sessions.noise.HandshakeResult``), ``seal(peer, plaintext, now)`` to send,
``open(frame, now)`` for each received data frame, and ``on_timer(now)`` at
``next_deadline()``.

Layout of ``SessionData`` 0x23 (after the two-byte frame header of ``wire.py``,
integers big-endian like every sporenet frame): ``receiver_index:u32 | counter:u64 |
ciphertext`` where ciphertext is ``len(plaintext) + 16`` bytes (Poly1305 tag last).
This is WireGuard's data message (whitepaper §5.4.6) with our frame header in place
of its type word. Receivers hand the raw frame (bytes or memoryview) to
``KeyRing.open``; the registered codec serves tools and tests.

Invariants (security.md §3):
- AEAD is ChaCha20-Poly1305, nonce ``0^32 || LE64(counter)``, AAD the 14-byte frame
  header (version, type, receiver index, counter): a frame moved to another index or
  counter fails its tag.
- Each direction counts from 0 and never reuses a counter; sealing refuses at
  Reject-After-Messages or Reject-After-Time, opening refuses the same.
- Receive order is parse, lookup, replay pre-check, AEAD open, *then* window update:
  a forged frame never moves the window.
- Keys confirm as in WireGuard §5.4.7: the responder keeps a new keypair as ``next``
  and sends nothing under it until the first data frame under it arrives.
- Sans-IO: ``now`` is an argument; the only entropy is in the handshake that made
  the keys. Secrets never reach a repr or an error message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import ClassVar, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .. import wire
from ..base import Action
from ..errors import DecodeError, LocalProtocolError, RemoteProtocolError
from .replay import COUNTER_LIMIT, ReplayWindow

# WireGuard limits (whitepaper §6.1; wireguard-go device/constants.go).
REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = COUNTER_LIMIT  # 2^64 - 2^13 - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0

TAG_SIZE = 16
KEY_SIZE = 32
MAX_PAYLOAD = wire.MAX_SUPERPACKET  # one 64 KiB superpacket (DESIGN.md §4)
_HEADER = struct.Struct("!BBIQ")  # version, type, receiver_index, counter: the AAD
HEADER_SIZE = _HEADER.size  # 14
_NONCE = struct.Struct("<4xQ")  # 0^32 || LE64(counter)


class FrameRejected(RemoteProtocolError):
    """A data frame was refused; subclasses say why. Receivers drop and count."""


class UnknownReceiver(FrameRejected):
    """No live keypair has this receiver index (expired, or never ours)."""


class ReplayedFrame(FrameRejected):
    """The counter was already accepted or is below the replay window."""


class BadTag(FrameRejected):
    """The AEAD tag did not verify: forged, corrupted or under another key."""


class ExpiredFrame(FrameRejected):
    """The keypair is past Reject-After-Time, or the counter past Reject-After-Messages."""


class KeypairExpired(LocalProtocolError):
    """We tried to seal under a keypair past its limits: rekey first."""


class NoKeypair(LocalProtocolError):
    """No confirmed keypair for this peer: handshake (or wait for confirmation) first."""


class HandshakeKeys(Protocol):
    """What a keypair needs from ``sessions.noise.HandshakeResult`` (same field names)."""

    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    remote_public_key: bytes
    initiator: bool


@wire.register
@dataclass(frozen=True, slots=True)
class SessionData(wire.Message):
    TYPE: ClassVar[int] = 0x23
    MAX_SIZE: ClassVar[int] = HEADER_SIZE + MAX_PAYLOAD + TAG_SIZE

    receiver_index: int
    counter: int
    ciphertext: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.receiver_index <= 0xFFFF_FFFF:
            raise LocalProtocolError(f"receiver index {self.receiver_index} out of u32 range")
        if not 0 <= self.counter < 1 << 64:
            raise LocalProtocolError(f"counter {self.counter} out of u64 range")
        if not TAG_SIZE <= len(self.ciphertext) <= MAX_PAYLOAD + TAG_SIZE:
            raise LocalProtocolError(f"ciphertext of {len(self.ciphertext)} bytes")

    def header(self) -> bytes:
        """The AAD: this frame's first 14 bytes."""
        return _HEADER.pack(wire.VERSION, self.TYPE, self.receiver_index, self.counter)

    def encode_body(self) -> bytes:
        return wire.Writer().u32(self.receiver_index).u64(self.counter).raw(
            self.ciphertext).getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> SessionData:
        receiver_index, counter = r.u32(), r.u64()
        if r.remaining < TAG_SIZE:
            raise DecodeError(f"ciphertext of {r.remaining} bytes is shorter than the tag")
        return cls(receiver_index, counter, r.rest())


def parse_header(frame: bytes | memoryview) -> tuple[int, int]:
    """``(receiver_index, counter)`` of a data frame, without building a message.

    The hot receive path uses this instead of ``wire.decode_frame`` (no dataclass,
    no copy of the ciphertext); it checks exactly what ``SessionData.decode_body`` does.
    """
    n = len(frame)
    if n < HEADER_SIZE + TAG_SIZE:
        raise DecodeError(f"data frame of {n} bytes is shorter than header and tag")
    if n > SessionData.MAX_SIZE:
        raise DecodeError(f"data frame of {n} bytes exceeds cap {SessionData.MAX_SIZE}")
    version, ftype, index, counter = _HEADER.unpack_from(frame)
    if version != wire.VERSION or ftype != SessionData.TYPE:
        raise DecodeError(f"not a v{wire.VERSION} data frame: {version}/{ftype:#04x}")
    return index, counter


class Keypair:
    """The transport keys of one handshake: one AEAD per direction, counters, window.

    Driven by ``seal`` and ``open``; ``KeyRing`` decides which keypair to use.
    """

    __slots__ = ("local_index", "remote_index", "peer", "initiator", "created",
                 "_sender", "_receiver", "_send_counter", "_window", "replayed", "forged",
                 "data")

    def __init__(self, keys: HandshakeKeys, now: float) -> None:
        if len(keys.send_key) != KEY_SIZE or len(keys.recv_key) != KEY_SIZE:
            raise LocalProtocolError("session keys must be 32 bytes")
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.peer = keys.remote_public_key
        self.initiator = keys.initiator
        self.created = now
        # One AEAD object per direction, reused: a new object per packet costs
        # ~1.5 µs more at 1,400 B (security.md §3 table).
        self._sender = ChaCha20Poly1305(keys.send_key)
        self._receiver = ChaCha20Poly1305(keys.recv_key)
        self._send_counter = 0
        self._window = ReplayWindow(limit=REJECT_AFTER_MESSAGES)
        self.replayed = 0
        self.forged = 0
        # The data path's keypair made from the same handshake (KeyRing's ``data_keys``
        # factory): it lives and dies with this one, and never shares its counter.
        self.data: object | None = None

    @property
    def send_counter(self) -> int:
        """The counter the next sealed frame will carry."""
        return self._send_counter

    def expires_at(self) -> float:
        return self.created + REJECT_AFTER_TIME

    def rekey_due(self, now: float) -> bool:
        """WireGuard §6.2: the initiator rekeys after Rekey-After-Time; either side
        after Rekey-After-Messages or once the keypair can no longer seal. Only the
        initiator rekeys on time, so both ends do not start handshakes at once."""
        age = now - self.created
        return ((self.initiator and age >= REKEY_AFTER_TIME) or age >= REJECT_AFTER_TIME
                or self._send_counter >= REKEY_AFTER_MESSAGES)

    def seal(self, plaintext: bytes, now: float) -> bytes:
        """One data frame carrying ``plaintext`` (may be empty: a keepalive)."""
        counter = self._send_counter
        if counter >= REJECT_AFTER_MESSAGES or now - self.created >= REJECT_AFTER_TIME:
            raise KeypairExpired(f"keypair {self.local_index:#010x} is past its limits")
        if len(plaintext) > MAX_PAYLOAD:
            raise LocalProtocolError(f"payload of {len(plaintext)} bytes exceeds {MAX_PAYLOAD}")
        self._send_counter = counter + 1
        header = _HEADER.pack(wire.VERSION, SessionData.TYPE, self.remote_index, counter)
        return header + self._sender.encrypt(_NONCE.pack(counter), plaintext, header)

    def open(self, frame: bytes | memoryview, now: float) -> bytes:
        """The plaintext of a data frame addressed to this keypair."""
        index, counter = parse_header(frame)
        if index != self.local_index:
            raise LocalProtocolError(f"frame for index {index:#010x} given to another keypair")
        return self._open(frame, counter, now)

    def _open(self, frame: bytes | memoryview, counter: int, now: float) -> bytes:
        if now - self.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            raise ExpiredFrame(f"keypair {self.local_index:#010x} expired")
        # The tag is checked before the window decides, as WireGuard does: a frame with a
        # used counter and a forged tag is counted as forged, so an on-path attacker
        # cannot inflate the replay count an operator reads (skipping the decrypt of a
        # repeat would save nothing against one: fresh counters cost the same decrypt).
        fresh = self._window.check(counter)
        view = memoryview(frame)
        try:
            plaintext = self._receiver.decrypt(_NONCE.pack(counter), view[HEADER_SIZE:],
                                               view[:HEADER_SIZE])
        except InvalidTag:
            self.forged += 1
            raise BadTag(f"bad tag on counter {counter}") from None
        # Only now, authenticated, may the window move (module invariant 3).
        if not fresh or not self._window.accept(counter):
            self.replayed += 1
            raise ReplayedFrame(f"counter {counter} replayed or below the window")
        return plaintext

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (f"Keypair(local={self.local_index:#010x}, remote={self.remote_index:#010x}, "
                f"{role}, sent={self._send_counter}, keys=<redacted>)")


@dataclass(frozen=True, slots=True)
class ReleaseIndex(Action):
    """A keypair was dropped: its local receiver index may be allocated again."""

    local_index: int


@dataclass(frozen=True, slots=True)
class SendKeepalive(Action):
    """Seal and send an empty data frame to ``peer`` (WireGuard passive keepalive)."""

    peer: bytes


class _Slots:
    """WireGuard's per-peer keypair triple, plus the passive-keepalive state."""

    __slots__ = ("previous", "current", "next", "keepalive_at")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.keepalive_at: float | None = None

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.previous, self.current, self.next) if kp is not None]


class KeyRing:
    """Every peer's previous/current/next keypairs, found by our receiver index.

    Driven by ``install`` (handshake done), ``seal``, ``open``, and ``on_timer(now)``
    at ``next_deadline()``. Peers are keyed by their static public key
    (``HandshakeResult.remote_public_key``). Returned ``ReleaseIndex`` actions tell
    the handshake layer which indices it may reuse.
    """

    def __init__(self, data_keys: Callable[[HandshakeKeys, float], object] | None = None) -> None:
        self._peers: dict[bytes, _Slots] = {}
        self._by_index: dict[int, Keypair] = {}
        # ``data_keys(keys, now)`` makes the data path's companion of each keypair
        # (``datapath.keys.DataKeypair.from_session``); ``version`` moves whenever a
        # keypair is added, dropped or changes slot, so a reader knows when to look again.
        self._data_keys = data_keys
        self.version = 0
        self.rejected: dict[str, int] = {"unknown_index": 0, "replayed": 0, "forged": 0,
                                         "expired": 0}

    def install(self, keys: HandshakeKeys, now: float) -> list[Action]:
        """Add the keypair of a completed handshake (WireGuard ``BeginSymmetricSession``).

        The initiator has seen the responder's message, so its keys are confirmed:
        they become current at once. The responder's keys wait in ``next`` until the
        initiator's first data frame, and its current keypair stays: a replayed or
        KCI-forged msg1 must never tear down a working session (security.md §1).
        """
        kp = Keypair(keys, now)
        if kp.local_index in self._by_index:
            raise LocalProtocolError(f"receiver index {kp.local_index:#010x} already in use")
        if self._data_keys is not None:
            kp.data = self._data_keys(keys, now)
        self.version += 1
        slots = self._peers.setdefault(kp.peer, _Slots())
        dropped: list[Keypair | None]
        if kp.initiator:
            if slots.next is not None:
                # An unconfirmed responder keypair still decrypts late frames as previous.
                dropped = [slots.previous, slots.current]
                slots.previous, slots.next = slots.next, None
            else:
                dropped = [slots.previous]
                slots.previous = slots.current
            slots.current = kp
        else:
            dropped = [slots.next, slots.previous]
            slots.next, slots.previous = kp, None
        self._by_index[kp.local_index] = kp
        return self._release(dropped)

    def _release(self, keypairs: list[Keypair | None]) -> list[Action]:
        acts: list[Action] = []
        for kp in keypairs:
            if kp is not None and self._by_index.pop(kp.local_index, None) is kp:
                acts.append(ReleaseIndex(kp.local_index))
        if acts:
            self.version += 1
        return acts

    def confirm(self, index: int) -> list[Action]:
        """The data path opened a frame under our ``next`` keypair ``index``: the same
        key confirmation as a data frame here (next becomes current). Anything else
        (already current, gone) is a no-op."""
        kp = self._by_index.get(index)
        if kp is None:
            return []
        s = self._peers[kp.peer]
        if kp is not s.next:
            return []
        acts = self._release([s.previous])
        s.previous, s.current, s.next = s.current, kp, None
        self.version += 1
        return acts

    def slots(self) -> Iterator[tuple[bytes, Keypair | None, Keypair | None, Keypair | None]]:
        """``(peer, previous, current, next)`` of every peer with keys."""
        for peer, s in self._peers.items():
            yield peer, s.previous, s.current, s.next

    def keypairs(self, peer: bytes) -> tuple[Keypair | None, Keypair | None, Keypair | None]:
        """``(previous, current, next)`` of ``peer``."""
        s = self._peers.get(peer)
        return (s.previous, s.current, s.next) if s else (None, None, None)

    def seal(self, peer: bytes, plaintext: bytes, now: float) -> bytes:
        """A data frame under the peer's current keypair; raises ``NoKeypair`` or
        ``KeypairExpired`` (the caller then starts a handshake and queues)."""
        s = self._peers.get(peer)
        if s is None or s.current is None:
            raise NoKeypair("no confirmed session with this peer")
        frame = s.current.seal(plaintext, now)
        s.keepalive_at = None  # anything we send answers the peer's data
        return frame

    def rekey_due(self, peer: bytes, now: float) -> bool:
        """True if the caller should start a new handshake with ``peer``: no usable
        current keypair, or it is due (checked on send, as WireGuard does, so idle
        sessions just expire). The handshake layer rate-limits to one per Rekey-Timeout."""
        s = self._peers.get(peer)
        return s is None or s.current is None or s.current.rekey_due(now)

    def open(self, frame: bytes | memoryview, now: float) -> tuple[bytes, bytes]:
        """``(peer, plaintext)`` of a received data frame.

        Raises ``DecodeError`` or a ``FrameRejected`` subclass, each counted in
        ``rejected``; the caller drops the frame (no disconnect: any host can send
        garbage with a guessed index).
        """
        index, counter = parse_header(frame)
        kp = self._by_index.get(index)
        if kp is None:
            self.rejected["unknown_index"] += 1
            raise UnknownReceiver(f"no keypair for index {index:#010x}")
        try:
            plaintext = kp._open(frame, counter, now)
        except ReplayedFrame:
            self.rejected["replayed"] += 1
            raise
        except BadTag:
            self.rejected["forged"] += 1
            raise
        except ExpiredFrame:
            self.rejected["expired"] += 1
            raise
        s = self._peers[kp.peer]
        if kp is s.next:
            # Key confirmation (WireGuard ``ReceivedWithKeypair``): next becomes current.
            self._release([s.previous])
            s.previous, s.current, s.next = s.current, kp, None
            self.version += 1
        if plaintext and s.keepalive_at is None:
            # Passive keepalive: answer data (not keepalives) within 10 s.
            s.keepalive_at = now + KEEPALIVE_TIMEOUT
        return kp.peer, plaintext

    def next_deadline(self) -> float | None:
        times = [kp.expires_at() for kp in self._by_index.values()]
        times += [s.keepalive_at for s in self._peers.values() if s.keepalive_at is not None]
        return min(times, default=None)

    def on_timer(self, now: float) -> list[Action]:
        """Drop keypairs past Reject-After-Time (they can neither seal nor open) and
        ask for due keepalives. WireGuard only zeroes them at 3 x Reject-After-Time
        (a lazy timer); dropping at once frees the index and the keys sooner."""
        acts: list[Action] = []
        for peer, s in list(self._peers.items()):
            for name in ("previous", "current", "next"):
                kp = getattr(s, name)
                if kp is not None and now >= kp.expires_at():
                    setattr(s, name, None)
                    acts += self._release([kp])
            if not s.keypairs():
                del self._peers[peer]
                self.version += 1
                continue
            if s.keepalive_at is not None and now >= s.keepalive_at:
                s.keepalive_at = None
                if s.current is not None:
                    acts.append(SendKeepalive(peer))
        return acts

    def remove_peer(self, peer: bytes) -> list[Action]:
        """Forget every keypair of ``peer`` (revoked, or its static key rotated)."""
        s = self._peers.pop(peer, None)
        if s is None:
            return []
        self.version += 1
        return self._release(s.keypairs())

    def __len__(self) -> int:
        return len(self._by_index)

    def __repr__(self) -> str:
        return f"KeyRing(peers={len(self._peers)}, keypairs={len(self._by_index)})"
