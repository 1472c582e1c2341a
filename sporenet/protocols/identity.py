"""Node identity and overlay addressing (DESIGN.md §3 "Identity and addressing").

Invariants:
- node id = BLAKE2b-256(Ed25519 public key), 32 bytes.
- The overlay lives in ``600::/7``, a /7 that neither Yggdrasil (200::/7) nor
  Mycelium (400::/7) uses. A node's address is the /7 prefix followed by the first
  121 bits of its node id; the node owns the /64 that contains it (57 hash bits).
  Any node can check that an address (or /64) belongs to a key by recomputing it.
- Key generation takes the 32-byte seed from the caller: this module has no
  hidden entropy.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from .errors import LocalProtocolError, RemoteProtocolError

OVERLAY_PREFIX = ipaddress.IPv6Network("600::/7")
_PREFIX_BYTE = 0x06  # top 7 bits of the first address byte: 0000 011x
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
NODE_ID_SIZE = 32


def node_id_of(public_key: bytes) -> bytes:
    """BLAKE2b-256 of the Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise LocalProtocolError(f"public key must be {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    return hashlib.blake2b(public_key, digest_size=NODE_ID_SIZE).digest()


def address_of(public_key: bytes) -> ipaddress.IPv6Address:
    """The overlay IPv6 address derived from a public key."""
    return _address_from_node_id(node_id_of(public_key))


def _address_from_node_id(node_id: bytes) -> ipaddress.IPv6Address:
    # Shift the id right by 7 bits behind the 7-bit prefix, so 121 id bits survive.
    as_int = int.from_bytes(node_id[:16], "big") >> 7
    return ipaddress.IPv6Address(as_int | (_PREFIX_BYTE >> 1) << 121)


def address_of_node_id(node_id: bytes) -> ipaddress.IPv6Address:
    """The overlay address of a node known only by its 32-byte node id."""
    if len(node_id) != NODE_ID_SIZE:
        raise LocalProtocolError(f"node id must be {NODE_ID_SIZE} bytes, got {len(node_id)}")
    return _address_from_node_id(node_id)


def subnet_of(public_key: bytes) -> ipaddress.IPv6Network:
    """The /64 a node owns (and routes) in the overlay."""
    return ipaddress.IPv6Network((int(address_of(public_key)) >> 64 << 64, 64))


def address_belongs_to(address: ipaddress.IPv6Address | str, public_key: bytes) -> bool:
    """True if ``address`` is exactly the overlay address derived from ``public_key``."""
    return ipaddress.IPv6Address(address) == address_of(public_key)


def subnet_belongs_to(subnet: ipaddress.IPv6Network | str, public_key: bytes) -> bool:
    """True if ``subnet`` is the /64 owned by ``public_key``."""
    return ipaddress.IPv6Network(subnet) == subnet_of(public_key)


def short_id(node_id: bytes) -> str:
    """A short human label for logs: the first 8 hex digits of the node id."""
    return node_id[:4].hex()


class Identity:
    """A node's Ed25519 signing identity.

    The secret never appears in repr, str or error messages.
    """

    __slots__ = ("_signing_key", "public_key", "node_id", "address")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise LocalProtocolError("identity seed must be 32 bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._signing_key.verify_key)
        self.node_id: bytes = node_id_of(self.public_key)
        self.address: ipaddress.IPv6Address = _address_from_node_id(self.node_id)

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed; only the key file writer should read it."""
        return bytes(self._signing_key)

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature (64 bytes)."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"Identity(node_id={short_id(self.node_id)}, secret=<redacted>)"

    __str__ = __repr__


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check a detached Ed25519 signature; raise ``RemoteProtocolError`` if bad."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise RemoteProtocolError("malformed public key or signature")
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise RemoteProtocolError("bad signature") from exc


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a node knows of a peer once the peer proved its key."""

    public_key: bytes

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.public_key)

    @property
    def address(self) -> ipaddress.IPv6Address:
        return address_of(self.public_key)
