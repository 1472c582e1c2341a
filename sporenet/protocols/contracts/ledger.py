"""Where contract versions are kept: the ``Ledger`` interface (docs/contracts.md).

A ledger supplies availability and order, never authority: every backend re-verifies
owner signatures and the hash chain itself (``check_append``), so a compromised
backend can withhold or delay versions but cannot add a member.

Guarantees every backend gives, per network id:
- append-only: a version, once appended, is never changed or removed;
- total order: versions are 1, 2, 3, ... with no gaps, each naming the hash of the
  one before (``Contract.previous``); two different bodies for one version are a fork
  and the second is refused;
- verified: ``append`` refuses what ``contracts.contract.verify_signed`` refuses against the
  latest version, and a backend re-verifies whatever it loads from storage;
- idempotent: appending a version already held (same body, any signatures) is a no-op.

``MemoryLedger`` (pure, for tests and the simulator) is the reference implementation;
``sporenet.ledger_file.FileLedger`` is the default on disk.

Gossip frames (0x50-0x5f) let nodes' ledgers catch up; integers big-endian:

- ``ContractOffer`` 0x50: ``contracts.contract.encode(c)`` (the rest of the frame). A contract
  larger than one frame (about 1,000 members) is announced and sent in chunks instead:
  ``ContractAnnounce`` 0x52, ``ContractChunkRequest`` 0x53, ``ContractChunk`` 0x54
  (``contract_transfer``).
- ``ContractRequest`` 0x51: ``network:text8 | version:u64`` (0: the latest held).
- ``ContractFork`` 0x55: fork evidence, two signed versions (``contract_fork``).

What a node does with them: ``contracts.gossip.ContractGossip``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from .. import wire
from .contract import (MAX_U64, NAME_PATTERN, Contract, VersionNotNext, body_hash, decode, encode,
                       verify_signed)
from ..errors import DecodeError, LocalProtocolError


class Ledger(abc.ABC):
    """Append-only, totally ordered, verified store of contract versions per network."""

    @abc.abstractmethod
    def append(self, contract: Contract) -> bool:
        """Verify and store the next version; True if stored, False if already held.

        Raises ``ContractError`` (not the next version, bad chain, signatures)."""

    @abc.abstractmethod
    def latest(self, network: str) -> Contract | None:
        """The highest version held, or None for an unknown network."""

    @abc.abstractmethod
    def versions(self, network: str) -> list[int]:
        """The versions held, ascending (``[1, 2, ..., n]``, or a suffix after compaction)."""

    @abc.abstractmethod
    def get(self, network: str, version: int) -> Contract | None:
        """One version, or None if not held."""


def check_append(latest: Contract | None, contract: Contract,
                 held: Contract | None = None) -> bool:
    """The acceptance every backend applies before it stores ``contract``.

    ``latest`` is the network's highest version held (None: empty); ``held`` is the
    version already stored under ``contracts.contract.version``, if any. Returns False when the
    contract is already held (no-op), True when it must be stored; raises
    ``ContractError`` otherwise."""
    if held is not None:
        if body_hash(held) == body_hash(contract):
            return False
        raise VersionNotNext(f"version {contract.version} of network {contract.network} is "
                             "already in the ledger with different content (a fork); edit the "
                             f"latest version ({latest.version if latest else '?'}) instead")
    if latest is None:
        if contract.version != 1:
            raise VersionNotNext(f"the ledger holds nothing for network {contract.network}: "
                                 f"append version 1 (genesis) before version {contract.version}")
        verify_signed(contract)
    else:
        verify_signed(contract, previous=latest)
    return True


class MemoryLedger(Ledger):
    """In-memory ledger. Driven by its four methods; holds no I/O."""

    def __init__(self) -> None:
        self._chains: dict[str, list[Contract]] = {}

    def append(self, contract: Contract) -> bool:
        chain = self._chains.get(contract.network, [])
        held = chain[contract.version - 1] if contract.version <= len(chain) else None
        if not check_append(chain[-1] if chain else None, contract, held):
            return False
        self._chains.setdefault(contract.network, []).append(contract)
        return True

    def latest(self, network: str) -> Contract | None:
        chain = self._chains.get(network)
        return chain[-1] if chain else None

    def versions(self, network: str) -> list[int]:
        return [c.version for c in self._chains.get(network, [])]

    def get(self, network: str, version: int) -> Contract | None:
        chain = self._chains.get(network, [])
        return chain[version - 1] if 0 < version <= len(chain) else None


@wire.register
@dataclass(frozen=True, slots=True)
class ContractOffer(wire.Message):
    """A signed contract version, pushed or sent in answer to a ``ContractRequest``.

    Decoding checks only the encoding: the receiver verifies it (``Ledger.append``)."""

    TYPE: ClassVar[int] = 0x50
    contract: Contract

    def encode_body(self) -> bytes:
        return encode(self.contract)

    @classmethod
    def decode_body(cls, r: wire.Reader) -> ContractOffer:
        return cls(decode(r.rest()))


@wire.register
@dataclass(frozen=True, slots=True)
class ContractRequest(wire.Message):
    """Ask a peer for one version of a network's contract (``LATEST``: its newest)."""

    TYPE: ClassVar[int] = 0x51
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + 1 + 63 + 8
    LATEST: ClassVar[int] = 0
    network: str
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.network, str) or not NAME_PATTERN.match(self.network):
            raise LocalProtocolError(f"{self.network!r} is not a network id")
        if type(self.version) is not int or not 0 <= self.version <= MAX_U64:
            raise LocalProtocolError("version must be 0..2^64-1")

    def encode_body(self) -> bytes:
        return wire.Writer().text8(self.network).u64(self.version).getvalue()

    @classmethod
    def decode_body(cls, r: wire.Reader) -> ContractRequest:
        network, version = r.text8(), r.u64()
        r.end()
        try:
            return cls(network, version)
        except LocalProtocolError as exc:
            raise DecodeError(str(exc)) from None


# The other contract frames register when their modules load; import them with the
# ledger so that every node that speaks 0x50/0x51 also knows 0x52-0x55.
from . import fork as contract_fork  # noqa: E402,F401
from . import transfer as contract_transfer  # noqa: E402,F401
