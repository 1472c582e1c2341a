"""The link-carrier interface (yggdrasil's ``linkProtocol``, one module per carrier).

A carrier moves opaque frames (``bytes``, 1..``max_frame`` long) over
connections. It knows nothing of peers' keys or of frame types: the link layer
above it does the hello/proof and decides who stays connected.

How a carrier is driven:
- The owner passes ``on_event(event)`` at construction. The carrier calls it from
  its own thread (TCP: the I/O thread; memory: the delivery thread), one event at a
  time, for every carrier the same way. The callback must be quick and must not
  block on the carrier (it usually ``tell``s a pykka actor). It may call any
  carrier method, including ``send`` and ``close``.
- ``listen``, ``dial``, ``send``, ``close``, ``pause_reading``, ``resume_reading``,
  ``confirm``, ``stats`` and ``shutdown`` are thread-safe.

Event order per connection: ``Connected``, then ``FrameReceived`` in the order the
peer sent them, then exactly one ``Disconnected``; nothing after it. A dial ends in
exactly one ``Connected(outbound=True)`` or ``DialFailed``.

Contract details every carrier keeps (tests/test_carriers.py checks them):
- ``send`` refuses an empty frame or one over ``max_frame`` with
  ``LocalProtocolError`` (caller misuse, like ``wire.encode_frame``).
- ``send`` returns False, and counts a drop, when the connection's bounded send
  queue cannot take the frame; the frame is then not sent at all (no partial frame).
- ``send`` raises ``TransportClosed`` for a connection that is unknown, that we
  closed, or that was already reported ``Disconnected``.
- ``close`` is idempotent and never raises for an unknown id. Frames queued before
  ``close`` are still flushed to the peer (for a bounded linger time).
- ``Disconnected.broken`` is False for an orderly close by either side and True when
  the peer or network broke the connection (reset, end of stream in mid-frame,
  malformed bytes). ``reason`` is human text naming the cause.
- ``Connected.remote`` of an outbound connection is the endpoint string exactly as
  passed to ``dial`` (so a dialer can match it); of an inbound one, the peer's
  address in the carrier's endpoint syntax.
- Connection ids are ints unique in the process across all carriers
  (``new_conn_id``), so an owner driving several carriers can key on the id alone.
- Endpoints that do not parse never raise from ``dial``: they end in ``DialFailed``
  (endpoints can come from peers' records).
"""

from __future__ import annotations

import errno
import itertools
import socket
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from sporenet.protocols.base import Event
from sporenet.protocols.errors import LocalProtocolError

from .errors import TransportError


@dataclass(frozen=True, slots=True)
class Connected(Event):
    conn_id: int
    outbound: bool
    remote: str


@dataclass(frozen=True, slots=True)
class FrameReceived(Event):
    conn_id: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    conn_id: int
    reason: str
    broken: bool


@dataclass(frozen=True, slots=True)
class DialFailed(Event):
    endpoint: str
    reason: str


CarrierEvent = Connected | FrameReceived | Disconnected | DialFailed
EventCallback = Callable[[CarrierEvent], None]


@dataclass(frozen=True, slots=True)
class ConnStats:
    """One live connection. ``frames_out`` counts frames accepted by ``send``;
    ``bytes_out``/``bytes_in`` count carrier bytes (TCP: including prefixes)."""

    remote: str
    outbound: bool
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    drops: int = 0
    queued_bytes: int = 0
    paused: bool = False


@dataclass(frozen=True, slots=True)
class CarrierStats:
    """Totals since the carrier started (closed connections included), plus live ones."""

    conns: dict[int, ConnStats] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    drops: int = 0
    malformed_frames: int = 0
    screened_frames: int = 0  # inbound frames the carrier's rx_filter dropped
    accepted: int = 0
    dialled: int = 0
    dial_failures: int = 0
    disconnects: int = 0
    pending: int = 0          # inbound connections now waiting for their hello (a gauge)
    pending_evicted: int = 0  # pushed out by the pre-hello limit
    accept_paused: int = 0    # accept back-offs for want of descriptors or memory


@runtime_checkable
class Carrier(Protocol):
    """What every carrier implements (``TcpCarrier``, ``MemoryCarrier``, ...)."""

    scheme: str  # endpoint scheme, "tcp" for "tcp://host:port"
    max_frame: int

    def listen(self, endpoint: str) -> str:
        """Start accepting on ``endpoint``; return the bound endpoint (port 0 resolved).
        Raises ``LocalProtocolError`` for a bad endpoint, ``TransportError`` if it
        cannot bind, ``TransportClosed`` after shutdown."""
        ...

    def dial(self, endpoint: str) -> None:
        """Connect in the background; the outcome is ``Connected`` or ``DialFailed``."""
        ...

    def send(self, conn_id: int, frame: bytes) -> bool:
        """Queue one frame; False (a counted drop) when the send queue is full."""
        ...

    def close(self, conn_id: int, reason: str = "closed") -> None:
        """Close one connection (flushing what was queued); idempotent."""
        ...

    def pause_reading(self, conn_id: int) -> None:
        """Stop delivering frames of this connection (inbound backpressure)."""
        ...

    def resume_reading(self, conn_id: int) -> None:
        """Undo ``pause_reading``."""
        ...

    def confirm(self, conn_id: int) -> None:
        """The link layer authenticated this inbound connection: it no longer counts
        against the carrier's limit of connections waiting for their hello."""
        ...

    def stats(self) -> CarrierStats:
        ...

    def shutdown(self) -> None:
        """Close every listener and connection and join the carrier's threads.
        Each open connection gets ``Disconnected(reason="shutdown", broken=False)``."""
        ...


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """``"tcp://1.2.3.4:5"`` -> ``("tcp", "1.2.3.4:5")``; ValueError if there is no scheme."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not scheme:
        raise ValueError(f"endpoint {endpoint!r} has no scheme (want scheme://address)")
    return scheme, rest


def parse_host_port_endpoint(endpoint: str, scheme: str) -> tuple[str, int]:
    """``"tcp://127.0.0.1:80"`` -> ``("127.0.0.1", 80)``; ``"udp://[::1]:0"`` -> ``("::1", 0)``.
    ValueError naming what is wrong, also when the scheme is not ``scheme``."""
    got, rest = split_endpoint(endpoint)
    if got != scheme:
        raise ValueError(f"endpoint {endpoint!r} is not {scheme}://")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
        if ":" in host:
            raise ValueError(f"IPv6 host in {endpoint!r} needs brackets: {scheme}://[addr]:port")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"endpoint {endpoint!r} is not {scheme}://HOST:PORT")
    return host, int(port)


def format_host_port_endpoint(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def listen_address(endpoint: str, scheme: str, sock_type: int) -> tuple[int, tuple]:
    """``(family, sockaddr)`` to bind for ``listen(endpoint)``. Raises
    ``LocalProtocolError`` for an endpoint that does not parse (the caller's), and
    ``TransportError`` for a host that does not resolve."""
    try:
        host, port = parse_host_port_endpoint(endpoint, scheme)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=sock_type,
                                                   flags=socket.AI_PASSIVE)[0]
    except OSError as exc:
        raise TransportError(f"cannot resolve {host!r}: {exc}") from None
    return family, addr


def listen_failed(endpoint: str, exc: OSError) -> TransportError:
    """The error for a bind or listen that failed, with what to do when the port is taken."""
    hint = ("; another process holds that port: choose another one (port 0 lets the "
            "kernel pick) or stop that process") if exc.errno == errno.EADDRINUSE else ""
    return TransportError(f"cannot listen on {endpoint}: {exc.strerror or exc}{hint}")


_conn_ids = itertools.count(1)


def new_conn_id() -> int:
    """A connection id never used before in this process (thread-safe under the GIL)."""
    return next(_conn_ids)
