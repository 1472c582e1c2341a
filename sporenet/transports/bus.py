"""The node bus: a node-local ZeroMQ XSUB/XPUB proxy that carries notices.

Publishers connect a PUB socket to the bus's *in* side (XSUB), subscribers a SUB
socket to its *out* side (XPUB). Both sides are bound twice: on ``inproc://``
for agents in this process (they must share ``Bus.context``) and on
``ipc://<run_dir>/bus-{in,out}.sock`` for other processes, which find the
addresses in ``<run_dir>/bus.json``. Messages: ``[topic, msgpack fields]``
(``bus_codec``).

Rules:
- Each socket has one owning thread: the broker thread owns the proxy's
  sockets; a ``BusPublisher``/``BusSubscriber``/``BusClient`` is used only by
  the thread that created it.
- PUB/SUB drops what is sent before a subscription reaches the publisher (the
  "slow joiner"). Two measures close it. (1) The broker's XSUB subscribes to
  everything, so every publisher sends every message to the broker and only the
  XPUB side filters; a subscription is in force as soon as the broker has it,
  whoever publishes. (2) ``BusClient.sync()`` subscribes to a private
  ``_bus.sync.<id>`` topic last and publishes to itself until that comes back;
  ZeroMQ keeps the order per pipe, so then its publisher is connected and its
  earlier subscriptions are in the broker: whatever anyone publishes from then
  on reaches it.
- High-water marks are raised so a burst does not drop notices; a subscriber that
  stays ``HWM`` messages behind still loses the newest ones (PUB/SUB semantics).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import structlog
import zmq

from sporenet.protocols.notices import Notice

from .bus_codec import PRIVATE_PREFIX, decode_notice, encode_notice

log = structlog.get_logger("sporenet.bus")

HWM = 100_000
IPC_PATH_MAX = 107  # sun_path is 108 bytes with the trailing NUL
BUS_FILE = "bus.json"


class BusError(Exception):
    """The bus could not start, or a client could not reach it."""


class BusNotRunning(BusError):
    """No node bus runs in the given run directory."""


@dataclass(frozen=True, slots=True)
class BusEndpoints:
    """Where publishers (``pub``, the XSUB side) and subscribers (``sub``) connect."""

    pub: str
    sub: str


def load_endpoints(run_dir: str | os.PathLike[str]) -> BusEndpoints:
    """The ipc endpoints of the bus running in ``run_dir``; ``BusNotRunning`` if none."""
    path = Path(run_dir) / BUS_FILE
    try:
        info = json.loads(path.read_text())
        endpoints = BusEndpoints(info["pub"], info["sub"])
    except FileNotFoundError:
        raise BusNotRunning(f"no node bus in {run_dir}: {path} does not exist "
                            "(is the node running, and is this its run dir?)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BusNotRunning(f"no node bus in {run_dir}: {path} is unreadable: {e}") from None
    if not _ipc_live(endpoints.pub):
        raise BusNotRunning(f"no node bus in {run_dir}: {path} exists but nothing listens on "
                            f"{endpoints.pub} (stale file from a node that died?)")
    return endpoints


def _ipc_live(endpoint: str) -> bool:
    path = endpoint.removeprefix("ipc://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


class Bus:
    """The broker. Driven by ``start()`` and ``stop()``; one broker thread in between."""

    def __init__(self, run_dir: str | os.PathLike[str], name: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.name = name or uuid.uuid4().hex[:8]
        self.context = zmq.Context()
        self._inproc = BusEndpoints(f"inproc://sporenet-bus-{self.name}-in",
                                    f"inproc://sporenet-bus-{self.name}-out")
        self._ipc = BusEndpoints(f"ipc://{self.run_dir / 'bus-in.sock'}",
                                 f"ipc://{self.run_dir / 'bus-out.sock'}")
        self._control = f"inproc://sporenet-bus-{self.name}-control"
        self._thread: threading.Thread | None = None
        self._bound = threading.Event()
        self._bind_error: BaseException | None = None
        self._stopped = False

    def endpoints(self, transport: str = "inproc") -> BusEndpoints:
        """``"inproc"`` (same process, use ``context``) or ``"ipc"`` (any process)."""
        return {"inproc": self._inproc, "ipc": self._ipc}[transport]

    def start(self, timeout: float = 5.0) -> Bus:
        for ep in (self._ipc.pub, self._ipc.sub):
            if len(ep.removeprefix("ipc://").encode()) > IPC_PATH_MAX:
                raise BusError(f"run dir {self.run_dir} is too long for an ipc socket path "
                               f"({ep} > {IPC_PATH_MAX} bytes); choose a shorter run dir")
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _ipc_live(self._ipc.pub):
            raise BusError(f"a node bus already runs in {self.run_dir}: another node uses this run "
                           "directory; stop it, or give this node its own --run-dir")
        self._thread = threading.Thread(target=self._run, name=f"bus-broker-{self.name}")
        self._thread.start()
        if not self._bound.wait(timeout) or self._bind_error is not None:
            self._thread.join(timeout)
            self.context.term()
            raise BusError(f"bus in {self.run_dir} did not start: {self._bind_error}")
        self._write_bus_file()
        log.info("bus_started", run_dir=str(self.run_dir), name=self.name)
        return self

    def stop(self) -> None:
        """Stop the proxy, close the context, remove ipc files and ``bus.json``.

        Every client socket on ``context`` must be closed before (``term()`` waits).
        """
        if self._stopped or self._thread is None:
            return
        self._stopped = True
        (self.run_dir / BUS_FILE).unlink(missing_ok=True)
        ctl = self.context.socket(zmq.PAIR)
        ctl.connect(self._control)
        ctl.send(b"TERMINATE")
        self._thread.join()  # close only after: closing a PAIR drops what it has not delivered
        ctl.close(linger=0)
        self.context.term()
        for ep in (self._ipc.pub, self._ipc.sub):
            Path(ep.removeprefix("ipc://")).unlink(missing_ok=True)
        log.info("bus_stopped", run_dir=str(self.run_dir), name=self.name)

    def _run(self) -> None:
        xsub = self.context.socket(zmq.XSUB)
        xpub = self.context.socket(zmq.XPUB)
        ctl = self.context.socket(zmq.PAIR)
        try:
            for s in (xsub, xpub):
                s.setsockopt(zmq.SNDHWM, HWM)
                s.setsockopt(zmq.RCVHWM, HWM)
                s.setsockopt(zmq.LINGER, 0)
            xsub.bind(self._inproc.pub)
            xsub.bind(self._ipc.pub)
            xpub.bind(self._inproc.sub)
            xpub.bind(self._ipc.sub)
            ctl.bind(self._control)
            xsub.send(b"\x01")  # subscribe to everything: publishers never filter (see below)
        except zmq.ZMQError as e:
            self._bind_error = e
            for s in (xsub, xpub, ctl):
                s.close(linger=0)
            self._bound.set()
            return
        self._bound.set()
        try:
            zmq.proxy_steerable(xsub, xpub, None, ctl)
        finally:
            for s in (xsub, xpub, ctl):
                s.close(linger=0)

    def _write_bus_file(self) -> None:
        info = {"version": 1, "pub": self._ipc.pub, "sub": self._ipc.sub, "pid": os.getpid(),
                "format": "multipart [topic utf-8, msgpack map of the notice's fields]"}
        tmp = self.run_dir / f".{BUS_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.run_dir / BUS_FILE)

    def client(self) -> BusClient:
        """A client on the inproc endpoints; create it in the thread that will use it."""
        return BusClient(self._inproc, context=self.context)


def _context(context: zmq.Context | None) -> zmq.Context:
    return context if context is not None else zmq.Context.instance()


class BusPublisher:
    """A PUB socket connected to the bus. Used only by the thread that created it."""

    def __init__(self, endpoints: BusEndpoints, context: zmq.Context | None = None) -> None:
        self._sock = _context(context).socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, HWM)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.connect(endpoints.pub)

    def publish(self, notice: Notice) -> None:
        self._sock.send_multipart(encode_notice(notice), copy=False)

    def publish_raw(self, topic: bytes, payload: bytes) -> None:
        self._sock.send_multipart((topic, payload), copy=False)

    def close(self) -> None:
        self._sock.close()


class BusSubscriber:
    """A SUB socket connected to the bus. Used only by the thread that created it."""

    def __init__(self, endpoints: BusEndpoints, context: zmq.Context | None = None) -> None:
        self._sock = _context(context).socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoints.sub)

    def subscribe(self, *prefixes: str | bytes) -> None:
        for p in prefixes:
            self._sock.setsockopt(zmq.SUBSCRIBE, p.encode() if isinstance(p, str) else p)

    def unsubscribe(self, *prefixes: str | bytes) -> None:
        for p in prefixes:
            self._sock.setsockopt(zmq.UNSUBSCRIBE, p.encode() if isinstance(p, str) else p)

    def recv_raw(self, timeout: float | None = None) -> tuple[bytes, bytes] | None:
        """The next ``(topic, payload)``, private ones included; None on timeout."""
        ms = None if timeout is None else max(0, int(timeout * 1000))
        if not self._sock.poll(ms):
            return None
        frames = self._sock.recv_multipart()
        if len(frames) != 2:
            return frames[0], b""  # a malformed sender; decode_notice will reject it
        return frames[0], frames[1]

    def close(self) -> None:
        self._sock.close()


class BusClient:
    """A publisher and a subscriber, owned by one thread; usable from any process.

    Driven by ``connect()``, ``subscribe()``, ``sync()``, then ``publish()`` and
    ``recv()``; ``close()`` at the end. In-process clients pass ``Bus.context``.
    """

    def __init__(self, endpoints: BusEndpoints | None = None,
                 context: zmq.Context | None = None) -> None:
        self._context = context
        self._pub: BusPublisher | None = None
        self._sub: BusSubscriber | None = None
        self._sync_topic = PRIVATE_PREFIX + b"sync." + uuid.uuid4().hex.encode()
        self._early: deque[tuple[bytes, bytes]] = deque()  # arrived while syncing
        if endpoints is not None:
            self.connect(endpoints)

    def connect(self, endpoints: BusEndpoints) -> None:
        self._pub = BusPublisher(endpoints, self._context)
        self._sub = BusSubscriber(endpoints, self._context)

    def subscribe(self, *prefixes: str | bytes) -> None:
        self._sub.subscribe(*prefixes)

    def unsubscribe(self, *prefixes: str | bytes) -> None:
        self._sub.unsubscribe(*prefixes)

    def sync(self, timeout: float = 5.0) -> None:
        """Return once this client's publisher and subscriptions are live on the bus."""
        self._sub.subscribe(self._sync_topic)  # after the others: see the module docstring
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._pub.publish_raw(self._sync_topic, b"")
                got = self._sub.recv_raw(0.02)
                while got is not None:
                    if got[0] == self._sync_topic:
                        return
                    if not got[0].startswith(PRIVATE_PREFIX):
                        self._early.append(got)  # recv() hands these out first
                    got = self._sub.recv_raw(0)
            raise BusError(f"bus did not answer within {timeout} s")
        finally:
            self._sub.unsubscribe(self._sync_topic)

    def publish(self, notice: Notice) -> None:
        self._pub.publish(notice)

    def publish_raw(self, topic: bytes, payload: bytes) -> None:
        """Already encoded frames (bridges, benchmarks)."""
        self._pub.publish_raw(topic, payload)

    def recv_raw(self, timeout: float | None = None) -> tuple[bytes, bytes] | None:
        """The next ``(topic, payload)`` undecoded, the bus's private ones included."""
        if self._early:
            return self._early.popleft()
        return self._sub.recv_raw(timeout)

    def recv(self, timeout: float | None = None) -> Notice | None:
        """The next notice (``RawNotice`` for unknown topics), or None on timeout.

        Raises ``DecodeError`` if another process sent a malformed payload.
        """
        if self._early:
            return decode_notice(*self._early.popleft())
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = self._sub.recv_raw(left)
            if got is None:
                return None
            if not got[0].startswith(PRIVATE_PREFIX):
                return decode_notice(*got)
            if left == 0.0:
                return None

    def close(self) -> None:
        for s in (self._pub, self._sub):
            if s is not None:
                s.close()
        self._pub = self._sub = None
