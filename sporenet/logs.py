"""structlog setup: human-readable on a TTY, JSON lines otherwise (DESIGN.md §6).

``SPORENET_LOG_FORMAT`` (console|json) and ``SPORENET_LOG_LEVEL`` override the
config, so launchers such as ``sporenet demo`` can ask their children for JSON.

The libraries under us (asyncio, pykka) log through the standard ``logging``
module. Some of their lines a remote party can cause once per connection: asyncio
prints a traceback for every failed ``accept`` when descriptors run out (1,408 of
them in 8 s in a flood test). So the standard library's records go to one handler
whose filter passes each message template through a ``LogLimiter`` too.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

from sporenet.transports.log_limit import LogLimiter

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto", stream=None) -> None:
    stream = stream or sys.stderr
    level = os.environ.get("SPORENET_LOG_LEVEL", level).lower()
    fmt = os.environ.get("SPORENET_LOG_FORMAT", fmt).lower()
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(stream, level)


class _RateLimitFilter(logging.Filter):
    """Lets a record through only if its (logger, message template) bucket has a token;
    the next one let through says how many were suppressed."""

    def __init__(self, limiter: LogLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter or LogLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        dropped = self.limiter.allow((record.name, str(record.msg)[:200]))
        if dropped is None:
            return False
        if dropped:
            record.msg = f"{record.msg} [suppressed={dropped}]"
        return True


class _SummaryFormatter(logging.Formatter):
    """One line per record: an exception shows as its type and message. A library's
    traceback (pykka's for an agent that failed to start, say) is not the operator's
    business, and the node reports the failure itself in one line (``sporenet up``
    errors); at level debug the whole traceback is shown."""

    def __init__(self, full_tracebacks: bool) -> None:
        super().__init__("%(asctime)s [%(levelname)s] %(name)s: %(message)s")
        self._full = full_tracebacks

    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        if self._full:
            return super().formatException(ei)
        return f"  {ei[0].__name__}: {ei[1]}" if ei and ei[0] else ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return super().formatStack(stack_info) if self._full else ""


def _configure_stdlib(stream, level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_sporenet", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler._sporenet = True  # type: ignore[attr-defined]
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_SummaryFormatter(full_tracebacks=level == "debug"))
    handler.addFilter(_RateLimitFilter())
    root.addHandler(handler)
    # pykka reports each actor failure with a traceback; the bundle reports the same
    # failure as agent_state/bundle_failed (and ``sporenet up`` as one Error line).
    logging.getLogger("pykka").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
