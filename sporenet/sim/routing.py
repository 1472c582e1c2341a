"""Routing scenarios: the real LinkTable + Prober + Router on a simulated topology.

Wiring (DESIGN.md §5): build a ``Topology`` (line, ring, grid, geographic), ``apply_to``
a ``NetworkModel``, one ``RoutingSimNode`` per node, dial every link in the first
second, play churn and flap schedules through a ``FailureState``, and every
``sample_every`` seconds compare every FIB with ``shortest_paths`` over the links
that are up at that moment. ``RoutingReport.from_samples`` turns the samples into
numbers and plots.

``RoutingSimNode`` extends ``SimNode``'s executor with the router:
PeerUp -> NeighbourUp, PeerDown -> NeighbourDown, LinkMeasured -> LinkCostChanged(cost),
DeliverFrame of a routing frame (0x10-0x12) -> FrameFromNeighbour,
SendToNeighbour -> ``LinkTable.send_to``. It counts the bytes it puts on the wire
(all control traffic: handshakes, probes, routing), and routing bytes separately.

Timers are shortened for speed (probe interval 1 s, so a dead link is declared after
4 s; router update interval 2 s, hold time 7 s); the values used go into the
report's ``extra``. After a link or node comes back, a redial pass (every
``redial_every`` s) reopens every usable link that neither end has a connection on.

Determinism: every random draw comes from ``random.Random(seed)`` in a fixed order
and the clock orders events by (time, sequence), so a seed gives one report.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterable

import numpy as np

from sporenet.protocols import wire
from sporenet.protocols.base import Action
from sporenet.protocols.identity import Identity
from sporenet.protocols.link.table import DeliverFrame, SendFrame
from sporenet.protocols.notices import LinkMeasured, PeerDown, PeerUp
from sporenet.protocols.routing.table import (FrameFromNeighbour, LinkCostChanged, NeighbourDown,
                                            NeighbourUp, SendToNeighbour)
from sporenet.protocols.routing.router import Router, verify as verify_signature
from sporenet.protocols.routing.messages import ROUTING_TYPES, RouteUpdate

from .clock import VirtualClock
from .fibmatrix import ChainResult, FibCapture, LinkLookup, follow
from .metrics import RoutingSample, ShortestPaths, _directed, shortest_paths
from .network import NetworkModel
from .node import SimNode
from .report import RoutingReport
from .topology import (FailureState, Topology, TopologyEvent, churn_schedule, flap_schedule,
                       geographic, grid, line, ring, schedule_events)

TOPOLOGIES = ("line", "ring", "grid", "geo")


class RoutingSimNode(SimNode):
    """A ``SimNode`` that also runs a ``Router``; see the module docstring."""

    def __init__(self, index: int, identity: Identity, clock: VirtualClock, network: NetworkModel,
                 rng: random.Random, *, interval: float = 1.0, update_interval: float = 2.0,
                 hold_time: float | None = None, region: str = "",
                 verify: Callable[[bytes, bytes, bytes], bool] | None = None,
                 shared: dict[bytes, bytes] | None = None) -> None:
        super().__init__(index, identity, clock, network, rng, interval=interval)
        self._shared = shared
        extra = {} if verify is None else {"verify": verify}
        self.router = Router(identity, rng=rng, now=clock.now, region=region,
                             update_interval=update_interval, hold_time=hold_time, **extra)
        self.bytes_sent = 0
        self.routing_bytes_sent = 0
        self.down_at: dict[bytes, float] = {}  # peer node id -> when its link last went down
        # The router sends one update object to every neighbour: encode it once.
        self._last_msg: object = None
        self._last_data = b""

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self.clock.now
        actions: list[Action] = []
        for proto in (self.link, self.prober, self.router):
            deadline = proto.next_deadline()
            if deadline is not None and deadline <= now:
                actions += proto.on_timer(now)
        self._run(actions)

    def _execute(self, actions: list[Action]) -> None:
        # Exact type tests, most frequent first: this runs for every frame in the sim,
        # and a ``match`` on class patterns costs several isinstance calls per action.
        now = self.clock.now
        for act in actions:
            kind = type(act)
            if kind is SendFrame:
                msg = act.msg
                if msg is self._last_msg:
                    data = self._last_data
                else:
                    data = self._last_data = wire.encode_frame(msg)
                    self._last_msg = msg
                self.bytes_sent += len(data)
                if isinstance(msg, ROUTING_TYPES):
                    self.routing_bytes_sent += len(data)
                self.network.deliver(self.index, act.conn, data)
            elif kind is SendToNeighbour:
                self._execute(self.link.send_to(act.node_id, act.msg))
            elif kind is DeliverFrame and isinstance(act.msg, ROUTING_TYPES):
                if type(act.msg) is RouteUpdate and self._shared is not None:
                    self._share(act.msg)
                self._execute(self.router.handle(FrameFromNeighbour(act.node_id, act.msg), now))
            else:
                super()._execute([act])

    def _share(self, msg: RouteUpdate) -> None:
        """Point a freshly decoded update's key and signature at one shared copy.

        Each router keeps the signature of every route it holds (N x degree of them,
        ~100 bytes each): at 1,000+ nodes those copies of the same N signatures are a
        third of the sim's memory. Only the object identity changes (equal bytes), and
        the message was decoded for this node alone, so nothing else sees it.
        """
        shared = self._shared
        assert shared is not None
        for name in ("signature", "origin_pub"):
            value = getattr(msg, name)
            object.__setattr__(msg, name, shared.setdefault(value, value))

    def _publish(self, notice: object, now: float) -> None:
        super()._publish(notice, now)
        match notice:
            case PeerUp(node_id=nid, public_key=pub):
                self._execute(self.router.handle(NeighbourUp(nid, pub), now))
            case PeerDown(node_id=nid):
                self.down_at[nid] = now
                self._execute(self.router.handle(NeighbourDown(nid), now))
            case LinkMeasured(node_id=nid, cost=cost):
                self._execute(self.router.handle(LinkCostChanged(nid, cost), now))

    def _reschedule(self) -> None:
        deadline = self.router.next_deadline()
        for d in (self.link.next_deadline(), self.prober.next_deadline()):
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None
        if deadline is not None:
            self._timer = self.clock.call_at(max(deadline, self.clock.now), self._on_timer)

    def has_conn(self, peer: int) -> bool:
        return peer in self.link._conns  # noqa: SLF001 - the sim's view of its own node


def make_topology(name: str, n: int, rng: random.Random, *, avg_degree: float = 4.0) -> Topology:
    """``line``/``ring``/``grid``/``geo`` (alias ``geographic``) with about ``n`` nodes
    (a grid is ``w x (n // w)`` with ``w = round(sqrt(n))``)."""
    match name:
        case "line":
            return line(n)
        case "ring":
            return ring(n)
        case "grid":
            w = max(1, round(math.sqrt(n)))
            return grid(w, max(1, n // w))
        case "geo" | "geographic":
            return geographic(n, avg_degree, rng)
    raise ValueError(f"unknown topology {name!r}; one of {', '.join(TOPOLOGIES)}")


class RoutingSim:
    """A built network: its clock, model, nodes and failure state, and views of the FIBs.

    ``truth()``/``links()`` are cached per failure state (nodes and links down), so a
    long run with rare failures computes Dijkstra once per change, not per sample.
    """

    def __init__(self, topology: Topology, clock: VirtualClock, network: NetworkModel,
                 nodes: list[RoutingSimNode], failures: FailureState,
                 events: list[TopologyEvent]) -> None:
        self.topology, self.clock, self.network = topology, clock, network
        self.nodes, self.failures, self.events = nodes, failures, events
        self.capture = FibCapture([node.identity.node_id for node in nodes])
        self._key: tuple | None = None
        self._truth: ShortestPaths | None = None
        self._links: LinkLookup | None = None

    def _refresh(self) -> None:
        key = (frozenset(self.failures.down_nodes), frozenset(self.failures.down_links))
        if key != self._key:
            self._key = key
            self._truth = shortest_paths(self.topology, down_nodes=key[0], down_links=key[1])
            self._links = LinkLookup(self.topology.n, _directed(self.topology, key[0], key[1]))

    def truth(self) -> ShortestPaths:
        self._refresh()
        assert self._truth is not None
        return self._truth

    def links(self) -> LinkLookup:
        self._refresh()
        assert self._links is not None
        return self._links

    def alive(self) -> list[int]:
        down = self.failures.down_nodes
        return [i for i in range(self.topology.n) if i not in down]

    def nh(self) -> np.ndarray:
        """Every FIB now, as the next-hop matrix of ``fibmatrix``."""
        return self.capture.matrix(node.router.fib() for node in self.nodes)

    def follow(self, *, hop_flag: np.ndarray | None = None, dsts=None) -> ChainResult:
        return follow(self.nh(), self.links(), down=self.failures.down_nodes,
                      hop_flag=hop_flag, dsts=dsts)

    def sample(self) -> RoutingSample:
        """Reachability, stretch and loops over every live (src, dst) pair with a true path."""
        res = self.follow()
        best = self.truth().matrix().T  # [src, dst]
        alive = np.zeros(self.topology.n, bool)
        alive[self.alive()] = True
        pairs = alive[:, None] & alive[None, :] & np.isfinite(best)
        np.fill_diagonal(pairs, False)
        ok = pairs & res.reached
        with np.errstate(divide="ignore", invalid="ignore"):
            st = np.where(best[ok] > 0, res.latency[ok] / np.where(best[ok] > 0, best[ok], 1), 1.0)
        return RoutingSample(self.clock.now, int(pairs.sum()), int(ok.sum()), len(res.loops),
                             st.tolist())

    def apply(self, event: TopologyEvent) -> None:
        """A failure or repair now; a repaired link or node is dialled again at once."""
        self.failures.apply(event)
        if event.kind == "link_up":
            self.dial(event.a, event.b)
        elif event.kind == "node_up":
            for l in self.topology.links:
                if event.a in (l.a, l.b):
                    self.dial(l.a, l.b)

    def dial(self, a: int, b: int) -> None:
        """Open the link a-b if it is usable and neither end has a connection on it."""
        if not self.failures.is_cut(a, b) and not self.nodes[a].has_conn(b) \
                and not self.nodes[b].has_conn(a):
            _dial(self.nodes, self.network, a, b)

    def schedule_failures(self, rng: random.Random, *, churn: float, flaps: float, start: float,
                          window: float) -> list[TopologyEvent]:
        """Node churn and link flaps in ``[start, start + window)``, applied on the clock."""
        events: list[TopologyEvent] = []
        if churn > 0 and window > 0:
            events += churn_schedule(self.topology, churn, window, rng, start=start)
        if flaps > 0 and window > 0:
            events += flap_schedule(self.topology, flaps, window, rng, start=start)
        events = [e for _, _, e in sorted((e.at, i, e) for i, e in enumerate(events))]
        schedule_events(self.clock, events, self.apply)
        self.events += events
        return events

    def redial_every(self, every: float, start: float) -> None:
        """Dial every usable link with no connection at either end, every ``every`` s:
        a dial into a node that is down, or whose handshake frames were lost, times
        out; it is tried again until the link is up."""
        def redial() -> None:
            for l in self.topology.links:
                self.dial(l.a, l.b)
            self.clock.call_later(every, redial)
        self.clock.call_at(start, redial)

    def bytes_sent(self) -> tuple[np.ndarray, np.ndarray]:
        """(all control bytes, routing bytes) each node has sent so far."""
        return (np.array([x.bytes_sent for x in self.nodes], dtype=np.int64),
                np.array([x.routing_bytes_sent for x in self.nodes], dtype=np.int64))


def shared_verifier() -> Callable[[bytes, bytes, bytes], bool]:
    """One Ed25519 check per distinct signed announcement for the whole network.

    Every node verifies every origin's announcement: N^2 checks of ~N distinct
    signatures. The answer depends only on (key, message, signature), so one memo
    shared by all the sim's routers gives the same results at a fraction of the cost.
    """
    memo: dict[tuple[bytes, bytes, bytes], bool] = {}

    def check(public_key: bytes, message: bytes, signature: bytes) -> bool:
        key = (public_key, message, signature)
        ok = memo.get(key)
        if ok is None:
            ok = memo[key] = verify_signature(public_key, message, signature)
        return ok

    return check


def build_routing_sim(topology: Topology, rng: random.Random, *, probe_interval: float = 1.0,
                      update_interval: float = 2.0, start_spread: float = 1.0,
                      churn: float = 0.0, flaps: float = 0.0, duration: float = 60.0,
                      failures_from: float = 0.0, redial_every: float = 2.0,
                      regions: bool = False, late: Iterable[int] = ()) -> RoutingSim:
    """``regions``: each router gets its place's region tag. ``late``: nodes that start
    down (their links silent) until a ``node_up`` event, e.g. a node joining later."""
    clock = VirtualClock()
    network = NetworkModel(clock, random.Random(rng.getrandbits(64)))
    topology.apply_to(network)
    verify = shared_verifier()
    shared: dict[bytes, bytes] = {}
    nodes = [RoutingSimNode(i, Identity(rng.randbytes(32)), clock, network,
                            random.Random(rng.getrandbits(64)), interval=probe_interval,
                            update_interval=update_interval, verify=verify, shared=shared,
                            region=(topology.places[i].region or "") if regions else "")
             for i in range(topology.n)]
    state = FailureState(topology, network)
    for node in sorted(set(late)):
        state.apply(TopologyEvent(0.0, "node_down", node))
    for l in topology.links:
        if not state.is_cut(l.a, l.b):
            clock.call_at(rng.uniform(0.0, start_spread),
                          lambda a=l.a, b=l.b: _dial(nodes, network, a, b))
    sim = RoutingSim(topology, clock, network, nodes, state, [])
    sim.schedule_failures(rng, churn=churn, flaps=flaps, start=failures_from,
                          window=max(duration - failures_from, 0.0))
    sim.redial_every(redial_every, start_spread + redial_every)
    return sim


def _dial(nodes: list[RoutingSimNode], network: NetworkModel, a: int, b: int) -> None:
    link = network.link(a, b)
    assert link is not None

    def accept() -> None:
        if not nodes[b].has_conn(a):
            nodes[b].open(a, outbound=False)

    network.clock.call_later(link.latency, accept)
    nodes[a].open(b, outbound=True)


def sample(sim: RoutingSim, truth: ShortestPaths | None = None) -> RoutingSample:
    """One ``RoutingSample`` of every live node's FIB (``truth`` is the sim's own)."""
    return sim.sample()


def run_routing_scenario(topology_name: str, n: int, seed: int, duration: float,
                         sample_every: float = 1.0, churn: float = 0.0, flaps: float = 0.0, *,
                         avg_degree: float = 4.0, probe_interval: float = 1.0,
                         update_interval: float = 2.0, failures_from: float | None = None,
                         ) -> RoutingReport:
    """Run one scenario and report it. Churn and flaps start at ``failures_from``
    (default: a third of the way in, so convergence from cold start is seen first)."""
    rng = random.Random(seed)
    topology = make_topology(topology_name, n, rng, avg_degree=avg_degree)
    start = duration / 3 if failures_from is None else failures_from
    sim = build_routing_sim(topology, rng, probe_interval=probe_interval,
                            update_interval=update_interval, churn=churn, flaps=flaps,
                            duration=duration, failures_from=start)
    samples = []
    steps = max(1, int(round(duration / sample_every)))
    for k in range(1, steps + 1):
        sim.clock.run_until(min(k * sample_every, duration))
        samples.append(sim.sample())
    failures = [e.at for e in sim.events if e.kind in ("node_down", "link_down")]
    control = sum(node.bytes_sent for node in sim.nodes)
    routing = sum(node.routing_bytes_sent for node in sim.nodes)
    counters: dict[str, int] = {}
    for node in sim.nodes:
        for key_, v in node.router.counters.items():
            counters[key_] = counters.get(key_, 0) + v
    extra = {
        "probe_interval_s": probe_interval,
        "dead_after_s": sim.nodes[0].prober.dead_after if sim.nodes else None,
        "update_interval_s": update_interval,
        "hold_time_s": sim.nodes[0].router.hold_time if sim.nodes else None,
        "sample_every_s": sample_every,
        "links": len(topology.links),
        "avg_degree": topology.avg_degree,
        "churn": churn, "flaps": flaps, "failure_events": len(sim.events),
        "routing_bytes_per_node_per_s": routing / max(topology.n, 1) / duration if duration else 0.0,
        "frames_sent": sim.network.stats.frames_sent,
        "frames_dropped": sim.network.stats.frames_dropped,
        "events_run": sim.clock.events_run,
        "router_counters": counters,
    }
    return RoutingReport.from_samples(topology.name, topology.n, seed, duration, samples,
                                      control_bytes=control, failures=failures, extra=extra)
