"""A virtual clock: a heap of timers run in (time, sequence) order.

Invariants (DESIGN.md §5): events run in order of ``(time, sequence)`` only, where
``sequence`` is the order in which they were scheduled, so a run is a pure function
of its inputs and seed. No globals: every simulation owns its clock, which keeps
the door open to sharding a network over several clocks later.
"""

from __future__ import annotations

import heapq
from typing import Callable

from sporenet.protocols.errors import LocalProtocolError


class TimerHandle:
    """Returned by ``call_at``; ``cancel()`` makes the clock skip the callback."""

    __slots__ = ("when", "cancelled")

    def __init__(self, when: float) -> None:
        self.when = when
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Discrete-event time. Driven by ``run_until(t)`` or ``run()``."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, TimerHandle, Callable[[], None]]] = []
        self._seq = 0
        self.events_run = 0

    @property
    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def pending(self) -> int:
        return sum(1 for _, _, h, _ in self._heap if not h.cancelled)

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        if when < self._now:
            raise LocalProtocolError(f"cannot schedule at {when} before now {self._now}")
        handle = TimerHandle(when)
        heapq.heappush(self._heap, (when, self._seq, handle, callback))
        self._seq += 1
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self._now + max(delay, 0.0), callback)

    def run_until(self, t: float) -> None:
        """Run every callback due at or before ``t``, then set the time to ``t``."""
        while self._heap and self._heap[0][0] <= t:
            self._step()
        self._now = max(self._now, t)

    def run(self, max_events: int | None = None) -> None:
        """Run until no callback is left (or ``max_events`` ran)."""
        ran = 0
        while self._heap and (max_events is None or ran < max_events):
            ran += self._step()

    def _step(self) -> int:
        when, _, handle, callback = heapq.heappop(self._heap)
        if handle.cancelled:
            return 0
        self._now = when
        self.events_run += 1
        callback()
        return 1
