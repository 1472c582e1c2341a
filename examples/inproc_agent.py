"""An in-process custom agent: counts peers and link measurements, publishes a summary.

Run it: ``python examples/inproc_agent.py`` starts a node bundle with this agent in
a temporary run dir, plays the link and prober agents by publishing a few
notices, prints what the counter published, and stops.

In a node config it is listed as (``examples/node.toml``)::

    [[agents]]
    name = "peer-counter"
    class = "inproc_agent:PeerCounter"     # module must be importable (PYTHONPATH)
    options = { summary_every = 5.0 }

and a real node runs it with
``PYTHONPATH=examples sporenet up --config examples/node.toml`` (examples/README.md,
"Against a real node").

The split is the project's: ``CountingProtocol`` is sans-IO (events and ``now``
in, actions out; tested without threads), ``PeerCounter`` is the thin agent.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from sporenet.agents.base import ProtocolAgent
from sporenet.agents.bundle import AgentSpec, Bundle
from sporenet.protocols.base import Action, Publish
from sporenet.protocols.notices import LinkMeasured, Notice, PeerDown, PeerUp


@dataclass(frozen=True, slots=True)
class PeerCount(Notice):
    """What the counter knows; published on every change and every ``summary_every`` s."""

    TOPIC: ClassVar[str] = "example.peer_count"
    peers_up: int
    measurements: int
    last_rtt_ms: float
    reason: str  # "change" or "summary"


class CountingProtocol:
    """Sans-IO. Driven by ``handle(notice, now)`` and ``on_timer(now)``."""

    def __init__(self, summary_every: float) -> None:
        self.summary_every = summary_every
        self.up: set[bytes] = set()
        self.measurements = 0
        self.last_rtt_ms = 0.0
        self._due: float | None = None

    def handle(self, event: Any, now: float) -> list[Action]:
        match event:
            case PeerUp(node_id=nid):
                self.up.add(nid)
            case PeerDown(node_id=nid):
                self.up.discard(nid)
            case LinkMeasured(rtt_ms=rtt):
                self.measurements += 1
                self.last_rtt_ms = rtt
            case _:
                return []
        if self._due is None:
            self._due = now + self.summary_every
        return [Publish(self._count("change"))]

    def next_deadline(self) -> float | None:
        return self._due

    def on_timer(self, now: float) -> list[Action]:
        self._due = now + self.summary_every
        return [Publish(self._count("summary"))]

    def _count(self, reason: str) -> PeerCount:
        return PeerCount(len(self.up), self.measurements, self.last_rtt_ms, reason)


class PeerCounter(ProtocolAgent):
    """The agent: which topics it hears and which protocol it drives. Nothing else."""

    TOPICS = (PeerUp.TOPIC, PeerDown.TOPIC, LinkMeasured.TOPIC)

    def make_protocol(self) -> CountingProtocol:
        return CountingProtocol(float(self.options.get("summary_every", 5.0)))


def main() -> int:
    run_dir = tempfile.mkdtemp(prefix="sn-example-", dir="/tmp")
    bundle = Bundle([AgentSpec("peer-counter", PeerCounter, options={"summary_every": 0.2})],
                    run_dir).start()
    client = bundle.bus.client()  # plays the link and prober agents
    try:
        client.subscribe(PeerCount.TOPIC)
        client.sync()
        client.publish(PeerUp(b"\x01" * 32, b"\x02" * 32, "fd00::1", "tcp://127.0.0.1:7001", True))
        client.publish(LinkMeasured(b"\x01" * 32, 12.5, 0.4, 0.0, 12.5, 4))
        seen: list[PeerCount] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(c.reason == "summary" for c in seen):
            notice = client.recv(0.5)
            if notice is not None:
                seen.append(notice)
                print(notice, flush=True)
    finally:
        client.close()
        bundle.stop()
    return 0 if any(c.reason == "summary" for c in seen) else 1


if __name__ == "__main__":
    sys.exit(main())
