"""The network contract of a node: the current version, its loading and its updates.

``ContractHolder`` keeps the version in force; the link, router and overlay agents get
its ``admits`` / ``may_reach`` as their admission hooks (a plain reference, read
without asking anyone, like the router's ``FibHolder``). ``load_contract`` is what
``Node`` runs at start: it refuses an invalid contract or one that does not list this
node. ``ContractAgent`` keeps the holder current: every second (``POLL_INTERVAL``) it reads
the watched ledger directory (``sporenet contract publish --ledger DIR``), and
``ApplyContract`` (``POST /v1/contract``) pushes a version by hand. A newer version
that verifies against the one in force (same network, next version, the previous
owners' threshold; or, from the ledger, its chain) replaces it, and the agent
publishes ``ContractChanged``: links, routes and sessions of keys no longer admitted
are cut by their agents. Membership expiry needs no new version: the agent publishes
``ContractChanged`` again once a member's expiry has passed.

Gossip (``protocols.contracts.gossip.ContractGossip``, the agent's protocol): on
``PeerUp`` the neighbour gets an offer of the version in force (whole, or announced and
sent in chunks when larger than a frame), and after adopting a version every neighbour
does. An offer of the next version is verified against the one in force and adopted;
one further ahead asks its sender for the next version, so a node catches up one
verified step at a time; one behind ours gets ours back. Requests are answered from
the versions this agent has held (and the ledger).

Forks: a different, validly signed body for a version this node holds (by gossip, by
``POST /v1/contract`` or against its ledger) is refused, and the agent alerts: a
``contract_fork`` warning naming the network, version and both hashes, the
``fork_alerts`` counter and ``forks`` in ``GET /v1/contract``, and the evidence (both
signed versions) saved as ``<ledger>/<network>.forks/*.fork`` (without a ledger under
``<run_dir>/contract-forks/``). The protocol passes the evidence on to the neighbours.

Contract times are Unix seconds: the holder reads ``time.time()`` itself, whatever
monotonic ``now`` the sans-IO callers pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from sporenet.protocols.contracts import contract as ct
from sporenet.protocols import wire
from sporenet.protocols.contracts.gossip import (Candidate, ContractGossip, ForkDetected, Poll,
                                                SendTo, Warn)
from sporenet.protocols.notices import LinkFrameIn, LinkFrameOut, Notice, PeerDown, PeerUp

from .base import ProtocolAgent



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
    from sporenet.contract_file import ContractFileError, read_contract
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
    ``{"network", "version", "adopted": bool}`` or ``{"error": message}`` (with
    ``"fork": True`` when the version forks from one this node holds)."""

    contract: ct.Contract


class GetContract:
    """``ask`` it: ``{"network", "version", "hash", "members", "forks": [...],
    "fork_alerts", "counters"}`` of the version in force."""


class ContractAgent(ProtocolAgent):
    """Options: ``holder`` (a ``ContractHolder`` already loaded), ``ledger`` (a
    directory to watch, or None), ``public_key`` (this node's, for a warning when a
    version drops it)."""

    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkFrameIn.TOPIC)

    def make_protocol(self) -> ContractGossip:
        self._holder: ContractHolder = self.options["holder"]
        self._held: dict[int, ct.Contract] = {self._holder.value.version: self._holder.value}
        ledger = self.options.get("ledger")
        self._ledger = _ledger(Path(ledger)) if ledger else None
        run_dir = self.ctx.run_dir or Path(".")
        self._evidence_dir = Path(ledger) if ledger else Path(run_dir) / "contract-forks"
        self._evidence_paths: dict[bytes, str] = {}
        self._fork_alerts = 0
        self._expiry_checked = time.time()
        return ContractGossip(lambda: self._holder.value, self._held_version, self.clock.now())

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        return {**super().dispatch_table(), Poll: self._poll, SendTo: self._send,
                Candidate: lambda a: self._apply(a.contract, "gossip", a.peer),
                ForkDetected: self._alert, Warn: lambda a: self.log.warning(a.event, **a.fields)}

    def on_receive(self, message: Any) -> Any:
        match message:
            case ApplyContract(contract=c):
                out = self._apply(c, "api")
                self._rearm()
                return out
            case GetContract():
                c, gossip = self._holder.value, self.protocol
                forks = [{**row, "evidence": self._evidence_paths.get(bytes.fromhex(row["id"]))}
                         for row in gossip.summaries(self.clock.now())]
                return {"network": c.network, "version": c.version, "hash": c.hash.hex(),
                        "members": len(c.members), "forks": forks,
                        "fork_alerts": self._fork_alerts,
                        "counters": {**gossip.counters, **gossip.fetcher.counters,
                                     **gossip.forks.counters}}
        return super().on_receive(message)

    def _held_version(self, version: int) -> ct.Contract | None:
        c = self._held.get(version)
        if c is None and self._ledger is not None:
            try:
                c = self._ledger.get(self._holder.value.network, version)
            except Exception:  # an unreadable ledger: the poll reports it
                c = None
        return c

    def _send(self, a: SendTo) -> None:
        self.publish(LinkFrameOut(a.peer, wire.encode_frame(a.message)))

    def _alert(self, a: ForkDetected) -> None:
        ev = a.evidence
        kept = self._held_version(ev.version)
        try:
            from sporenet.ledger_file import save_fork
            path = str(save_fork(self._evidence_dir, ev))
            self._evidence_paths[ev.id] = path
        except Exception as e:  # LedgerError, OSError: alert anyway
            path = f"not saved: {e}"
        self._fork_alerts += 1
        first, second = ev.hashes
        self.log.warning(
            "contract_fork", network=ev.network, version=ev.version,
            hashes=[first.hex(), second.hex()], kept=kept.hash.hex() if kept else None,
            source=a.source, peer=a.peer[:4].hex() if a.peer else None, evidence=path,
            detail="the owners (or someone with their keys) signed two different versions; "
                   "this node keeps its version and refuses the other. Owners: find out who "
                   "signed what (`sporenet contract forks`), rotate compromised keys")

    def _apply(self, new: ct.Contract, source: str, peer: bytes | None = None) -> dict:
        current, now = self._holder.value, time.time()
        fork = self.protocol.check_fork(new, peer, source, self.clock.now())
        if fork is not None:
            self.execute(fork)
            mine = self._held_version(new.version)
            return {"error": f"version {new.version} of network {new.network} forks from the one "
                    f"this node holds (hash {mine.hash.hex() if mine else '?'}, offered "
                    f"{new.hash.hex()}): refused, see `forks` in /v1/contract", "fork": True}
        try:
            if not adopt(current, new, now):
                return {"network": current.network, "version": current.version, "adopted": False}
            if self._ledger is not None and source != "ledger":
                self._ledger.append(new)
        except Exception as e:  # ContractError, LedgerError: refused, the old one stays
            self.log.warning("contract_refused", source=source, version=new.version, error=str(e))
            self.execute(self.protocol.refused(peer, new, e, self.clock.now()))
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
        self.execute(self.protocol.adopted(new, self.clock.now()))
        return {"network": new.network, "version": new.version, "adopted": True}

    def _poll(self, _: Poll) -> None:
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
