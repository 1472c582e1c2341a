"""Keeps the configured peers dialled: dial at start, redial with backoff.

Driven by ``handle(event, now)`` with ``DialSucceeded``/``DialLost`` events and by
``on_timer(now)``; emits ``Dial(endpoint)`` actions. A configured peer that goes
away is redialled after ``min_backoff`` seconds, doubling up to ``max_backoff``,
with +-20% jitter from the caller's ``rng`` so that a mesh restarting together
does not redial in lockstep. A peer that stays up for ``stable_after`` seconds
resets its backoff.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..base import Action, Event


@dataclass(frozen=True, slots=True)
class Dial(Action):
    endpoint: str


@dataclass(frozen=True, slots=True)
class DialSucceeded(Event):
    endpoint: str


@dataclass(frozen=True, slots=True)
class DialLost(Event):
    """The dial failed, or the link it made went down."""

    endpoint: str


@dataclass(slots=True)
class _Target:
    backoff: float
    due: float | None  # when to dial next; None while connected or dialling
    up_since: float | None = None


class Dialer:
    """Redial schedule for a fixed set of peer endpoints."""

    def __init__(self, endpoints: list[str], *, rng: random.Random, now: float,
                 min_backoff: float = 0.5, max_backoff: float = 30.0,
                 stable_after: float = 60.0) -> None:
        self._rng = rng
        self._min = min_backoff
        self._max = max_backoff
        self._stable_after = stable_after
        self._targets = {ep: _Target(backoff=min_backoff, due=now) for ep in dict.fromkeys(endpoints)}

    @property
    def endpoints(self) -> list[str]:
        return list(self._targets)

    def is_scheduled(self, endpoint: str) -> bool:
        """True if a dial to ``endpoint`` is waiting for its time."""
        t = self._targets.get(endpoint)
        return t is not None and t.due is not None

    def handle(self, event: Event, now: float) -> list[Action]:
        match event:
            case DialSucceeded(endpoint=ep) if ep in self._targets:
                t = self._targets[ep]
                t.due, t.up_since = None, now
            case DialLost(endpoint=ep) if ep in self._targets:
                t = self._targets[ep]
                if t.up_since is not None and now - t.up_since >= self._stable_after:
                    t.backoff = self._min
                t.up_since = None
                t.due = now + t.backoff * self._rng.uniform(0.8, 1.2)
                t.backoff = min(self._max, t.backoff * 2)
        return []

    def next_deadline(self) -> float | None:
        dues = [t.due for t in self._targets.values() if t.due is not None]
        return min(dues) if dues else None

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for ep, t in self._targets.items():
            if t.due is not None and t.due <= now:
                t.due = None  # waiting for the dial's outcome
                actions.append(Dial(ep))
        return actions
