"""The agent base with real actors, a real bus and the real clock (waits have deadlines)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pykka
import pytest

from sporenet.agents.base import AgentContext, AgentReady, ProtocolAgent
from sporenet.agents.clock import Scheduler
from sporenet.protocols.base import Action, Publish
from sporenet.protocols.errors import RemoteProtocolError
from sporenet.protocols.notices import Notice, PeerDown, PeerUp
from sporenet.transports.bus import Bus

DEADLINE = 10.0


@dataclass(frozen=True, slots=True)
class Echoed(Notice):
    TOPIC: ClassVar[str] = "test_agent.echoed"
    what: str
    at: float


@dataclass(frozen=True, slots=True)
class Ticked(Notice):
    TOPIC: ClassVar[str] = "test_agent.ticked"
    n: int
    late_ms: float


@dataclass(frozen=True, slots=True)
class Remember(Action):
    what: str


class EchoProtocol:
    """Echoes events as notices; ``"bad"`` is a peer fault, ``"bug"`` a bug; ticks 3 times."""

    def __init__(self, period: float | None) -> None:
        self.period, self.due, self.ticks = period, None, 0

    def handle(self, event: Any, now: float) -> list[Action]:
        if event == "bad":
            raise RemoteProtocolError("peer sent bad")
        if event == "bug":
            raise ZeroDivisionError("a bug")
        if event == "arm":
            self.due = now + self.period
            return []
        what = event if isinstance(event, str) else type(event).__name__
        return [Publish(Echoed(what, now)), Remember(what)]

    def next_deadline(self) -> float | None:
        return self.due

    def on_timer(self, now: float) -> list[Action]:
        self.ticks += 1
        late_ms = (now - self.due) * 1000
        self.due = now + self.period if self.ticks < 3 else None
        return [Publish(Ticked(self.ticks, late_ms))]


class EchoAgent(ProtocolAgent):
    TOPICS = ("link.",)

    def make_protocol(self) -> EchoProtocol:
        self.remembered: list[str] = []
        return EchoProtocol(self.options.get("period", 0.05))

    def dispatch_table(self):
        return {**super().dispatch_table(), Remember: self.do_remember}

    def do_remember(self, action: Remember) -> None:
        self.remembered.append(action.what)

    def remembered_so_far(self) -> list[str]:
        return list(self.remembered)


class Listener(ProtocolAgent):
    """No protocol: overrides on_bus."""

    TOPICS = ("test_agent.echoed",)

    def on_ready(self) -> None:
        self.seen: list[str] = []

    def on_bus(self, notice: Notice) -> None:
        self.seen.append(notice.what)

    def seen_so_far(self) -> list[str]:
        return list(self.seen)


@pytest.fixture
def node():
    run_dir = Path(tempfile.mkdtemp(prefix="sn-agent-", dir="/tmp"))
    bus = Bus(run_dir).start()
    scheduler = Scheduler().start()
    refs: list[pykka.ActorRef] = []

    def start(cls, name="echo", **options):
        ref = cls.start(AgentContext.for_bus(bus, scheduler, name, options=options))
        ref.ask(AgentReady(), timeout=DEADLINE)
        refs.append(ref)
        return ref

    client = bus.client()
    client.subscribe("test_agent.")
    client.sync()
    yield types_ns(bus=bus, start=start, client=client)
    client.close()
    for ref in refs:
        if ref.is_alive():
            ref.stop()
    scheduler.stop()
    bus.stop()
    shutil.rmtree(run_dir, ignore_errors=True)


class types_ns:  # noqa: N801 - a tiny namespace
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def recv_until(client, pred, deadline=DEADLINE):
    end, seen = time.monotonic() + deadline, []
    while time.monotonic() < end:
        n = client.recv(0.1)
        if n is not None:
            seen.append(n)
            if pred(n):
                return n, seen
    raise AssertionError(f"no matching notice within {deadline} s; saw {seen}")


def wait_for(cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)  # polling a condition, not waiting a fixed time
    raise AssertionError("condition not met in time")


def test_bus_notice_and_direct_tell_reach_the_protocol_and_actions_run(node):
    ref = node.start(EchoAgent)
    node.client.publish(PeerDown(b"\x01", "x"))
    n, _ = recv_until(node.client, lambda n: isinstance(n, Echoed))
    assert n.what == "PeerDown" and abs(n.at - time.monotonic()) < DEADLINE
    ref.tell("hello")
    recv_until(node.client, lambda n: isinstance(n, Echoed) and n.what == "hello")
    assert ref.proxy().remembered_so_far().get(timeout=DEADLINE) == ["PeerDown", "hello"]


def test_timer_fires_on_the_real_clock(node):
    ref = node.start(EchoAgent, period=0.05)
    start = time.monotonic()
    ref.tell("arm")
    ticks = [recv_until(node.client, lambda n: isinstance(n, Ticked) and n.n == i)[0]
             for i in (1, 2, 3)]
    assert time.monotonic() - start >= 0.15  # three periods of real time passed
    assert all(t.late_ms >= 0 for t in ticks)
    assert node.client.recv(0.2) is None  # the protocol stopped asking for ticks


def test_protocol_error_is_logged_and_the_agent_goes_on(node):
    ref = node.start(EchoAgent)
    ref.tell("bad")
    ref.tell("after")
    recv_until(node.client, lambda n: isinstance(n, Echoed) and n.what == "after")
    assert ref.is_alive()


def test_a_bug_stops_the_actor_and_its_reader_thread(node):
    ref = node.start(EchoAgent, name="buggy")
    ref.tell("bug")
    wait_for(lambda: not ref.is_alive())
    wait_for(lambda: not any(t.name == "bus-reader-buggy" for t in threading.enumerate()))


def test_agent_without_protocol_overrides_on_bus(node):
    listener = node.start(Listener, name="listener")
    echo = node.start(EchoAgent)
    echo.tell("one")
    echo.tell("two")
    wait_for(lambda: listener.proxy().seen_so_far().get(timeout=DEADLINE) == ["one", "two"])


def test_ready_means_subscribed(node):
    """No sync in the test: the agent's subscription is live once it answered AgentReady."""
    for i in range(5):
        ref = node.start(EchoAgent, name=f"e{i}")
        publisher = node.bus.client()
        publisher.sync()
        publisher.publish(PeerUp(b"\x01", b"\x02", "fd00::1", "tcp://h:1", True))
        publisher.close()
        recv_until(node.client, lambda n: isinstance(n, Echoed) and n.what == "PeerUp")
        ref.stop()
