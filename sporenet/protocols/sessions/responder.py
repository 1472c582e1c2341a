"""The responder's side of session handshakes: from an arriving msg1 to keys or a cookie.

Driven by ``SessionManager``: ``arrive`` for each ``HandshakeInit`` (cheap: mac1, the
link bucket, the bounded queue; never a DH), then, from ``on_timer``, ``screen`` for
each queued one (under load: mac2 or a cookie reply, then the source bucket) and
``respond`` for those that pass (the DH work, ``sessions.noise.Responder.consume_init``).

Invariants (security.md §1):
- mac1 is checked before anything is queued, so garbage costs one BLAKE2s.
- The initiator's static key must own the claimed source address, on every
  handshake (``sessions.noise.lookup_by_address``); then ``accept(key)`` (the contract) decides.
- The psk is the one from the last PQ offer of that peer we answered, if the
  initiator's index says it used one (low bit); else zero. A session is PQ only if
  both sides fed the same ML-KEM psk, since otherwise the handshake fails.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable

from .. import wire
from ..base import Action
from .cookie import BadMac1, HandshakeRejected
from .noise import ZERO_PSK, Dh, PeerKey, Responded, Responder, StaticKey, lookup_by_address
from .events import SendSessionFrame, SessionFrameIn
from .guard import HandshakeGuard, PendingInit
from .messages import HandshakeInit

PskFor = Callable[[bytes, float], "bytes | None"]  # peer key, now -> inbound psk


class InitiationDesk:
    """Queues, screens and answers msg1s for one node. Counts every outcome."""

    def __init__(self, static: StaticKey, *, rng: random.Random, dh: Dh,
                 guard: HandshakeGuard, counters: Counter[str],
                 accept: Callable[[bytes], bool] | None = None) -> None:
        self.responder = Responder(static, rng=rng.randbytes, dh=dh)
        self.guard, self.counters, self.accept = guard, counters, accept

    def arrive(self, msg: HandshakeInit, ev: SessionFrameIn, now: float) -> None:
        try:
            self.responder.cookies.check_mac1(msg)  # one BLAKE2s; no DH before this
        except BadMac1:
            self.counters["init_bad_mac1"] += 1
            return
        item = PendingInit(msg, ev.ingress, ev.src_address, now)
        if not self.guard.allow_link(item, now):
            self.counters["init_rate_link"] += 1
            self.guard.overflow(now)  # a neighbour floods: cookies for everyone a while
        elif not self.guard.offer(item):
            self.counters["init_queue_full"] += 1

    def screen(self, item: PendingInit, now: float) -> list[Action] | None:
        """None if ``item`` may cost a DH now; else what to do instead (maybe nothing)."""
        if not self.guard.under_load(now):
            return None
        cookies = self.responder.cookies
        if not cookies.check_mac2(item.msg, item.source_tag, now):
            self.counters["cookie_sent"] += 1
            reply = cookies.create_reply(item.msg, item.source_tag, now)
            return [SendSessionFrame.of(item.src_address, wire.encode_frame(reply))]
        if not self.guard.allow_source(item, now):
            self.counters["init_rate_source"] += 1
            return []
        return None

    def respond(self, item: PendingInit, now: float, local_index: int,
                psk_for: PskFor) -> tuple[Responded | None, bool]:
        """Run the handshake: ``(Responded or None if refused, session is PQ)``."""
        wants_psk = bool(item.msg.sender_index & 1)
        by_address = lookup_by_address(item.src_address)
        used_psk = [False]

        def lookup(s_pub: bytes) -> PeerKey | None:
            found = by_address(s_pub)
            if found is None or (self.accept is not None and not self.accept(found.public_key)):
                return None
            psk = psk_for(found.public_key, now) if wants_psk else None
            used_psk[0] = psk is not None
            return PeerKey(found.public_key, psk or ZERO_PSK)

        try:
            out = self.responder.consume_init(item.msg, now=now, local_index=local_index,
                                              lookup=lookup, claimed_address=item.src_address)
        except HandshakeRejected as exc:
            self.counters[f"init_{type(exc).__name__}"] += 1
            return None, False
        assert isinstance(out, Responded)  # under_load was not passed: never a cookie reply
        self.counters["init_answered"] += 1
        return out, used_psk[0]
