"""The node bundle: starts the bus and the agents, watches them, stops them.

Driven by ``start()``, ``stop()`` (or ``run_forever()`` in the main thread), and by
its watcher thread, which restarts an agent that crashed, at most
``restart_limit`` times per ``restart_window`` seconds; past that it stops the
whole node and ``wait()``/``run_forever()`` raise ``BundleError`` naming the agent.

Rules:
- Agents start in dependency order (``requires``) and each is ready (bus
  subscriptions live) before the next starts; they stop in reverse order.
- The watcher thread owns the bundle's bus client: ``AgentStateChanged`` notices
  are queued to it and published from there (one owner per socket).
- After ``stop()`` nothing is left: no agent, reader, scheduler or broker thread,
  no socket, no ``bus.json`` or ipc file in the run dir.
"""

from __future__ import annotations

import importlib
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import pykka
import structlog

from sporenet.protocols.notices import AgentStateChanged
from sporenet.transports.bus import Bus, BusClient

from .base import AgentContext, AgentReady
from .clock import Scheduler

log = structlog.get_logger("sporenet.bundle")

WATCH_INTERVAL = 0.1  # s between liveness polls (crashes reported by on_failure come at once)


class BundleError(Exception):
    """The node's agents cannot be started or kept running."""


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent of a node.

    ``factory``: a ``ProtocolAgent`` subclass, a ``"package.module:Class"`` path to
    one, or a callable ``(AgentContext) -> pykka.ActorRef``.
    """

    name: str
    factory: type | str | Callable[[AgentContext], pykka.ActorRef[Any]]
    requires: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def coerce(cls, spec: Any) -> AgentSpec:
        """Ours as is; a config ``[[agents]]`` entry (``class_path``) converted."""
        if isinstance(spec, AgentSpec):
            return spec
        return cls(spec.name, spec.class_path, tuple(spec.requires), spec.options)


def resolve_factory(spec: AgentSpec) -> Callable[[AgentContext], pykka.ActorRef[Any]]:
    target = spec.factory
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            target = importlib.import_module(module)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError, ValueError) as e:
            raise BundleError(f'agent "{spec.name}": cannot load "{spec.factory}": {e}') from None
    if isinstance(target, type) and issubclass(target, pykka.Actor):
        return target.start
    if callable(target):
        return target
    raise BundleError(f'agent "{spec.name}": {spec.factory!r} is not an actor class or factory')


def start_order(specs: Sequence[AgentSpec]) -> list[AgentSpec]:
    """Topological order by ``requires``; ties keep the listed order."""
    by_name: dict[str, AgentSpec] = {}
    for s in specs:
        if s.name in by_name:
            raise BundleError(f'agent name "{s.name}" is used twice')
        by_name[s.name] = s
    for s in specs:
        unknown = [r for r in s.requires if r not in by_name]
        if unknown:
            raise BundleError(f'agent "{s.name}" requires unknown agent(s): {", ".join(unknown)}')
    order: list[AgentSpec] = []
    done: set[str] = set()
    while len(order) < len(specs):
        ready = [s for s in specs if s.name not in done and all(r in done for r in s.requires)]
        if not ready:
            stuck = [s.name for s in specs if s.name not in done]
            raise BundleError(f"agents depend on each other in a cycle: {', '.join(stuck)}")
        order.extend(ready[:1])
        done.add(ready[0].name)
    return order


@dataclass
class _Running:
    spec: AgentSpec
    ref: pykka.ActorRef[Any]
    thread: threading.Thread
    restarts: deque[float] = field(default_factory=deque)


class Bundle:
    """A node's bus plus its agents. See the module docstring for how it is driven."""

    def __init__(self, specs: Sequence[Any], run_dir: str | Path, restart_limit: int = 3,
                 restart_window: float = 60.0, ready_timeout: float = 10.0) -> None:
        self.specs = start_order([AgentSpec.coerce(s) for s in specs])
        self.run_dir = Path(run_dir)
        self.restart_limit, self.restart_window = restart_limit, restart_window
        self.ready_timeout = ready_timeout
        self.bus = Bus(self.run_dir)
        self.scheduler = Scheduler(name="agent-scheduler")
        self._agents: dict[str, _Running] = {}
        self._states: dict[str, str] = {s.name: "stopped" for s in self.specs}
        self._lock = threading.RLock()
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._last_error: dict[str, str] = {}
        self.error: BundleError | None = None

    # -- public ----------------------------------------------------------------------

    def start(self) -> Bundle:
        self.bus.start()
        self.scheduler.start()
        watcher_up = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(watcher_up,), name="bundle-watcher")
        self._watcher.start()
        watcher_up.wait()
        try:
            for spec in self.specs:
                self._start_agent(spec)
        except BaseException:
            self.stop()
            raise
        log.info("bundle_started", agents=[s.name for s in self.specs], run_dir=str(self.run_dir))
        return self

    def stop(self) -> None:
        """Stop agents in reverse order, then the bus. Idempotent; not from an agent."""
        self._stopping.set()
        self._stop_agents()
        if self._watcher is not None:
            self._inbox.put(("exit", None))
            self._watcher.join()
        self._stop_infrastructure()

    def _stop_infrastructure(self) -> None:
        with self._lock:
            self.scheduler.stop()
            self.bus.stop()
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the node stopped (True) or ``timeout``; ``BundleError`` if it failed."""
        stopped = self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return stopped

    def run_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, run until SIGINT/SIGTERM or a fatal failure, stop cleanly. Main thread only.

        The handlers are installed before the agents start, so a signal during
        start-up also stops cleanly; ``on_ready`` runs once every agent is running.
        """
        old = {s: signal.signal(s, lambda *_: self._stopping.set())
               for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self._watcher is None:
                self.start()
            if on_ready is not None:
                on_ready()
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        if self.error is not None:
            raise self.error

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._states)

    def agent(self, name: str) -> pykka.ActorRef[Any]:
        with self._lock:
            return self._agents[name].ref

    # -- agents ----------------------------------------------------------------------

    def _set_state(self, name: str, state: str, detail: str = "") -> None:
        with self._lock:
            self._states[name] = state
        log.info("agent_state", agent=name, state=state, detail=detail)
        self._inbox.put(("publish", AgentStateChanged(name, state, detail)))

    def _start_agent(self, spec: AgentSpec, restarts: deque[float] | None = None) -> None:
        self._set_state(spec.name, "starting")
        with self._lock:
            self._last_error.pop(spec.name, None)
        ctx = AgentContext.for_bus(self.bus, self.scheduler, spec.name, options=spec.options,
                                   on_failure=self._on_agent_failure)
        ref = resolve_factory(spec)(ctx)
        try:
            thread = ref.ask(AgentReady(), timeout=self.ready_timeout)
        except (pykka.ActorDeadError, pykka.Timeout) as e:
            if ref.is_alive():
                ref.stop(block=False)
            detail = self._last_error.get(spec.name) or repr(e)
            self._set_state(spec.name, "failed", f"did not start: {detail}")
            raise BundleError(f'agent "{spec.name}" did not start: {detail}') from None
        with self._lock:
            if not self._stopping.is_set():
                self._agents[spec.name] = _Running(spec, ref, thread,
                                                   restarts if restarts is not None else deque())
                self._set_state(spec.name, "running")
                return
        ref.stop(block=True, timeout=self.ready_timeout)  # stop() began while it was starting
        thread.join(self.ready_timeout)
        self._set_state(spec.name, "stopped")

    def _stop_agents(self) -> None:
        with self._lock:
            running = [self._agents.pop(s.name) for s in reversed(self.specs) if s.name in self._agents]
        for r in running:
            self._set_state(r.spec.name, "stopping")
            if r.ref.is_alive():
                r.ref.stop(block=True, timeout=self.ready_timeout)
            r.thread.join(self.ready_timeout)
            self._set_state(r.spec.name, "stopped")

    def _on_agent_failure(self, name: str, exc: BaseException | None) -> None:
        """Called from the dying actor's thread (``ProtocolAgent.on_failure``)."""
        with self._lock:
            # "TransportError: cannot listen on ...": the message an operator can act on
            self._last_error[name] = repr(exc) if exc is None else f"{type(exc).__name__}: {exc}"
        self._inbox.put(("failed", (name, repr(exc))))

    # -- the watcher thread --------------------------------------------------------------

    def _watch(self, up: threading.Event) -> None:
        client = BusClient(self.bus.endpoints("inproc"), context=self.bus.context)
        try:
            client.sync()
            up.set()
            while True:
                try:
                    kind, arg = self._inbox.get(timeout=WATCH_INTERVAL)
                except queue.Empty:
                    kind, arg = "poll", None
                if kind == "publish":
                    client.publish(arg)
                elif kind == "exit":
                    self._drain(client)
                    return
                elif self._check_agents(dict([arg]) if kind == "failed" else {}):
                    break  # fatal: this thread stops the node
            self._stop_agents()
            self._drain(client)
        finally:
            up.set()
            client.close()
        self._stop_infrastructure()

    def _drain(self, client: BusClient) -> None:
        while True:
            try:
                kind, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "publish":
                client.publish(arg)

    def _check_agents(self, errors: dict[str, str]) -> bool:
        """Restart dead agents; True if the node must stop (restart limit hit)."""
        with self._lock:
            if self._stopping.is_set():
                return False
            dead = [r for r in self._agents.values() if not r.ref.is_alive()]
        for r in dead:
            if not self._restart(r, errors.get(r.spec.name) or self._last_error.get(r.spec.name, "actor died")):
                return True
        return False

    def _restart(self, r: _Running, detail: str) -> bool:
        name, now = r.spec.name, time.monotonic()
        r.thread.join(self.ready_timeout)
        while r.restarts and r.restarts[0] < now - self.restart_window:
            r.restarts.popleft()
        if len(r.restarts) >= self.restart_limit:
            with self._lock:
                self._agents.pop(name, None)
            self._set_state(name, "failed", detail)
            self.error = BundleError(
                f'agent "{name}" crashed {len(r.restarts) + 1} times within '
                f"{self.restart_window:g} s (restart limit {self.restart_limit}); "
                f"node stopped. Last error: {detail}")
            log.error("bundle_failed", agent=name, error=detail)
            self._stopping.set()
            return False
        r.restarts.append(now)
        self._set_state(name, "restarting", detail)
        with self._lock:
            self._agents.pop(name, None)
        try:
            self._start_agent(r.spec, r.restarts)
        except BundleError as e:
            self.error = e
            self._stopping.set()
            return False
        return True
