"""The router agent with a real actor and a real bus: the snapshot it hands the overlay."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from sporenet.agents.base import AgentContext, AgentReady
from sporenet.agents.clock import Scheduler
from sporenet.agents.router import GetRoutes, RouterAgent
from sporenet.protocols import wire
from sporenet.protocols.identity import Identity
from sporenet.protocols.notices import LinkFrameIn, LinkMeasured, PeerUp
from sporenet.protocols.routing.messages import RouteUpdate, route_transcript
from sporenet.protocols.routing.table import RoutesChanged
from sporenet.transports.bus import Bus

DEADLINE = 10.0
ME, A, O = (Identity(bytes([i]) * 32) for i in (1, 2, 3))


class SlowHolder:
    """A holder whose swap takes 0.3 s, as a preempted router thread's would: whoever
    reads it on hearing RoutesChanged must already find the new table."""

    def __init__(self) -> None:
        self._value = None
        self.swaps = 0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, fib) -> None:
        if fib is not self._value:
            time.sleep(0.3)
            self.swaps += 1
        self._value = fib


@pytest.fixture
def bus():
    run_dir = Path(tempfile.mkdtemp(prefix="sn-router-", dir="/tmp"))
    bus = Bus(run_dir).start()
    scheduler = Scheduler().start()
    yield bus, scheduler
    scheduler.stop()
    bus.stop()
    shutil.rmtree(run_dir, ignore_errors=True)


def test_routes_changed_is_heard_only_after_the_new_table_is_in_the_holder(bus):
    the_bus, scheduler = bus
    holder = SlowHolder()
    ref = RouterAgent.start(AgentContext.for_bus(the_bus, scheduler, "router",
                                                 options={"identity": ME, "fib_holder": holder}))
    client = the_bus.client()
    try:
        ref.ask(AgentReady(), timeout=DEADLINE)
        client.subscribe(RoutesChanged.TOPIC)
        client.sync()
        client.publish(PeerUp(A.node_id, A.public_key, "", "tcp://127.0.0.1:1", True))
        client.publish(LinkMeasured(A.node_id, 1.0, 0.1, 0.0, 1.0, 5))   # routes need a cost
        sig = O.sign(route_transcript(O.public_key, 7, ""))
        frame = wire.encode_frame(RouteUpdate(O.public_key, 7, 5, "", 0, sig))
        end = time.monotonic() + DEADLINE
        seen = []
        while time.monotonic() < end:
            # A's update again until its route is in: PeerUp and the frame may race
            client.publish(LinkFrameIn(A.node_id, frame, time.monotonic()))
            n = client.recv(0.5)
            if isinstance(n, RoutesChanged) and O.node_id in n.added:
                fib = holder.value   # read at once, as the overlay agent does
                assert fib is not None and fib.version >= n.version, (fib, n)
                assert dict(fib).get(O.node_id) == A.node_id
                return
            seen.append(n)
        raise AssertionError(f"no RoutesChanged adding O within {DEADLINE} s; saw {seen}; "
                             f"router {ref.ask(GetRoutes(), timeout=DEADLINE)}")
    finally:
        client.close()
        ref.stop()
