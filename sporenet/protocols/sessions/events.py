"""Events, actions, notices and rows of the session manager (``sessions/manager.py``).

Also the inner payload of an encrypted ``SessionData`` frame: ``inner_type:u8 | body``.

- ``INNER_APP`` 0x01: ``proto:u8 | payload`` - application data for the local overlay.
- ``INNER_PQ_OFFER`` 0x24: ``ek[1184]`` - the body of a ``PqOffer``.
- ``INNER_PQ_ANSWER`` 0x25: ``ct[1088]`` - the body of a ``PqAnswer``.
- an empty plaintext is a keepalive (WireGuard).

The PQ types reuse the numbers of their wire frames (``sessions/pq.py``) so a capture reads the
same; they only ever travel encrypted inside a session.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar

from ..base import Action, Event
from ..identity import node_id_of
from ..notices import Notice
from ..routed import Proto, Routed

INNER_APP = 0x01
INNER_PQ_OFFER = 0x24
INNER_PQ_ANSWER = 0x25
HANDSHAKE_TYPES = frozenset((0x20, 0x21, 0x22))
DATA_TYPE = 0x23


# -- events ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SendPlain(Event):
    """The local overlay wants ``payload`` (overlay ``proto``) sent to ``peer``.

    ``peer`` is the destination's Ed25519 public key (the overlay knows it from the
    route or the contract); its address is derived from it.
    """

    peer: bytes
    proto: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionFrameIn(Event):
    """A session frame (types 0x20-0x25) routed to this node.

    ``ingress`` is the node id of the neighbour whose link it came over (that link is
    authenticated); ``src_address`` the source address of the routed packet, which
    nobody has checked yet.
    """

    frame: bytes = field(repr=False)
    ingress: bytes
    src_address: ipaddress.IPv6Address

    @classmethod
    def from_routed(cls, packet: Routed, ingress: bytes) -> SessionFrameIn:
        """The event for a ``Routed`` session packet delivered to us off ``ingress``."""
        return cls(bytes(packet.payload), ingress, ipaddress.IPv6Address(packet.src))


# -- actions ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SendSessionFrame(Action):
    """Route ``frame`` to ``dst_address`` over the overlay (``Forwarder.originate``)
    as a packet of overlay protocol ``proto`` (SESSION_HANDSHAKE or E2E_DATA)."""

    dst_address: ipaddress.IPv6Address
    proto: int
    frame: bytes = field(repr=False)

    @classmethod
    def of(cls, dst_address: ipaddress.IPv6Address, frame: bytes) -> SendSessionFrame:
        proto = Proto.E2E_DATA if frame[1] == DATA_TYPE else Proto.SESSION_HANDSHAKE
        return cls(dst_address, int(proto), frame)


@dataclass(frozen=True, slots=True)
class DeliverPlain(Action):
    """Decrypted application data from ``peer`` (Ed25519 key) for the local overlay."""

    peer: bytes
    src_address: ipaddress.IPv6Address
    proto: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SendFailed(Action):
    """No session with ``peer`` could be made: ``dropped`` queued sends are lost."""

    peer: bytes
    dropped: int
    reason: str


# -- notices (bus) ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SessionEstablished(Notice):
    """A handshake with ``public_key`` completed (first session or rekey)."""

    TOPIC: ClassVar[str] = "session.established"
    public_key: bytes
    initiator: bool
    pq: bool
    rekeys: int


@dataclass(frozen=True, slots=True)
class SessionClosed(Notice):
    """Every keypair with ``public_key`` expired or was removed."""

    TOPIC: ClassVar[str] = "session.closed"
    public_key: bytes
    reason: str


# -- rows for ``sporenet sessions`` ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class SessionRow:
    """One peer's session, as ``sporenet sessions [--json]`` prints it."""

    peer: bytes  # Ed25519 public key (as_dict names the node by its id, the key beside it)
    address: str
    state: str  # "established", "handshake" or "pq_pending" (pq_required, not yet PQ)
    age: float  # seconds since the first handshake of this session
    key_age: float | None  # seconds since the current keypair was made
    rekeys: int  # handshakes completed after the first
    bytes_in: int  # application payload bytes delivered
    bytes_out: int  # application payload bytes sealed
    replay_drops: int
    pq: bool  # the current keypair comes from an ML-KEM psk
    initiator: bool | None  # our role in the current keypair
    queued: int

    def as_dict(self) -> dict:
        # Nodes are named by node id everywhere (status, peers, routes); the key is beside it.
        return {"peer": node_id_of(self.peer).hex(), "peer_key": self.peer.hex(),
                "address": self.address, "state": self.state,
                "age": round(self.age, 3),
                "key_age": None if self.key_age is None else round(self.key_age, 3),
                "rekeys": self.rekeys, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "replay_drops": self.replay_drops, "pq": self.pq, "initiator": self.initiator,
                "queued": self.queued}
