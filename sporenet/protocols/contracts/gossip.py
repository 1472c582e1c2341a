"""Contract gossip between neighbours, sans-IO: the ``contract`` agent's protocol.

Driven by ``handle(event, now)`` with ``PeerUp``, ``PeerDown`` and ``LinkFrameIn``
(frames of types 0x50-0x55), by ``on_timer(now)`` at ``next_deadline()`` (the ledger
poll and the chunk transfers' timeouts), and by the agent's calls ``adopted(c, now)``
after it adopted a version and ``refused(peer, c, error, now)`` when one did not
verify. It reads the version in force and the versions held through two callables
(``current()``, ``held(version)``) the agent provides.

What a neighbour's contract (an offer, or a fetched announcement) leads to:

- another network: ignored;
- a different body for a version this node holds: a fork. If both versions carry a
  threshold of trusted owner signatures (``contracts.fork.check_evidence``) the
  protocol returns ``ForkDetected`` (the agent alerts and stores the evidence) and
  sends the evidence to every other neighbour; the version held stays;
- the next version: ``Candidate`` (the agent verifies it against the version in force
  with the wall clock, adopts it, and calls ``adopted``; or calls ``refused``: a
  ``PreviousMismatch`` makes us ask that peer for its version of ours, which shows
  the fork if there is one);
- further ahead: ``ContractRequest`` for the next version; behind: our version back.

Contracts and evidence larger than one frame go as announcements and chunks
(``contract_transfer``); the sender serves chunks of the payloads it announced lately
(``MAX_SERVED``), at most ``SERVE_RATE`` bytes per second per peer.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from .. import wire
from ..base import Action
from .contract import Contract, PreviousMismatch, body_hash, decode, encode
from .fork import (ContractFork, ForkEvidence, ForkMonitor, check_evidence,
                            decode_evidence, encode_evidence, find_fork, fork_id)
from .transfer import (KIND_CONTRACT, KIND_FORK, ContractAnnounce, ContractChunk,
                                ContractChunkRequest, Fetched, Fetcher, RateLimit, SendTo,
                                TransferFailed, announce, digest, fits_one_frame, serve)
from ..errors import DecodeError, RemoteProtocolError
from .ledger import ContractOffer, ContractRequest
from ..notices import LinkFrameIn, PeerDown, PeerUp

POLL_INTERVAL = 1.0        # s between the agent's ledger polls
MAX_SERVED = 8             # payloads kept to serve chunks from (each ≤ MAX_PAYLOAD)
SERVE_RATE = 1 << 20       # bytes per second per peer of chunks served ...
SERVE_BURST = 2 << 20      # ... after a burst of this many
ASK_RATE, ASK_BURST = 0.2, 2.0  # fork-probing requests per peer after a PreviousMismatch
GOSSIP_TYPES = frozenset({ContractOffer.TYPE, ContractRequest.TYPE, ContractAnnounce.TYPE,
                          ContractChunkRequest.TYPE, ContractChunk.TYPE, ContractFork.TYPE})


@dataclass(frozen=True, slots=True)
class Candidate(Action):
    """A neighbour offered the next version: verify it, adopt it, call ``adopted``."""

    peer: bytes
    contract: Contract


@dataclass(frozen=True, slots=True)
class ForkDetected(Action):
    """New, checked fork evidence: alert, count, store it. ``source``: gossip, api, ..."""

    evidence: ForkEvidence
    source: str
    peer: bytes | None


@dataclass(frozen=True, slots=True)
class Poll(Action):
    """Time to read the watched ledger and check expiries."""


@dataclass(frozen=True, slots=True)
class Warn(Action):
    """Something a peer did wrong that the agent logs (``event`` plus public fields)."""

    event: str
    fields: dict[str, Any]


class ContractGossip:
    def __init__(self, current: Callable[[], Contract], held: Callable[[int], Contract | None],
                 now: float) -> None:
        self.current, self.held = current, held
        self.fetcher = Fetcher()
        self.forks = ForkMonitor()
        self.peers: set[bytes] = set()
        self.counters: Counter[str] = Counter()
        self._payloads: OrderedDict[bytes, bytes] = OrderedDict()
        self._serve_limit = RateLimit(SERVE_RATE, SERVE_BURST)
        self._ask_limit = RateLimit(ASK_RATE, ASK_BURST)
        self._due = now

    # -- the sans-IO surface ---------------------------------------------------------

    def handle(self, event: Any, now: float) -> list[Action]:
        match event:
            case PeerUp(node_id=nid):
                self.peers.add(nid)
                out = self.offer(nid, self.current())
                for ev in self.forks.evidence():
                    out += self._send_evidence(nid, ev)
                return out
            case PeerDown(node_id=nid):
                self.peers.discard(nid)
                return self.fetcher.peer_down(nid, now)
            case LinkFrameIn(node_id=nid, frame=frame) if len(frame) > 1 and frame[1] in GOSSIP_TYPES:
                try:
                    msg = wire.decode_frame(frame)
                except DecodeError as e:
                    self.counters["bad_frames"] += 1
                    return [Warn("bad_contract_frame", {"peer": nid[:4].hex(), "error": str(e)})]
                return self._on_message(nid, msg, now)
        return []

    def next_deadline(self) -> float | None:
        due = self.fetcher.next_deadline()
        return self._due if due is None else min(due, self._due)

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if now >= self._due:
            self._due = now + POLL_INTERVAL
            out.append(Poll())
        return out + self._fetched(self.fetcher.on_timer(now), now)

    # -- what the agent calls --------------------------------------------------------

    def offer(self, peer: bytes, c: Contract) -> list[Action]:
        """Offer ``c`` to ``peer``: whole if it fits one frame, else announced."""
        payload = encode(c)
        if fits_one_frame(len(payload)):
            return [SendTo(peer, ContractOffer(c))]
        self._serve(payload)
        return [SendTo(peer, announce(KIND_CONTRACT, c.network, c.version, body_hash(c), payload))]

    def adopted(self, c: Contract, now: float) -> list[Action]:
        """``c`` is now in force: offer it to every neighbour."""
        return [a for nid in sorted(self.peers) for a in self.offer(nid, c)]

    def refused(self, peer: bytes | None, c: Contract, error: Exception, now: float) -> list[Action]:
        """``c`` (from ``peer``) did not verify. On a broken chain ask the peer for its
        version of ours: if it differs and is signed, that is a fork."""
        self.counters["refused"] += 1
        cur = self.current()
        if (peer is not None and isinstance(error, PreviousMismatch)
                and self._ask_limit.allow(peer, now)):
            return [SendTo(peer, ContractRequest(cur.network, cur.version))]
        return []

    def check_fork(self, c: Contract, peer: bytes | None, source: str,
                   now: float) -> list[Action] | None:
        """None if ``c`` does not fork from what this node holds; else the actions for
        the fork (``ForkDetected`` and forwarding when the evidence is new and holds up;
        ``Warn`` when it does not)."""
        ev = find_fork(c, self.held)
        if ev is None:
            return None
        # The peer that offered the other branch may not know it is forked (it may never
        # get, or never check, our offer): it gets the evidence too.
        return self._on_evidence(peer, ev, now, source, tell_source=True)

    def summaries(self, now: float) -> list[dict]:
        return self.forks.summaries(now)

    # -- messages --------------------------------------------------------------------

    def _on_message(self, nid: bytes, msg: wire.Message, now: float) -> list[Action]:
        if isinstance(msg, ContractOffer):
            return self._on_contract(nid, msg.contract, now)
        if isinstance(msg, ContractRequest):
            return self._on_request(nid, msg)
        if isinstance(msg, ContractAnnounce):
            return self._on_announce(nid, msg, now)
        if isinstance(msg, ContractChunkRequest):
            return self._on_chunk_request(nid, msg, now)
        if isinstance(msg, ContractChunk):
            return self._fetched(self.fetcher.on_chunk(nid, msg, now), now)
        if isinstance(msg, ContractFork):
            return self._on_evidence(nid, msg.evidence, now, "gossip")
        return []

    def _on_contract(self, nid: bytes, c: Contract, now: float) -> list[Action]:
        cur = self.current()
        if c.network != cur.network:
            self.counters["other_network"] += 1
            return []
        fork = self.check_fork(c, nid, "gossip", now)
        if fork is not None:
            return fork
        if c.version == cur.version:
            return []
        if c.version == cur.version + 1:
            return [Candidate(nid, c)]
        if c.version > cur.version + 1:
            return [SendTo(nid, ContractRequest(cur.network, cur.version + 1))]
        return self.offer(nid, cur)  # the peer is behind: it asks for what it misses

    def _on_request(self, nid: bytes, req: ContractRequest) -> list[Action]:
        cur = self.current()
        if req.network != cur.network:
            return []
        c = self.held(req.version or cur.version)
        return self.offer(nid, c) if c is not None else []

    def _on_announce(self, nid: bytes, ann: ContractAnnounce, now: float) -> list[Action]:
        cur = self.current()
        if ann.network != cur.network:
            self.counters["other_network"] += 1
            return []
        if ann.kind == KIND_FORK:
            return [] if self.forks.known(ann.ref) else self._start(nid, ann, now)
        mine = self.held(ann.version)
        if mine is not None:
            mine_hash = body_hash(mine)
            if mine_hash == ann.ref:
                return self.offer(nid, cur) if ann.version < cur.version else []
            if self.forks.known(fork_id(mine_hash, ann.ref)):
                return []
            return self._start(nid, ann, now)  # a different body: fetch it to check the fork
        if ann.version == cur.version + 1:
            return self._start(nid, ann, now)
        if ann.version > cur.version + 1:
            return [SendTo(nid, ContractRequest(cur.network, cur.version + 1))]
        return self.offer(nid, cur)

    def _start(self, nid: bytes, ann: ContractAnnounce, now: float) -> list[Action]:
        return self.fetcher.start(nid, ann, now)

    def _on_chunk_request(self, nid: bytes, req: ContractChunkRequest, now: float) -> list[Action]:
        payload = self._payloads.get(req.digest)
        if payload is None:
            self.counters["chunk_requests_unknown"] += 1
            return []
        if not self._serve_limit.allow(nid, now, cost=req.length):
            self.counters["chunk_requests_rate_limited"] += 1
            return []
        self.counters["chunks_served"] += 1
        return [SendTo(nid, ch) for ch in serve(payload, req)]

    def _fetched(self, actions: list[Action], now: float) -> list[Action]:
        """Turn the fetcher's ``Fetched`` into what the payload means; log failures."""
        out: list[Action] = []
        for a in actions:
            if isinstance(a, Fetched):
                out += self._on_payload(a, now)
            elif isinstance(a, TransferFailed):
                out.append(Warn("contract_transfer_failed", {
                    "peer": a.peer[:4].hex(), "version": a.announce.version,
                    "kind": a.announce.kind, "reason": a.reason, "bad_peer": a.bad}))
            else:
                out.append(a)
        return out

    def _on_payload(self, f: Fetched, now: float) -> list[Action]:
        ann = f.announce
        try:
            if ann.kind == KIND_FORK:
                ev = decode_evidence(f.payload)
                if ev.id != ann.ref or ev.network != ann.network:
                    raise DecodeError("fork evidence does not match its announcement")
                return self._on_evidence(f.peer, ev, now, "gossip")
            c = decode(f.payload)
            if (c.network, c.version, body_hash(c)) != (ann.network, ann.version, ann.ref):
                raise DecodeError("the contract does not match its announcement")
        except DecodeError as e:
            return self._fetched(self.fetcher.fail(f.peer, ann, str(e), now), now)
        return self._on_contract(f.peer, c, now)

    # -- fork evidence ---------------------------------------------------------------

    def _on_evidence(self, peer: bytes | None, ev: ForkEvidence, now: float,
                     source: str, tell_source: bool = False) -> list[Action]:
        cur = self.current()
        if ev.network != cur.network or self.forks.known(ev.id):
            return []
        if peer is not None and not self.forks.allow(peer, now):
            return []
        try:
            check_evidence(ev, self.held, cur)
        except RemoteProtocolError as e:
            self.forks.counters["evidence_refused"] += 1
            return [Warn("contract_fork_unproven", {
                "peer": peer[:4].hex() if peer else None, "network": ev.network,
                "version": ev.version, "error": str(e)})]
        if not self.forks.record(ev, now, source):
            return []
        out: list[Action] = [ForkDetected(ev, source, peer)]
        for nid in sorted(self.peers if tell_source else self.peers - {peer}):
            out += self._send_evidence(nid, ev)
        return out

    def _send_evidence(self, peer: bytes, ev: ForkEvidence) -> list[Action]:
        payload = encode_evidence(ev)
        if fits_one_frame(len(payload)):
            return [SendTo(peer, ContractFork(ev))]
        self._serve(payload)
        return [SendTo(peer, announce(KIND_FORK, ev.network, ev.version, ev.id, payload))]

    def _serve(self, payload: bytes) -> None:
        dig = digest(payload)
        self._payloads[dig] = payload
        self._payloads.move_to_end(dig)
        while len(self._payloads) > MAX_SERVED:
            self._payloads.popitem(last=False)
