"""Path traces: which nodes a packet to a destination crosses, and each link's figures.

A distance-vector node knows only its own first link; a trace asks the path
itself. ``Tracer.trace(dst, now)`` emits ``SendPacket(dst, TRACE_REQUEST,
TraceRequest(trace_id))``; every node that forwards it, the origin included,
appends its ``TraceRecord`` (``overlay.forwarding.Forwarder``). The destination answers
with a ``TraceReply`` carrying the records unchanged (``Tracer.handle`` on the
request, or ``answer``), routed back like any packet. The origin then emits
``TraceResult`` (records, round-trip time, whether the list was truncated), or
``TraceFailed`` on an ``Unreachable`` notice about the destination or at the
deadline. Sans-IO, like the message endpoint it sits beside (``overlay.layer.Overlay``).
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from dataclasses import dataclass

from ..base import Action
from ..errors import DecodeError, LocalProtocolError
from .messaging import PacketReceived, SendPacket, _addr
from ..routed import (Proto, TraceRecord, TraceReply, TraceRequest, Unreachable,
                               decode_payload)

Address = ipaddress.IPv6Address
MAX_TRACES = 1024  # outstanding traces per node


@dataclass(frozen=True, slots=True)
class TraceResult(Action):
    trace_id: int
    dst_address: Address
    records: tuple[TraceRecord, ...]
    rtt: float
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class TraceFailed(Action):
    trace_id: int
    dst_address: Address
    reason: str


class Tracer:
    """Starts traces, answers them as a destination, matches replies; see the module doc."""

    PROTOS = (Proto.TRACE_REQUEST, Proto.TRACE_REPLY, Proto.UNREACHABLE)

    def __init__(self, *, rng: random.Random, max_traces: int = MAX_TRACES) -> None:
        self._rng = rng
        self.max_traces = max_traces
        self.counters: Counter[str] = Counter()
        self._traces: dict[int, tuple[Address, float, float]] = {}  # id -> dst, start, until

    def trace(self, dst_address, now: float, timeout: float = 2.0) -> tuple[int, list[Action]]:
        dst = _addr(dst_address)
        if not timeout > 0:
            raise LocalProtocolError(f"trace timeout {timeout} s must be positive")
        if len(self._traces) >= self.max_traces:
            raise LocalProtocolError("too many traces outstanding")
        trace_id = self._rng.getrandbits(32)
        while trace_id in self._traces:
            trace_id = self._rng.getrandbits(32)
        self._traces[trace_id] = (dst, now, now + timeout)
        self.counters["traces_sent"] += 1
        return trace_id, [SendPacket(dst, Proto.TRACE_REQUEST, TraceRequest(trace_id).encode())]

    def handle(self, event: PacketReceived, now: float) -> list[Action]:
        if event.proto not in self.PROTOS:
            raise LocalProtocolError(f"Tracer cannot handle proto {event.proto}")
        try:
            payload = decode_payload(event.proto, event.payload)
        except DecodeError:
            self.counters["malformed"] += 1
            return []
        src = event.src_address
        if isinstance(payload, TraceRequest):
            self.counters["traces_answered"] += 1
            reply = TraceReply(payload.trace_id, payload.records, payload.flags)
            return [SendPacket(src, Proto.TRACE_REPLY, reply.encode())]
        if isinstance(payload, TraceReply):
            t = self._traces.get(payload.trace_id)
            if t is None or t[0] != src:
                self.counters["stray_replies"] += 1
                return []
            del self._traces[payload.trace_id]
            self.counters["traces_done"] += 1
            return [TraceResult(payload.trace_id, src, payload.records, now - t[1],
                                payload.truncated)]
        assert isinstance(payload, Unreachable)
        dst = Address(payload.dst)
        out: list[Action] = []
        for trace_id, (tdst, _, _) in list(self._traces.items()):
            if tdst == dst:
                del self._traces[trace_id]
                self.counters["traces_failed"] += 1
                out.append(TraceFailed(trace_id, dst, "unreachable"))
        return out

    def next_deadline(self) -> float | None:
        return min((t[2] for t in self._traces.values()), default=None)

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        for trace_id, (dst, _, until) in list(self._traces.items()):
            if now >= until:
                del self._traces[trace_id]
                self.counters["traces_failed"] += 1
                out.append(TraceFailed(trace_id, dst, "timeout"))
        return out
