"""The network contract of a node: the current version, its loading and its updates.

``ContractHolder`` keeps the version in force; the link, router and overlay agents get
its ``admits`` / ``may_reach`` as their admission hooks (a plain reference, read
without asking anyone, like the router's ``FibHolder``). ``load_contract`` is what
``Node`` runs at start: it refuses an invalid contract or one that does not list this
node. ``ContractAgent`` keeps the holder current: every ``POLL_INTERVAL`` it reads
the watched ledger directory (``sporenet contract publish --ledger DIR``), and
``ApplyContract`` (``POST /v1/contract``) pushes a version by hand. A newer version
that verifies against the one in force (same network, next version, the previous
owners' threshold; or, from the ledger, its chain) replaces it, and the agent
publishes ``ContractChanged``: links, routes and sessions of keys no longer admitted
are cut by their agents. Membership expiry needs no new version: the agent publishes
``ContractChanged`` again once a member's expiry has passed.

Gossip: on ``PeerUp`` the agent sends the neighbour a ``ContractOffer`` (0x50) of the
version in force, and after adopting a version it offers it to every neighbour. An
offer of the next version is verified against the one in force and adopted; an offer
further ahead asks its sender for the next version (``ContractRequest`` 0x51), so a
node catches up one verified step at a time; an offer behind ours gets ours back. A
request is answered from the versions this agent has held (and the ledger).

Contract times are Unix seconds: the holder reads ``time.time()`` itself, whatever
monotonic ``now`` the sans-IO callers pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from sporenet.protocols import contract as ct
from sporenet.protocols import wire
from sporenet.protocols.base import Action, Event
from sporenet.protocols.errors import DecodeError
from sporenet.protocols.ledger import ContractOffer, ContractRequest
from sporenet.protocols.notices import LinkFrameIn, LinkFrameOut, Notice, PeerDown, PeerUp

from .base import ProtocolAgent

POLL_INTERVAL = 1.0  # s between reads of the watched ledger (a stat when nothing changed)


class ContractLoadError(ValueError):
    """The configured contract cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ContractChanged(Notice):
    """The contract in force changed (a new version, or a membership expired)."""

    TOPIC: ClassVar[str] = "contract.changed"
    network: str
    version: int


class ContractHolder:
    """The contract version in force; ``None`` means an open network (everyone admitted)."""

    __slots__ = ("value", "clock")

    def __init__(self, value: ct.Contract | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.value = value
        self.clock = clock

    def admits(self, public_key: bytes, _now: float = 0.0) -> bool:
        c = self.value
        return c is None or c.is_member(public_key, self.clock())

    def may_reach(self, src: bytes, dst: bytes) -> bool:
        c = self.value
        return c is None or c.may_reach(src, dst, self.clock())

    def next_expiry(self, after: float) -> float | None:
        c = self.value
        if c is None:
            return None
        times = [m.expires for m in c.members if m.expires is not None and m.expires > after]
        if c.expires is not None and c.expires > after:
            times.append(c.expires)
        return min(times, default=None)


def _ledger(directory: Path) -> Any:
    from sporenet.ledger_file import FileLedger
    return FileLedger(directory)


def load_contract(file: Path | None, ledger: Path | None, public_key: bytes,
                  now: float) -> ct.Contract:
    """The version to enforce at start: the file's, or the ledger's newest for its
    network (the file's version is appended to the ledger first). Verified with the
    clock; raises ``ContractLoadError`` if it is invalid or does not list ``public_key``."""
    from sporenet.commands.contract import ContractFileError, read_contract
    from sporenet.ledger_file import LedgerError
    where = f"contract.file ({file})" if file else f"contract.ledger ({ledger})"
    try:
        c = read_contract(file) if file else None
        if ledger is not None:
            led = _ledger(ledger)
            if c is None:
                nets = led.networks()
                if len(nets) != 1:
                    raise ContractLoadError(
                        f"contract.ledger: {ledger} holds {len(nets)} networks "
                        f"({', '.join(nets) or 'none'}); name the contract with contract.file "
                        "or publish one network's contract there (`sporenet contract publish`)")
                c = led.latest(nets[0])
            else:
                latest = led.latest(c.network)
                if latest is None or latest.version < c.version:
                    led.append(c)
                c = led.latest(c.network)
        assert c is not None
        ct.verify(c, now)
        c.member(public_key, now)
    except ct.NotAMember as e:
        raise ContractLoadError(
            f"{where}: this node is not a current member: {e}. Ask an owner to add it "
            f"(`sporenet contract add FILE --member {public_key.hex()} --name NAME`), sign and "
            "publish the new version, or start without a contract") from None
    except ct.ContractError as e:
        raise ContractLoadError(f"{where}: invalid contract: {e}") from None
    except (ContractFileError, LedgerError) as e:
        raise ContractLoadError(f"{where}: {e}") from None
    return c


def adopt(current: ct.Contract, new: ct.Contract, now: float) -> bool:
    """Verify ``new`` as the successor of ``current``: True to adopt, False if it is not
    newer (already held or older); raises ``ContractError`` if it does not verify."""
    if new.network != current.network:
        raise ct.NetworkMismatch(f"contract is for network {new.network}, this node enforces "
                                 f"{current.network}")
    if new.version <= current.version:
        return False
    ct.verify(new, now, previous=current)
    return True


@dataclass(frozen=True, slots=True)
class ApplyContract:
    """``ask`` it: adopt this version if it verifies as the next one. Answers
    ``{"network", "version", "adopted": bool}`` or ``{"error": message}``."""

    contract: ct.Contract


class GetContract:
    """``ask`` it: ``{"network", "version", "members"}`` of the version in force."""


@dataclass(frozen=True, slots=True)
class _Poll(Action):
    pass


class _Ticker:
    """The agent's protocol: a poll every ``POLL_INTERVAL``."""

    def __init__(self, now: float) -> None:
        self._due = now

    def handle(self, event: Event, now: float) -> list[Action]:
        return []

    def next_deadline(self) -> float | None:
        return self._due

    def on_timer(self, now: float) -> list[Action]:
        self._due = now + POLL_INTERVAL
        return [_Poll()]


class ContractAgent(ProtocolAgent):
    """Options: ``holder`` (a ``ContractHolder`` already loaded), ``ledger`` (a
    directory to watch, or None), ``public_key`` (this node's, for a warning when a
    version drops it)."""

    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkFrameIn.TOPIC)

    def make_protocol(self) -> _Ticker:
        self._holder: ContractHolder = self.options["holder"]
        self._peers: set[bytes] = set()
        self._held: dict[int, ct.Contract] = {self._holder.value.version: self._holder.value}
        ledger = self.options.get("ledger")
        self._ledger = _ledger(Path(ledger)) if ledger else None
        self._expiry_checked = time.time()
        return _Ticker(self.clock.now())

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        return {**super().dispatch_table(), _Poll: self._poll}

    def on_receive(self, message: Any) -> Any:
        match message:
            case ApplyContract(contract=c):
                return self._apply(c, "api")
            case GetContract():
                c = self._holder.value
                return {"network": c.network, "version": c.version, "members": len(c.members)}
        return super().on_receive(message)

    def on_bus(self, notice: Any) -> None:
        match notice:
            case PeerUp(node_id=nid):
                self._peers.add(nid)
                self._offer(nid, self._holder.value)
            case PeerDown(node_id=nid):
                self._peers.discard(nid)
            case LinkFrameIn(node_id=nid, frame=frame) if len(frame) > 1 and frame[1] in (
                    ContractOffer.TYPE, ContractRequest.TYPE):
                try:
                    msg = wire.decode_frame(frame)
                except DecodeError as e:
                    self.log.warning("bad_contract_frame", peer=nid[:4].hex(), error=str(e))
                    return
                if isinstance(msg, ContractOffer):
                    self._on_offer(nid, msg.contract)
                elif isinstance(msg, ContractRequest):
                    self._on_request(nid, msg)

    def _offer(self, nid: bytes, c: ct.Contract) -> None:
        self.publish(LinkFrameOut(nid, wire.encode_frame(ContractOffer(c))))

    def _on_offer(self, nid: bytes, c: ct.Contract) -> None:
        current = self._holder.value
        if c.network != current.network or c.version == current.version:
            return
        if c.version == current.version + 1:
            self._apply(c, "gossip")
        elif c.version > current.version + 1:
            self.publish(LinkFrameOut(nid, wire.encode_frame(
                ContractRequest(current.network, current.version + 1))))
        else:
            self._offer(nid, current)  # the peer is behind: it asks for what it misses

    def _on_request(self, nid: bytes, req: ContractRequest) -> None:
        current = self._holder.value
        if req.network != current.network:
            return
        c = self._held.get(req.version or current.version)
        if c is None and self._ledger is not None:
            try:
                c = self._ledger.get(req.network, req.version)
            except Exception:
                c = None
        if c is not None:
            self._offer(nid, c)

    def _apply(self, new: ct.Contract, source: str) -> dict:
        current = self._holder.value
        try:
            if not adopt(current, new, time.time()):
                return {"network": current.network, "version": current.version, "adopted": False}
            if self._ledger is not None and source != "ledger":
                self._ledger.append(new)
        except Exception as e:  # ContractError, LedgerError: refused, the old one stays
            self.log.warning("contract_refused", source=source, version=new.version, error=str(e))
            return {"error": str(e)}
        self._holder.value = new
        self._held[new.version] = new
        removed = len({m.public_key for m in current.members} - {m.public_key for m in new.members})
        self.log.info("contract_adopted", network=new.network, version=new.version,
                      source=source, members=len(new.members), removed=removed)
        me = self.options.get("public_key")
        if me is not None and not self._holder.admits(me):
            self.log.warning("contract_excludes_this_node", network=new.network,
                             version=new.version, detail="this node is no longer a member; "
                             "members will refuse its links")
        self.publish(ContractChanged(new.network, new.version))
        for nid in self._peers:
            self._offer(nid, new)
        return {"network": new.network, "version": new.version, "adopted": True}

    def _poll(self, _: _Poll) -> None:
        current = self._holder.value
        if self._ledger is not None:
            try:
                versions = self._ledger.versions(current.network)
            except Exception as e:
                self.log.warning("contract_ledger_unreadable", error=str(e))
                versions = []
            # One step at a time along the chain, each verified against the one in force.
            for v in (v for v in versions if v > current.version):
                c = self._ledger.get(current.network, v)
                if c is None or "error" in self._apply(c, "ledger"):
                    break
        now = time.time()
        due = self._holder.next_expiry(self._expiry_checked)
        self._expiry_checked = now
        if due is not None and due <= now:
            c = self._holder.value
            self.log.info("contract_membership_expired", network=c.network, version=c.version)
            self.publish(ContractChanged(c.network, c.version))
