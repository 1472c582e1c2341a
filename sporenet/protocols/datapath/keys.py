"""Data keypairs: the keys IP packets are sealed under, one per session keypair.

Why separate keys (docs/datapath.md "Keys"): the session's own ``Keypair`` is sealed
and opened on the overlay agent's thread, for messages. The data path runs on its own
threads. If both used one keypair, two threads would advance one send counter, and a
counter used twice under one key reuses a nonce. So each session keypair also gives a
data keypair:
- keys from the session's transport keys through HKDF-SHA256 with the label
  ``"sporenet ip v1"``: one side's send key is the other side's receive key, so both
  derive the same pair;
- the same receiver indices as the session keypair;
- its own counter and replay window.

Frames: an IP packet travels as a ``Routed`` frame (0x30) of proto ``IP_PACKET``, whose
payload is an ``IpData`` frame. Its layout is that of ``SessionData`` under its own
type 0x31: ``version:u8 | type:u8 | receiver_index:u32 | counter:u64 | ciphertext``.
The 14-byte header is the AAD, and the plaintext is the ``virtio_net_hdr`` plus the
packet (one AEAD call per superpacket).

Threads: ``seal`` must be called from one thread only (the TUN reader owns the send
counter). ``open`` may come from several carrier threads (TCP and UDP links to one
peer): the data path in ``transports/`` serialises it per keypair. Sans-IO: ``now`` is
an argument, and there are no locks or threads here.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import wire
from ..errors import DecodeError, LocalProtocolError, RemoteProtocolError
from ..routed import ADDRESS_SIZE, Proto
from ..sessions.data import (REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
                             REKEY_AFTER_TIME, TAG_SIZE)
from ..sessions.replay import ReplayWindow

LABEL = b"sporenet ip v1"
IP_DATA_TYPE = 0x31
_HEADER = struct.Struct("!BBIQ")
HEADER_SIZE = _HEADER.size  # 14
_NONCE = struct.Struct("<4xQ")
_ROUTED = struct.Struct("!BB16s16sBBB")  # version, 0x30, src, dst, hop_limit, hops, proto
ROUTED_OVERHEAD = _ROUTED.size + HEADER_SIZE + TAG_SIZE  # 37 + 14 + 16 bytes per packet
MAX_PLAINTEXT = wire.MAX_FRAME_SIZE - ROUTED_OVERHEAD


class DataRejected(RemoteProtocolError):
    """An IP data frame was refused; ``reason`` is the drop counter's name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def derive(key: bytes) -> bytes:
    """The data key that goes with one direction's session key."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=LABEL).derive(key)


class DataKeypair:
    """One direction pair of data keys; see the module docstring."""

    __slots__ = ("local_index", "remote_index", "peer", "created", "_sender",
                 "_receiver", "_counter", "_window", "confirmed", "initiator")

    def __init__(self, *, local_index: int, remote_index: int, send_key: bytes, recv_key: bytes,
                 peer: bytes, now: float, confirmed: bool = True) -> None:
        self.local_index, self.remote_index, self.peer = local_index, remote_index, peer
        self.created = now
        self._sender = ChaCha20Poly1305(derive(send_key))
        self._receiver = ChaCha20Poly1305(derive(recv_key))
        self._counter = 0
        self._window = ReplayWindow(limit=REJECT_AFTER_MESSAGES)
        # A responder's keypair is unconfirmed until a frame under it arrives
        # (WireGuard §5.4.7); the data path reports the first one to the overlay agent.
        self.confirmed = confirmed
        self.initiator = confirmed  # only an initiator's keys are confirmed at birth

    @classmethod
    def from_session(cls, keys, now: float) -> DataKeypair:
        """From a ``sessions.noise.HandshakeResult`` (or anything with its fields)."""
        return cls(local_index=keys.local_index, remote_index=keys.remote_index,
                   send_key=keys.send_key, recv_key=keys.recv_key,
                   peer=keys.remote_public_key, now=now, confirmed=keys.initiator)

    @property
    def sent(self) -> int:
        return self._counter

    def usable(self, now: float) -> bool:
        return self._counter < REJECT_AFTER_MESSAGES and now - self.created < REJECT_AFTER_TIME

    def rekey_due(self, now: float) -> bool:
        """The session keypair's rule (WireGuard §6.2): the initiator rekeys after
        Rekey-After-Time, either side after Rekey-After-Messages."""
        age = now - self.created
        return ((self.initiator and age >= REKEY_AFTER_TIME) or age >= REJECT_AFTER_TIME
                or self._counter >= REKEY_AFTER_MESSAGES)

    def seal(self, plaintext: bytes | memoryview, now: float) -> bytes:
        """One ``IpData`` frame. One thread only (the counter has one owner)."""
        counter = self._counter
        if not self.usable(now):
            raise LocalProtocolError(f"data keypair {self.local_index:#010x} is past its limits")
        if len(plaintext) > MAX_PLAINTEXT:
            raise LocalProtocolError(f"packet of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        self._counter = counter + 1
        header = _HEADER.pack(wire.VERSION, IP_DATA_TYPE, self.remote_index, counter)
        return header + self._sender.encrypt(_NONCE.pack(counter), plaintext, header)

    def open(self, frame: bytes | memoryview, counter: int, now: float) -> bytes:
        """The plaintext of an ``IpData`` frame already matched to this keypair by
        ``parse_ip_data``, by one thread at a time. Raises ``DataRejected``."""
        if now - self.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            raise DataRejected("expired", f"data keypair {self.local_index:#010x} expired")
        # Tag before window, as the session keypair does: a forgery with a used counter
        # counts as forged, so nobody on the path can inflate the replay count.
        fresh = self._window.check(counter)
        view = memoryview(frame)
        try:
            plaintext = self._receiver.decrypt(_NONCE.pack(counter), view[HEADER_SIZE:],
                                               view[:HEADER_SIZE])
        except InvalidTag:
            raise DataRejected("forged", f"bad tag on counter {counter}") from None
        if not fresh or not self._window.accept(counter):  # only an authentic frame moves it
            raise DataRejected("replayed", f"counter {counter} replayed or below the window")
        return plaintext

    def __repr__(self) -> str:
        return (f"DataKeypair(local={self.local_index:#010x}, remote={self.remote_index:#010x}, "
                f"sent={self._counter}, keys=<redacted>)")


def parse_ip_data(frame: bytes | memoryview) -> tuple[int, int]:
    """``(receiver_index, counter)`` of an ``IpData`` frame; ``DecodeError`` otherwise."""
    n = len(frame)
    if n < HEADER_SIZE + TAG_SIZE:
        raise DecodeError(f"IP data frame of {n} bytes is shorter than header and tag")
    version, ftype, index, counter = _HEADER.unpack_from(frame)
    if version != wire.VERSION or ftype != IP_DATA_TYPE:
        raise DecodeError(f"not a v{wire.VERSION} IP data frame: {version}/{ftype:#04x}")
    return index, counter


def routed_ip_frame(src: bytes, dst: bytes, hop_limit: int, data: bytes) -> bytes:
    """The whole link frame: a ``Routed`` header (proto ``IP_PACKET``) then ``data``,
    without building a dataclass (the hot path: one per superpacket)."""
    return _ROUTED.pack(wire.VERSION, 0x30, src, dst, hop_limit, 0, Proto.IP_PACKET) + data


def parse_routed_ip(frame: bytes | memoryview) -> tuple[bytes, bytes, int, int] | None:
    """``(src, dst, hop_limit, hops_taken)`` if ``frame`` is a ``Routed`` IP packet,
    else None (any other frame: the actors' business). Raises ``DecodeError`` for a
    Routed IP frame too short to hold its header."""
    if len(frame) < 3 or frame[1] != 0x30 or frame[0] != wire.VERSION:
        return None
    if len(frame) < _ROUTED.size:
        raise DecodeError(f"Routed frame of {len(frame)} bytes is shorter than its header")
    _, _, src, dst, hop_limit, hops, proto = _ROUTED.unpack_from(frame)
    if proto != Proto.IP_PACKET:
        return None
    return src, dst, hop_limit, hops


ROUTED_HEADER = _ROUTED.size
assert ROUTED_HEADER == 2 + 2 * ADDRESS_SIZE + 3
