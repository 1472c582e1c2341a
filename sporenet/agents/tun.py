"""The tun agent: opens the node's TUN device and runs the data path engine on it.

The agent only starts and stops things and hands snapshots over; packets never pass
through it (docs/datapath.md). On start it opens the TUN (``transports/tun.py``: the
node's address and /64, the overlay route, the MTU, offloads where the kernel has them)
and starts a ``DataPath`` over the node's ``DataPlane``: the router, link and overlay
agents publish their snapshots there, and this agent publishes the contract's
``DataReach`` (on start and on every ``ContractChanged``). The data path's requests
go to the overlay agent as ``tell``s: ``OpenDataSession`` when packets wait for keys,
``ConfirmDataKey`` when a responder's keys are confirmed.

Options: ``identity``, ``plane``, ``overlay`` (a callable returning the overlay agent's
ref, asked each time: the agent may have restarted), ``device`` (TUN name), ``mtu``,
``contract`` (the node's ``ContractHolder``, or None for an open network). The node's
``GET /v1/datapath`` reads the engine through the plane.
"""

from __future__ import annotations

from typing import Any

from sporenet.agents.contract import ContractChanged
from sporenet.protocols.datapath.tables import DataReach, data_reach
from sporenet.transports.datapath import DataPath
from sporenet.transports.tun import DEFAULT_MTU, TunDevice

from .base import ProtocolAgent
from .overlay import ConfirmDataKey, OpenDataSession

DEFAULT_DEVICE = "sporenet0"


class TunAgent(ProtocolAgent):
    TOPICS = (ContractChanged.TOPIC,)

    def on_ready(self) -> None:
        ident, plane = self.options["identity"], self.options["plane"]
        self._tun = TunDevice.open(self.options.get("device") or DEFAULT_DEVICE, ident.address,
                                   mtu=int(self.options.get("mtu") or DEFAULT_MTU))
        overlay = self.options["overlay"]

        def want_session(key: bytes) -> None:  # from the data path's threads
            overlay().tell(OpenDataSession(key))

        def on_confirm(index: int) -> None:
            overlay().tell(ConfirmDataKey(index))

        self._engine = DataPath(self._tun, address=ident.address.packed, plane=plane,
                                want_session=want_session, on_confirm=on_confirm)
        self._publish_reach()
        plane.engine = self._engine
        self._engine.start()
        self.log.info("tun_up", device=self._tun.name, address=str(ident.address),
                      mtu=self._tun.mtu, offload=self._tun.offload)

    def _publish_reach(self) -> None:
        holder = self.options.get("contract")
        contract = None if holder is None else holder.value
        if contract is None:
            reach = DataReach()
        else:
            reach = data_reach((m.public_key for m in contract.members),
                               self.options["identity"].public_key, holder.may_reach,
                               contract.version)
        self.options["plane"].publish_reach(reach)

    def on_bus(self, notice: Any) -> None:
        if isinstance(notice, ContractChanged):
            self._publish_reach()

    def _stop_engine(self) -> None:
        plane = self.options.get("plane")
        engine = getattr(self, "_engine", None)
        if plane is not None and plane.engine is engine:
            plane.engine = None
        if engine is not None:
            engine.stop()  # closes the TUN: the kernel removes the device
            self._engine = None
        tun = getattr(self, "_tun", None)
        if tun is not None:
            tun.close()

    def on_stop(self) -> None:
        self._stop_engine()
        super().on_stop()

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._stop_engine()
        super().on_failure(exc_type, exc, tb)
