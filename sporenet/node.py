"""A running node: the config and key turned into a bundle of agents.

``Node(config, identity).run_forever()`` is what ``sporenet up`` does. Built-in
agents: ``link`` (carrier, signed hello, dialer), ``prober`` (RTT, jitter, loss,
cost per link), ``router`` (Babel-style routes over link costs, signed with the config's
``region`` tag) and ``api`` (local HTTP JSON API); custom agents from the config's
``[[agents]]`` come after them. Once every agent runs, the node writes
``<run_dir>/node.json`` with its real endpoints (after port 0), for launchers and
``sporenet bus tap``; the file is removed when the node stops.

Messages ride end-to-end sessions (the overlay agent, the config's ``[sessions]``);
with ``sessions.manager.pq`` on, a node whose ``cryptography`` cannot do ML-KEM-768 refuses to
start (``ValueError`` with ``require_mlkem``'s advice) rather than run classical only.

With a ``contract`` in the config (docs/contracts.md, "Enforcement") the node loads and
verifies it first and refuses to start (``ValueError``) if it is invalid or does not
list this node; then the link, router and overlay agents admit only its members
(``sporenet/agents/contract.py``), and the ``contract`` agent adopts newer versions from the
watched ledger or ``POST /v1/contract``. Without one the network is open.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from sporenet.agents.api import ApiAgent, GetApiAddress
from sporenet.agents.bundle import AgentSpec, Bundle
from sporenet.agents.enforcement import Enforcement
from sporenet.agents.contract import (ApplyContract, ContractAgent, ContractHolder, GetContract,
                                      load_contract)
from sporenet.agents.link import GetLinkInfo, LinkAgent
from sporenet.agents.prober import ProberAgent
from sporenet.agents.overlay import GetResult, OverlayAgent, StartTrace
from sporenet.agents.router import ExplainRoute, FibHolder, GetRoutes, RouterAgent
from sporenet.agents.tun import TunAgent
from sporenet.transports.datapath import DataPlane
from .user_api import UserApi
from sporenet.transports.http_api import ApiError
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.pq import MlkemUnavailable, require_mlkem
from sporenet.protocols.sessions.guard import InitiationScreen

from .config import NodeConfig

log = structlog.get_logger("sporenet.node")
BUILTIN_AGENTS = ("link", "prober", "router", "overlay", "api")
# "contract" runs only with a contract, "tun" only with the TUN on
RESERVED_AGENTS = BUILTIN_AGENTS + ("contract", "tun")
EXPLAIN_TRACE_TIMEOUT = 2.0  # s: explain's path trace gives up after this


class Node:
    def __init__(self, config: NodeConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        if config.sessions.pq:
            try:
                require_mlkem()
            except MlkemUnavailable as e:
                raise ValueError(f"{e} (or set sessions.pq = false in the node config)") from None
        self.contract = ContractHolder()
        if config.contract is not None:
            self.contract.value = load_contract(config.contract.file, config.contract.ledger,
                                                identity.public_key, time.time())
        self.run_dir = Path(config.run_dir or config.run_dir_for(identity.node_id))
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.info_path = self.run_dir / "node.json"
        self.bundle = Bundle(self._specs(), self.run_dir)

    def _specs(self) -> list[Any]:
        c, ident = self.config, self.identity
        fib = FibHolder()
        user = UserApi(lambda: self.bundle.agent("overlay"))
        enforced = c.contract is not None
        # One enforcement point per place, all over the one contract snapshot (the holder)
        points = Enforcement(self.contract, ident.public_key) if enforced else None
        self.enforcement = points
        routes = user.routes()
        screen = InitiationScreen(ident.public_key)  # bad-mac1 msg1s die in the link's I/O thread
        # The data path's shared holders (docs/datapath.md); its IP frames are taken off
        # the link carrier's I/O thread whether or not a TUN runs
        plane = self.plane = DataPlane()
        routes["GET /v1/datapath"] = self._datapath

        def rx_filter(conn: Any, frame: bytes, now: float) -> bool:
            return screen.drop(conn, frame, now) or plane.rx(conn, frame, now)
        if enforced:
            routes.update({"GET /v1/contract": self._get_contract,
                           "POST /v1/contract": self._post_contract})
        specs: list[Any] = [
            AgentSpec("api", ApiAgent, options={
                "identity": ident, "api": c.api, "name": c.name, "region": c.region,
                "agent_states": lambda: self.bundle.states(), "routes": self._routes,
                "explain": self._explain, "extra_routes": routes,
                "enforcement": None if points is None else points.snapshot}),
            AgentSpec("router", RouterAgent, options={"identity": ident, "fib_holder": fib,
                                                      "region": c.region, "plane": plane,
                                                      "admit": points and points.route()}),
            AgentSpec("overlay", OverlayAgent, requires=("router",),
                      options={"identity": ident, "fib_holder": fib, "topics": dict(c.topics),
                               "accept_unknown_topics": c.accept_unknown_topics,
                               "sessions": {"pq": c.sessions.pq,
                                            "pq_required": c.sessions.pq_required},
                               "request_routes": lambda: self.bundle.agent("router").ask(
                                   GetRoutes(), block=False),
                               "reach": points and points.send(),
                               "session_accept": points and points.session(),
                               "allowed": points and self.contract.may_reach,
                               "screen": screen, "plane": plane}),
            AgentSpec("prober", ProberAgent, options={"interval": c.prober.interval,
                                                      "window": c.prober.window,
                                                      "dead_after": c.prober.dead_after}),
            AgentSpec("link", LinkAgent, requires=("prober", "router", "overlay", "api"),
                      options={"identity": ident, "listen": list(c.listen),
                               "peers": list(c.peers), "name": c.name,
                               "admit": points and points.link(),
                               "rx_filter": rx_filter, "plane": plane}),
        ]
        if c.tun:
            specs.append(AgentSpec("tun", TunAgent, requires=("link", "overlay"), options={
                "identity": ident, "plane": plane, "device": c.tun_device, "mtu": c.tun_mtu,
                "overlay": lambda: self.bundle.agent("overlay"),
                "contract": self.contract if enforced else None}))
            if points is not None:
                points.tun(lambda: self._datapath().get("counters", {}))
        if enforced:
            specs.append(AgentSpec("contract", ContractAgent, requires=("link",), options={
                "holder": self.contract, "ledger": c.contract.ledger,
                "public_key": ident.public_key}))
        for custom in c.agents:
            if custom.name in RESERVED_AGENTS:
                raise ValueError(f'agents: "{custom.name}" is a built-in agent name; choose another')
            specs.append(custom)
        return specs

    def _datapath(self) -> dict[str, Any]:
        """``GET /v1/datapath``: the TUN and the data path's counters (drops by reason)."""
        engine = self.plane.engine
        out: dict[str, Any] = {"tun": self.config.tun, "device": None, "counters": {}}
        if engine is not None:
            tun = engine.device
            out.update(device=tun.name, address=str(tun.address), mtu=tun.mtu,
                       offload=tun.offload, counters=engine.counters_snapshot())
        for key, n in list(self.plane.counters.items()):
            out["counters"][key] = out["counters"].get(key, 0) + n
        return out

    def _get_contract(self) -> dict[str, Any]:
        return self.bundle.agent("contract").ask(GetContract(), timeout=5)

    def _post_contract(self, **doc: Any) -> dict[str, Any]:
        """``POST /v1/contract`` with a contract file's JSON: adopt it if it verifies as
        the next version of the one in force."""
        from sporenet.contract_file import from_json
        try:
            new = from_json(doc)
        except Exception as e:  # KeyError, ValueError, LocalProtocolError: a bad document
            raise ApiError(400, f"not a valid contract: {e!r}") from None
        out = self.bundle.agent("contract").ask(ApplyContract(new), timeout=10)
        if "error" in out:
            raise ApiError(400, out["error"])
        return out

    def _routes(self) -> dict[str, Any]:
        """For the API's server thread (not an actor), so asking is allowed."""
        return self.bundle.agent("router").ask(GetRoutes(), timeout=5)

    def _explain(self, destination: str) -> dict[str, Any]:
        """``destination``: a node id (hex, or a unique prefix of one) or an overlay address."""
        known = {r["destination"]: r["address"] for r in self._routes()["routes"]}
        wanted = destination.strip().lower()
        matches = [d for d, addr in known.items()
                   if d.startswith(wanted) or _same_address(addr, wanted)] if wanted else []
        if len(matches) != 1:
            raise ApiError(404 if not matches else 400,
                           f"{destination!r} matches {len(matches)} known destinations; "
                           "give a node id (or a longer prefix of one) or an overlay address")
        out = self.bundle.agent("router").ask(ExplainRoute(bytes.fromhex(matches[0])), timeout=5)
        out["address"] = known[matches[0]]
        if out.get("last_change") is not None:  # the router's clock is time.monotonic
            out["last_change_age_s"] = round(time.monotonic() - out["last_change"], 3)
        out.update(self._trace(known[matches[0]]))
        return out

    def _trace(self, address: str) -> dict[str, Any]:
        """Trace the path to ``address`` (``EXPLAIN_TRACE_TIMEOUT``): ``path`` is the list
        of hops, or None with ``path_error`` saying why."""
        done = threading.Event()
        overlay = self.bundle.agent("overlay")
        started = overlay.ask(StartTrace(address, EXPLAIN_TRACE_TIMEOUT, done), timeout=5)
        if "error" in started:
            return {"path": None, "path_error": started["error"]}
        done.wait(EXPLAIN_TRACE_TIMEOUT + 1.0)
        res = overlay.ask(GetResult("trace", started["id"]), timeout=5)
        if res.get("state") != "ok":
            return {"path": None, "path_error": res.get("reason", res.get("state"))}
        return {"path": res["hops"], "path_error": None, "path_rtt_ms": res["rtt_ms"],
                "path_truncated": res["truncated"]}

    def write_info(self) -> dict[str, Any]:
        link = self.bundle.agent("link").ask(GetLinkInfo(), timeout=10)
        api = self.bundle.agent("api").ask(GetApiAddress(), timeout=10)
        info = {"node_id": self.identity.node_id.hex(), "address": str(self.identity.address),
                "name": self.config.name, "region": self.config.region, "listen": link["listen"],
                "api": api, "pid": os.getpid(), "run_dir": str(self.run_dir)}
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.info_path)
        self._wrote_info = True
        log.info("node_up", node_id=info["node_id"][:8], address=info["address"],
                 listen=info["listen"], api=api)
        return info

    def run_forever(self) -> None:
        self._wrote_info = False
        try:
            self.bundle.run_forever(on_ready=self.write_info)
        finally:
            # Only our own node.json: a node refused at start (its run dir in use) must not
            # delete the file of the node that runs there.
            if self._wrote_info:
                self.info_path.unlink(missing_ok=True)
                log.info("node_stopped")


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.IPv6Address(a) == ipaddress.IPv6Address(b)
    except ValueError:
        return False
