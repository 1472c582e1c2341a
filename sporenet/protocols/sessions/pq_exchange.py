"""The PQ-PSK exchange of the session manager, one step per function (security.md §2).

Driven by ``SessionManager``: ``make_offer`` after each handshake it initiated (and on
retry), ``take_offer`` when a ``PqOffer`` arrives inside a session, ``take_answer`` when
the ``PqAnswer`` comes back. Each returns the inner plaintext to seal (or a flag); the
manager seals and sends. The psk lands in the peer's slot for *that direction*:
``take_answer`` fills the slot our next initiation uses, ``take_offer`` the slot used
when we answer that peer's next initiation. Two exchanges that cross (both ends
initiated at once) thus never overwrite each other.

Invariants: the ML-KEM private key is used once and dropped (``PqInitiator``); the
psk is derived from the transcript hash of the keypair the offer travelled under, so
it cannot be moved to another session; nothing here writes a key anywhere but RAM.
"""

from __future__ import annotations

import random
from collections import Counter

from ..errors import LocalProtocolError
from .pq import BadPqOffer, PqAnswer, PqInitiator, PqOffer, SEED_SIZE, answer_offer
from .data import REKEY_TIMEOUT
from .events import INNER_PQ_ANSWER, INNER_PQ_OFFER
from .peer import KeyMeta, PeerState

PQ_TRIES = 3  # offers per session (one each Rekey-Timeout) before staying classical


def make_offer(peer: PeerState, meta: KeyMeta | None, rng: random.Random,
               counters: Counter[str], now: float) -> bytes | None:
    """The plaintext of a fresh ``PqOffer`` under the keypair ``meta``, or None."""
    peer.pq_retry_at = None
    if meta is None or peer.pq_tries >= PQ_TRIES:
        if meta is not None:
            counters["pq_gave_up"] += 1
        peer.pq_exchange = None
        return None
    peer.pq_tries += 1
    peer.pq_exchange = PqInitiator(seed=rng.randbytes(SEED_SIZE))
    peer.pq_hash = meta.transcript_hash
    peer.pq_retry_at = now + REKEY_TIMEOUT
    counters["pq_offer_sent"] += 1
    return bytes((INNER_PQ_OFFER,)) + peer.pq_exchange.offer().ek


def take_offer(peer: PeerState, meta: KeyMeta, body: bytes, counters: Counter[str],
               now: float) -> bytes | None:
    """Answer an offer that arrived under ``meta``: the ``PqAnswer`` plaintext."""
    try:
        answer, psk = answer_offer(PqOffer(body), meta.transcript_hash)
    except (BadPqOffer, LocalProtocolError):
        counters["pq_bad_offer"] += 1
        return None
    peer.set_psk(False, bytes(psk), now)
    counters["pq_answered"] += 1
    return bytes((INNER_PQ_ANSWER,)) + answer.ct


def take_answer(peer: PeerState, body: bytes, counters: Counter[str], now: float) -> bool:
    """Finish our exchange; True if the psk for our next initiation is now set."""
    exchange = peer.pq_exchange
    if exchange is None:
        counters["pq_unexpected_answer"] += 1
        return False
    try:
        answer = PqAnswer(body)
    except LocalProtocolError:
        counters["pq_bad_answer"] += 1
        return False
    peer.set_psk(True, bytes(exchange.finish(answer, peer.pq_hash)), now)
    peer.pq_exchange, peer.pq_retry_at = None, None
    counters["pq_exchanges"] += 1
    return True
