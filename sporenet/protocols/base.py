"""The shape every sans-IO protocol object has (aioquic's timer style).

Driven by ``handle(event, now)`` for inputs, ``on_timer(now)`` when
``next_deadline()`` has passed; both return the actions the executor must carry
out, in order. The executor is an agent in a real node and ``sim.node`` in the
simulator; nothing else differs between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class Action:
    """Marker base of actions (imperative names: ``SendFrame``, ``Publish``)."""

    __slots__ = ()


class Event:
    """Marker base of events (past-tense names: ``FrameReceived``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Publish(Action):
    """Put a notice (a typed bus message) on the node's bus."""

    message: Any


@runtime_checkable
class SansIOProtocol(Protocol):
    def handle(self, event: Any, now: float) -> list[Action]: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> list[Action]: ...
