"""Real time for agents: a monotonic clock and the node's one timer thread.

Protocol objects say when they next need the clock (``next_deadline()``); the
``Scheduler`` calls back at that time and the agent runs ``on_timer(now)``.

Why one scheduler thread per node rather than ``threading.Timer`` per agent: a
protocol re-arms after almost every event (a prober every probe, a dialer every
backoff), and each ``threading.Timer`` is a new OS thread plus a cancel race.
One heap-ordered thread costs O(log n) per arm, one thread for the whole node,
and a late or stale wake-up is harmless because the agent re-reads
``next_deadline()`` when it fires.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable, Hashable

import structlog

log = structlog.get_logger("sporenet.clock")


class MonotonicClock:
    """``now()`` in seconds on ``time.monotonic``'s scale (what deadlines use)."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class Scheduler:
    """Calls ``fire()`` once ``deadline`` (monotonic seconds) has passed, per key.

    Driven by ``arm(key, deadline, fire)`` from any thread; ``start()``/``stop()``
    from the owner. One pending deadline per key: arming again replaces it,
    ``deadline=None`` cancels. ``fire`` runs on the scheduler thread and must be
    quick (agents pass ``actor_ref.tell``).
    """

    def __init__(self, name: str = "scheduler") -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._pending: dict[Hashable, tuple[int, Callable[[], None]]] = {}
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def arm(self, key: Hashable, deadline: float | None, fire: Callable[[], None]) -> None:
        with self._cond:
            if deadline is None:
                self._pending.pop(key, None)
                return
            seq = next(self._seq)
            self._pending[key] = (seq, fire)
            heapq.heappush(self._heap, (deadline, seq, key))
            if self._heap[0][1] == seq:
                self._cond.notify()

    def _next_due(self) -> Callable[[], None] | None:
        """Under the lock: wait until the earliest live deadline passes, pop it."""
        while not self._stopped:
            while self._heap and self._pending.get(self._heap[0][2], (None,))[0] != self._heap[0][1]:
                heapq.heappop(self._heap)  # replaced or cancelled
            if not self._heap:
                self._cond.wait()
                continue
            deadline, _, key = self._heap[0]
            wait = deadline - time.monotonic()
            if wait > 0:
                self._cond.wait(wait)
                continue
            heapq.heappop(self._heap)
            return self._pending.pop(key)[1]
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                fire = self._next_due()
            if fire is None:
                return
            fire()
