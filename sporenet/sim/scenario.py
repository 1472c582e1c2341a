"""Scenarios: build a simulated network, run it, report what the protocols measured.

``run_probe_scenario`` checks link probing at scale: every node runs the real
LinkTable and Prober over a random topology; the report compares each link's
measured smoothed RTT (at both ends) with the model's round-trip latency, and
carries a trace whose bytes are identical for identical seeds.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, dataclass

from sporenet.protocols.identity import Identity

from .clock import VirtualClock
from .network import Edge, NetworkModel, random_topology
from .node import SimNode


@dataclass(frozen=True, slots=True)
class LinkReport:
    a: int
    b: int
    model_rtt: float  # seconds, without jitter
    srtt_ab: float | None  # a's smoothed RTT to b, seconds; None if never measured
    srtt_ba: float | None

    @property
    def rel_error(self) -> float:
        """The worse end's relative error; infinite if an end has no measurement."""
        if self.srtt_ab is None or self.srtt_ba is None:
            return float("inf")
        return max(abs(s - self.model_rtt) for s in (self.srtt_ab, self.srtt_ba)) / self.model_rtt


@dataclass(frozen=True, slots=True)
class ProbeReport:
    n: int
    seed: int
    duration: float
    links: tuple[LinkReport, ...]
    links_up: int  # links authenticated at both ends at the end of the run
    frames_sent: int
    frames_dropped: int
    bytes_sent: int
    events: int
    trace: tuple[str, ...]

    @property
    def max_rel_error(self) -> float:
        return max((link.rel_error for link in self.links), default=0.0)

    def trace_bytes(self) -> bytes:
        return "\n".join(self.trace).encode("utf-8")

    def summary(self) -> dict[str, object]:
        out = {k: v for k, v in asdict(self).items() if k not in ("links", "trace")}
        out.update(links=len(self.links), max_rel_error=self.max_rel_error,
                   control_bytes_per_node_per_s=self.bytes_sent / max(self.n, 1) / self.duration)
        return out


@dataclass(slots=True)
class SimNetwork:
    clock: VirtualClock
    network: NetworkModel
    nodes: list[SimNode]
    edges: list[Edge]
    trace: list[str]


def build_network(n: int, seed: int, *, avg_degree: float = 4.0, interval: float = 1.0,
                  jitter: float = 0.02, loss: float = 0.0, start_spread: float = 1.0) -> SimNetwork:
    """Nodes, links and dials scheduled in ``[0, start_spread)``; nothing run yet."""
    rng = random.Random(seed)
    clock, trace = VirtualClock(), []
    network = NetworkModel(clock, random.Random(rng.getrandbits(64)))
    nodes = [SimNode(i, Identity(rng.randbytes(32)), clock, network,
                     random.Random(rng.getrandbits(64)), interval=interval, trace=trace)
             for i in range(n)]
    edges = random_topology(n, avg_degree, rng)
    for a, b, lat_ab, lat_ba in edges:
        network.add_link(a, b, lat_ab, lat_ba, loss=loss, jitter=jitter)
        clock.call_at(rng.uniform(0.0, start_spread), _dialer(nodes, network, a, b))
    return SimNetwork(clock, network, nodes, edges, trace)


def _dialer(nodes: list[SimNode], network: NetworkModel, a: int, b: int):
    def dial() -> None:
        # b accepts when a's connection reaches it; scheduled before a's Hello is,
        # so at equal times the accept runs first (the clock orders by sequence).
        link = network.link(a, b)
        assert link is not None
        network.clock.call_later(link.latency, lambda: nodes[b].open(a, outbound=False))
        nodes[a].open(b, outbound=True)
    return dial


def run_probe_scenario(n: int = 200, seed: int = 1, duration: float = 30.0, *,
                       avg_degree: float = 4.0, interval: float = 1.0, jitter: float = 0.02,
                       loss: float = 0.0) -> ProbeReport:
    sim = build_network(n, seed, avg_degree=avg_degree, interval=interval, jitter=jitter, loss=loss)
    sim.clock.run_until(duration)
    return report(sim, seed, duration)


def report(sim: SimNetwork, seed: int, duration: float) -> ProbeReport:
    links, up = [], 0
    for a, b, _, _ in sim.edges:
        na, nb = sim.nodes[a], sim.nodes[b]
        sa, sb = na.prober.stats(nb.identity.node_id), nb.prober.stats(na.identity.node_id)
        up += sa is not None and sb is not None
        links.append(LinkReport(a, b, sim.network.round_trip(a, b),
                                sa.srtt if sa else None, sb.srtt if sb else None))
    st = sim.network.stats
    return ProbeReport(len(sim.nodes), seed, duration, tuple(links), up, st.frames_sent,
                       st.frames_dropped, st.bytes_sent, sim.clock.events_run, tuple(sim.trace))


def main(argv: list[str] | None = None) -> int:
    """``python -m sporenet.sim.scenario [n] [seed] [duration]``: print a JSON summary."""
    args = (argv if argv is not None else sys.argv[1:]) + [None] * 3
    n, seed, duration = int(args[0] or 200), int(args[1] or 1), float(args[2] or 30.0)
    print(json.dumps(run_probe_scenario(n, seed, duration).summary(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
