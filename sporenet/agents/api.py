"""The api agent: keeps a snapshot of what the bus says and serves it over HTTP.

It holds no protocol state of its own: peers, link measurements, listen
endpoints and agent states all arrive as notices. The HTTP server runs in its own
thread (``transports.http_api``) and reads the snapshot under a lock.
Options: ``identity`` (an ``Identity``), ``api`` ("HOST:PORT"), ``name``,
``agent_states`` (a callable returning {agent: state}, from the bundle).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sporenet import __version__
from sporenet.config import parse_host_port
from sporenet.protocols.notices import (AgentStateChanged, LinkCounters, LinkListening,
                                        LinkMeasured, PeerDown, PeerUp)
from sporenet.transports.http_api import ApiError, ApiServer

from .base import ProtocolAgent


class GetApiAddress:
    """``ask`` it: the bound "HOST:PORT" of the HTTP API."""


class ApiAgent(ProtocolAgent):
    TOPICS = ("link.peer_", "link.listening", "link.counters", "prober.link_measured",
              "node.agent_state")

    def on_ready(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._peers: dict[bytes, dict[str, Any]] = {}
        self._listen: tuple[str, ...] = ()
        self._counters: dict = {}
        self._states: dict[str, str] = {}
        host, port = parse_host_port(self.options.get("api", "127.0.0.1:0"))
        self._server = ApiServer(host, port, {"GET /v1/status": self.get_status,
                                              "GET /v1/peers": self.get_peers,
                                              "GET /v1/routes": self.get_routes,
                                              "GET /v1/explain": self.get_explain})
        for key, handler in self.options.get("extra_routes", {}).items():
            self._server.add_route(key, handler)
        self._server.start()
        self.log.info("api_listening", address=self._server.address)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GetApiAddress):
            return self._server.address
        return super().on_receive(message)

    def on_bus(self, notice: Any) -> None:
        with self._lock:
            match notice:
                case PeerUp(node_id=nid):
                    old = self._peers.get(nid, {})
                    self._peers[nid] = {"up": notice, "since": old.get("since", time.monotonic()),
                                        "measured": old.get("measured")}
                case PeerDown(node_id=nid):
                    self._peers.pop(nid, None)
                case LinkMeasured(node_id=nid) if nid in self._peers:
                    self._peers[nid]["measured"] = notice
                case LinkListening(endpoints=eps):
                    self._listen = tuple(eps)
                case LinkCounters(counters=c):
                    self._counters = dict(c)
                case AgentStateChanged(agent=a, state=s):
                    self._states[a] = s

    # -- HTTP handlers (server thread) ---------------------------------------------

    def get_status(self) -> dict:
        identity = self.options["identity"]
        states_fn = self.options.get("agent_states")
        with self._lock:
            agents = dict(self._states)
            if states_fn is not None:
                agents.update(states_fn())
            return {"node_id": identity.node_id.hex(), "address": str(identity.address),
                    "name": self.options.get("name", ""),
                    "region": self.options.get("region", ""), "version": __version__,
                    "uptime_s": round(time.monotonic() - self._started, 3),
                    "agents": agents, "listen": list(self._listen), "peers": len(self._peers),
                    "counters": dict(self._counters), "contract": self._enforcement()}

    def _enforcement(self) -> dict | None:
        """The contract in force and its enforcement points (None: an open network)."""
        snapshot = self.options.get("enforcement")
        return None if snapshot is None else snapshot()

    def get_peers(self) -> dict:
        now = time.monotonic()
        with self._lock:
            rows = [_peer_row(p, now) for p in self._peers.values()]
        rows.sort(key=lambda r: r["node_id"])
        return {"peers": rows}

    def get_routes(self) -> dict:
        routes_fn = self.options.get("routes")
        if routes_fn is None:
            return {"routes": []}
        return routes_fn()

    def get_explain(self, destination: str = "") -> dict:
        explain_fn = self.options.get("explain")
        if explain_fn is None:
            raise ApiError(404, "this node has no router")
        return explain_fn(destination)

    def on_stop(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.stop()
        super().on_stop()


def _peer_row(p: dict[str, Any], now: float) -> dict[str, Any]:
    up: PeerUp = p["up"]
    m: LinkMeasured | None = p["measured"]
    return {"node_id": up.node_id.hex(), "address": up.address, "endpoint": up.endpoint,
            "outbound": up.outbound, "name": up.name,
            "rtt_ms": None if m is None else round(m.rtt_ms, 3),
            "jitter_ms": None if m is None else round(m.jitter_ms, 3),
            "loss": None if m is None else round(m.loss, 4),
            "cost": None if m is None else round(m.cost, 3),
            "samples": 0 if m is None else m.samples,
            "since_s": round(now - p["since"], 3)}
