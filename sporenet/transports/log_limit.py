"""Rate limits for log lines that a remote party can cause.

A peer that can make us log once per connection, frame or request can make us log
as fast as it can send: the log grows without bound and the node spends its time
formatting lines (the issue "A connection flood makes a node spin and flood its log":
166,035 ``accept_failed`` lines in 8 s). Every such call site goes through a
``LimitedLogger`` instead of the plain structlog logger.

The rule, per event key (by default the event name): a token bucket of ``burst``
lines that refills one line per ``interval`` seconds. A line that finds the bucket
empty is dropped and counted; the next line let through for that key carries
``suppressed=N``, the number dropped since the previous one. Counters elsewhere
(link, carrier, guard) keep the exact totals; the log only has to say "this is
happening, this much".

Keys must come from code (event names, or an event name plus a small fixed choice
such as an errno name), never from what a peer sent, or the key table itself
becomes the flood; it is capped at ``max_keys`` anyway (least recently used first
out).

``clock`` is any ``() -> float`` (``time.monotonic`` by default), so tests drive the
limiter with a hand-advanced clock. Thread-safe: one limiter may serve the I/O
thread and actor threads at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable

DEFAULT_INTERVAL = 10.0  # s per line, sustained, per key
DEFAULT_BURST = 5        # lines a quiet key may log at once
DEFAULT_MAX_KEYS = 1024


class LogLimiter:
    """Token bucket per key. ``allow(key)`` -> None (drop the line) or the number of
    lines dropped for ``key`` since the last one let through."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, burst: int = DEFAULT_BURST, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if interval <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("interval must be > 0, burst and max_keys >= 1")
        self.interval, self.burst, self._clock, self._max_keys = interval, burst, clock, max_keys
        self._lock = threading.Lock()
        # key -> [tokens, last refill time, lines dropped since the last one let through]
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def allow(self, key: Hashable) -> int | None:
        now = self._clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= self._max_keys:
                    self._buckets.popitem(last=False)
                b = self._buckets[key] = [float(self.burst), now, 0]
            else:
                self._buckets.move_to_end(key)
                b[0] = min(float(self.burst), b[0] + max(0.0, now - b[1]) / self.interval)
                b[1] = now
            if b[0] < 1.0 - 1e-9:  # tolerance: a refill summed from many small steps
                b[2] += 1
                return None
            b[0] = max(0.0, b[0] - 1.0)
            dropped, b[2] = int(b[2]), 0
            return dropped

    def suppressed(self, key: Hashable) -> int:
        """Lines dropped for ``key`` and not yet reported by a later line."""
        with self._lock:
            b = self._buckets.get(key)
            return int(b[2]) if b is not None else 0


class LimitedLogger:
    """A structlog logger whose lines pass a ``LogLimiter`` first.

    ``log.warning("accept_failed", error=...)`` is limited under the key
    ``"accept_failed"``; ``key=("accept_failed", "EMFILE")`` gives a sub-case its own
    bucket. ``bind`` returns a limited logger sharing the same limiter.
    """

    def __init__(self, logger: Any, limiter: LogLimiter | None = None) -> None:
        self._logger = logger
        self.limiter = limiter if limiter is not None else LogLimiter()

    def bind(self, **fields: Any) -> LimitedLogger:
        return LimitedLogger(self._logger.bind(**fields), self.limiter)

    def _emit(self, method: str, event: str, key: Hashable | None, fields: dict) -> bool:
        dropped = self.limiter.allow(event if key is None else key)
        if dropped is None:
            return False
        if dropped:
            fields["suppressed"] = dropped
        getattr(self._logger, method)(event, **fields)
        return True

    def debug(self, event: str, *, key: Hashable | None = None, **fields: Any) -> bool:
        return self._emit("debug", event, key, fields)

    def info(self, event: str, *, key: Hashable | None = None, **fields: Any) -> bool:
        return self._emit("info", event, key, fields)

    def warning(self, event: str, *, key: Hashable | None = None, **fields: Any) -> bool:
        return self._emit("warning", event, key, fields)

    def error(self, event: str, *, key: Hashable | None = None, **fields: Any) -> bool:
        return self._emit("error", event, key, fields)

    def exception(self, event: str, *, key: Hashable | None = None, **fields: Any) -> bool:
        return self._emit("exception", event, key, fields)
