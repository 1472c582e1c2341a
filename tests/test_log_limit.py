"""The log limiter (``sporenet/transports/log_limit.py``), on a hand-advanced clock."""

from __future__ import annotations

import logging

import pytest
import structlog
from structlog.testing import LogCapture

from sporenet.transports.log_limit import LimitedLogger, LogLimiter


def capturing() -> tuple[LogCapture, object]:
    """A structlog logger at debug level whose lines land in a list (the suite's own
    configuration filters below warning)."""
    cap = LogCapture()
    return cap, structlog.wrap_logger(
        None, processors=[cap], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_quiet_key_logs_its_burst_then_drops():
    clock = Clock()
    lim = LogLimiter(interval=10.0, burst=3, clock=clock)
    assert [lim.allow("x") for _ in range(5)] == [0, 0, 0, None, None]
    assert lim.suppressed("x") == 2


def test_refill_is_one_line_per_interval_and_reports_what_was_dropped():
    clock = Clock()
    lim = LogLimiter(interval=10.0, burst=1, clock=clock)
    assert lim.allow("x") == 0
    for _ in range(99):
        clock.t += 0.05
        assert lim.allow("x") is None
    clock.t += 10.0 - 99 * 0.05
    assert lim.allow("x") == 99  # the next line says how many were dropped
    assert lim.allow("x") is None
    assert lim.suppressed("x") == 1


def test_bucket_never_holds_more_than_the_burst():
    clock = Clock()
    lim = LogLimiter(interval=1.0, burst=2, clock=clock)
    clock.t += 3600
    assert [lim.allow("x") for _ in range(4)] == [0, 0, None, None]


def test_keys_are_independent():
    clock = Clock()
    lim = LogLimiter(interval=10.0, burst=1, clock=clock)
    assert lim.allow("a") == 0
    assert lim.allow("a") is None
    assert lim.allow("b") == 0
    assert lim.allow(("a", "EMFILE")) == 0


def test_key_table_is_bounded_least_recently_used_out():
    clock = Clock()
    lim = LogLimiter(interval=10.0, burst=1, clock=clock, max_keys=2)
    lim.allow("a")
    lim.allow("b")
    lim.allow("a")        # a is now the most recent; b goes first
    lim.allow("c")
    assert lim.allow("b") == 0  # forgotten, so a fresh bucket
    assert lim.allow("a") is None or lim.allow("a") is None


def test_clock_going_backwards_does_not_mint_tokens():
    clock = Clock()
    lim = LogLimiter(interval=10.0, burst=1, clock=clock)
    lim.allow("x")
    clock.t -= 500
    assert lim.allow("x") is None


@pytest.mark.parametrize("kw", [{"interval": 0}, {"burst": 0}, {"max_keys": 0}])
def test_bad_parameters_refused(kw):
    with pytest.raises(ValueError):
        LogLimiter(**kw)


def test_limited_logger_adds_suppressed_and_keeps_fields():
    clock = Clock()
    cap, logger = capturing()
    log = LimitedLogger(logger, LogLimiter(interval=5.0, burst=1, clock=clock))
    assert log.warning("accept_failed", error="Too many open files")
    for _ in range(1000):
        assert not log.warning("accept_failed", error="Too many open files")
    assert log.info("other", n=1)  # its own bucket
    clock.t += 5.0
    assert log.warning("accept_failed", error="Too many open files")
    lines = cap.entries
    assert [(x["event"], x["log_level"], x.get("suppressed")) for x in lines] == [
        ("accept_failed", "warning", None), ("other", "info", None),
        ("accept_failed", "warning", 1000)]
    assert lines[-1]["error"] == "Too many open files"


def test_bound_loggers_share_the_limiter_and_sub_keys_split_it():
    clock = Clock()
    cap, logger = capturing()
    base = LimitedLogger(logger, LogLimiter(interval=5.0, burst=1, clock=clock))
    a, b = base.bind(conn=1), base.bind(conn=2)
    a.info("link_closed")
    b.info("link_closed")          # same key, same bucket: dropped
    b.info("link_closed", key=("link_closed", "auth"))
    lines = cap.entries
    assert [x.get("conn") for x in lines] == [1, 2]
    assert base.limiter.suppressed("link_closed") == 1


def test_exception_keeps_the_traceback():
    cap, logger = capturing()
    log = LimitedLogger(logger, LogLimiter(clock=Clock()))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("handler_failed")
    lines = cap.entries
    assert lines[0]["log_level"] == "error" and lines[0]["exc_info"] is True


# ----- the rule, over the whole package -----------------------------------------------

import re as _re  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_PACKAGE = _Path(__file__).resolve().parent.parent / "sporenet"
_CALL = _re.compile(r"\b([\w.]+)\.(debug|info|warning|error|exception|critical|msg)\(\s*"
                    r"(?:\"(\w+)\"|([\w.\[\]]+))")
# Lines only the node's own operator causes (start, stop, local config), one or a few
# per run: they may use a plain structlog logger. Everything else must be limited.
LOCAL_EVENTS = {"agent_state", "bundle_started", "bundle_failed", "node_up", "node_stopped",
                "bus_started", "bus_stopped", "api_listening", "tun_unavailable", "tun_open",
                "tun_stale_removed"}
# receivers that are LimitedLogger instances (checked below where they are made)
LIMITED = {"self.log", "self._log", "_bus_log", "_handler_log"}


def test_every_log_line_a_peer_can_cause_is_rate_limited():
    """A log call on a plain structlog logger is allowed only for the local lifecycle
    events above; every other goes through a LimitedLogger. Adding
    ``log.warning("peer_did_x")`` anywhere in sporenet/ fails here."""
    plain = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        if path.name == "log_limit.py" or "sim" in path.relative_to(_PACKAGE).parts:
            continue  # the limiter itself; the simulator logs progress of local runs
        text = path.read_text()
        # module loggers made limited where they are defined: ``log = LimitedLogger(...)``
        limited_here = set(_re.findall(r"(?m)^(\w+) = LimitedLogger\(", text))
        for m in _CALL.finditer(text):
            receiver, _, event, other = m.groups()
            if receiver.split(".")[-1] not in {"log", "_log", "node_log", "_bus_log",
                                               "_handler_log", "logger"}:
                continue
            if receiver in LIMITED or receiver in limited_here:
                continue
            if event not in LOCAL_EVENTS:
                line = text.count("\n", 0, m.start()) + 1
                plain.append(f"{path.relative_to(_PACKAGE)}:{line} {receiver} {event or other}")
        for name in ("self.log", "self._log"):
            for a in _re.finditer(_re.escape(name) + r" = (.*)", text):
                assert a.group(1).startswith("LimitedLogger("), \
                    f"{path.name}: {name} = {a.group(1)} is not a LimitedLogger"
    assert not plain, "log calls without a rate limit: " + "; ".join(plain)


def test_library_lines_through_stdlib_logging_are_limited_too():
    """asyncio prints a traceback per failed accept when descriptors run out; a
    remote opener must not turn that into a line per connection."""
    import io
    import logging

    from sporenet.logs import configure_logging
    buf = io.StringIO()
    try:
        configure_logging("info", "json", stream=buf)
        lib = logging.getLogger("asyncio")
        for _ in range(1000):
            lib.error("socket.accept() out of system resource", exc_info=OSError(24, "EMFILE"))
        lib.warning("another template")
        text = buf.getvalue()
        assert text.count("socket.accept() out of system resource") == 5   # the burst
        assert "another template" in text                                  # its own bucket
    finally:
        configure_logging("warning", "console")
