"""The agent base: a pykka actor that feeds a sans-IO protocol from the bus.

A subclass sets ``TOPICS`` (bus topic prefixes it handles), returns its protocol
object from ``make_protocol()`` and extends ``dispatch_table()`` with a method per
action type it executes (``Publish`` is built in). Everything else is here:

    bus notice ──reader thread──▶ tell(_FromBus) ──▶ on_bus() ──▶ protocol.handle(n, now)
    direct tell(msg) ──────────────────────────────▶ on_message() ──▶ protocol.handle(msg, now)
    Scheduler at next_deadline() ──▶ tell(_Tick) ──▶ protocol.on_timer(now)
    returned actions ──▶ dispatch_table()[type(action)](action)

Rules:
- The SUB socket lives in the agent's reader thread, which only decodes and
  ``tell``s; the PUB socket is created, used and closed in the actor thread.
- ``on_start`` returns only once the bus delivered the agent's own sync message
  (``transports.bus`` "slow joiner"): when the bundle calls an agent ready, its
  subscriptions and its publisher are live, and every notice published on the
  bus from then on that matches ``TOPICS`` reaches it.
- ``ProtocolError`` (a peer's fault) is logged and the agent goes on; any other
  exception is a bug: pykka stops the actor and the bundle restarts it.
- Agents hear their own notices when a topic they publish matches ``TOPICS``.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping

import pykka
import structlog
import zmq

from sporenet.protocols.base import Action, Publish, SansIOProtocol
from sporenet.protocols.errors import DecodeError, ProtocolError
from sporenet.protocols.notices import Notice
from sporenet.transports.bus import (
    Bus,
    BusEndpoints,
    BusError,
    BusPublisher,
    BusSubscriber,
)
from sporenet.transports.bus_codec import PRIVATE_PREFIX, decode_notice
from sporenet.transports.log_limit import LimitedLogger

from .clock import MonotonicClock, Scheduler

log = structlog.get_logger("sporenet.agent")
# Junk on the bus can come from any process that reaches the run directory's sockets.
_bus_log = LimitedLogger(log)

SYNC_TIMEOUT = 5.0
READER_POLL = 0.25  # s; the reader re-checks its stop flag at least this often


@dataclass
class AgentContext:
    """What an agent gets from its bundle: its name, options, the bus and the clock."""

    name: str
    endpoints: BusEndpoints
    zmq_context: zmq.Context | None
    scheduler: Scheduler
    clock: MonotonicClock = field(default_factory=MonotonicClock)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    run_dir: Path | None = None
    on_failure: Callable[[str, BaseException | None], None] | None = None

    @classmethod
    def for_bus(cls, bus: Bus, scheduler: Scheduler, name: str, **kw: Any) -> AgentContext:
        """A context on ``bus``'s inproc endpoints (in-process agents)."""
        return cls(name, bus.endpoints("inproc"), bus.context, scheduler, run_dir=bus.run_dir, **kw)


@dataclass(frozen=True, slots=True)
class _FromBus:
    notice: Notice


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class AgentReady:
    """``ask`` it: answered once ``on_start`` finished, with the actor's thread."""


class _BusReader(threading.Thread):
    """Owns the agent's SUB socket: decodes notices and ``tell``s the actor."""

    def __init__(self, ctx: AgentContext, topics: tuple[str, ...], sync_topic: bytes,
                 actor_ref: pykka.ActorRef[Any]) -> None:
        super().__init__(name=f"bus-reader-{ctx.name}")
        self._ctx, self._topics, self._sync_topic, self._ref = ctx, topics, sync_topic, actor_ref
        self.synced = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        sub = BusSubscriber(self._ctx.endpoints, self._ctx.zmq_context)
        try:
            sub.subscribe(*self._topics)
            sub.subscribe(self._sync_topic)  # last: once it is live, so are the others
            while not self.stopping.is_set():
                got = sub.recv_raw(READER_POLL)
                if got is not None and not self._deliver(*got):
                    return
        finally:
            sub.close()

    def _deliver(self, topic: bytes, payload: bytes) -> bool:
        if topic.startswith(PRIVATE_PREFIX):
            if topic == self._sync_topic:
                self.synced.set()
            return True
        try:
            notice = decode_notice(topic, payload)
        except DecodeError as e:  # another process sent junk: skip it
            _bus_log.warning("bus_decode_error", agent=self._ctx.name, topic=topic[:60], error=str(e))
            return True
        try:
            self._ref.tell(_FromBus(notice))
        except pykka.ActorDeadError:
            return False
        return True


class ProtocolAgent(pykka.ThreadingActor):
    """Base of in-process agents. Driven by bus notices, ``tell``s and its timer.

    Subclasses set ``TOPICS``, override ``make_protocol()`` and extend
    ``dispatch_table()``; agents without a protocol override ``on_bus()`` (and
    ``on_message()`` for direct tells) instead.
    """

    TOPICS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.name = ctx.name
        self.options = ctx.options
        self.clock = ctx.clock
        # Limited: most of an agent's lines answer what a peer sent (a bad frame, a
        # refused session, a dead link), so each agent has its own token buckets
        # per event (transports/log_limit.py); its few lifecycle lines fit the burst.
        self.log = LimitedLogger(log.bind(agent=ctx.name))
        self.protocol: SansIOProtocol | None = None
        self._pub: BusPublisher | None = None
        self._reader: _BusReader | None = None
        self._sync_topic = PRIVATE_PREFIX + b"sync." + uuid.uuid4().hex.encode()
        self._dispatch: dict[type, Callable[[Any], None]] = {}
        self._armed: float | None = None

    # -- what subclasses override ------------------------------------------------

    def make_protocol(self) -> SansIOProtocol | None:
        """The sans-IO object this agent drives; None for agents that override on_bus."""
        return None

    def dispatch_table(self) -> dict[type, Callable[[Any], None]]:
        """``{ActionType: handler}``; extend with ``{**super().dispatch_table(), ...}``."""
        return {Publish: self.do_publish}

    def on_bus(self, notice: Notice) -> None:
        """A notice matching ``TOPICS`` arrived on the bus."""
        self.feed(notice)

    def on_message(self, message: Any) -> None:
        """A direct ``tell`` (not from the bus)."""
        self.feed(message)

    def on_ready(self) -> None:
        """Runs in the actor thread once the bus is live and the protocol exists."""

    # -- the machinery -------------------------------------------------------------

    def on_start(self) -> None:
        try:
            self._pub = BusPublisher(self.ctx.endpoints, self.ctx.zmq_context)
            self._reader = _BusReader(self.ctx, self.TOPICS, self._sync_topic, self.actor_ref)
            self._reader.start()
            self._sync()
            self.protocol = self.make_protocol()
            self._dispatch = self.dispatch_table()
            self.on_ready()
            self._rearm()
        except BaseException as e:
            self._teardown()
            if self.ctx.on_failure is not None:
                self.ctx.on_failure(self.name, e)
            raise
        self.log.debug("agent_started", topics=list(self.TOPICS))

    def _sync(self) -> None:
        deadline = self.clock.now() + SYNC_TIMEOUT
        while not self._reader.synced.is_set():
            if self.clock.now() > deadline or not self._reader.is_alive():
                raise BusError(f"agent {self.name}: bus did not answer within {SYNC_TIMEOUT} s")
            self._pub.publish_raw(self._sync_topic, b"")
            self._reader.synced.wait(0.01)

    def on_receive(self, message: Any) -> Any:
        match message:
            case _FromBus(notice=notice):
                self.on_bus(notice)
            case _Tick():
                self._on_tick()
            case AgentReady():
                return threading.current_thread()
            case _:
                self.on_message(message)
        return None

    def feed(self, event: Any) -> None:
        """``protocol.handle(event, now)`` and execute the actions it returns."""
        if self.protocol is None:
            raise NotImplementedError(f"agent {self.name} has no protocol; override on_bus/on_message")
        try:
            self.execute(self.protocol.handle(event, now=self.clock.now()))
        except ProtocolError as e:
            self.log.warning("protocol_error", error=str(e), input=type(event).__name__)
        self._rearm()

    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            handler = next((self._dispatch[t] for t in type(action).__mro__ if t in self._dispatch),
                           None)
            if handler is None:
                raise TypeError(f"agent {self.name}: no handler for action {type(action).__name__}")
            handler(action)

    def do_publish(self, action: Publish) -> None:
        self.publish(action.message)

    def publish(self, notice: Notice) -> None:
        """Put ``notice`` on the bus (actor thread only: the PUB socket lives here)."""
        self._pub.publish(notice)

    def _on_tick(self) -> None:
        self._armed = None
        if self.protocol is None:
            return
        now, due = self.clock.now(), self.protocol.next_deadline()
        if due is not None and now >= due:
            try:
                self.execute(self.protocol.on_timer(now))
            except ProtocolError as e:
                self.log.warning("protocol_error", error=str(e), input="timer")
        self._rearm()

    def _rearm(self) -> None:
        due = None if self.protocol is None else self.protocol.next_deadline()
        if due != self._armed:
            self._armed = due
            self.ctx.scheduler.arm(self.actor_urn, due, self._fire)

    def _fire(self) -> None:  # on the scheduler thread
        try:
            self.actor_ref.tell(_Tick())
        except pykka.ActorDeadError:
            pass

    def on_stop(self) -> None:
        self._teardown()
        self.log.debug("agent_stopped")

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._teardown()
        self.log.error("agent_crashed", error=repr(exc))
        if self.ctx.on_failure is not None:
            self.ctx.on_failure(self.name, exc)

    def _teardown(self) -> None:
        self.ctx.scheduler.arm(self.actor_urn, None, self._fire)
        if self._reader is not None:
            self._reader.stopping.set()
            if self._pub is not None and self._reader.is_alive():
                self._pub.publish_raw(self._sync_topic, b"")  # wakes the reader at once
            self._reader.join()
            self._reader = None
        if self._pub is not None:
            self._pub.close()
            self._pub = None
