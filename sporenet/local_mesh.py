"""Start and stop real ``sporenet up`` processes on loopback.

Used by ``sporenet demo`` and by the multi-process tests: each node is a real
subprocess with its own key file, run directory and API port. A node writes
``<run_dir>/node.json`` once its listeners and API are bound; the launcher reads
the real ports from there, so every port is chosen by the kernel (port 0) and
nothing races for a fixed port.

Links can be slowed with a userspace ``DelayProxy`` (this kernel has no netem):
``start_topology`` starts nodes in waves, each node dialling its peers directly or
through a proxy in front of the peer's endpoint. ``selected_routes``, ``trace``,
``ping`` and ``send_message`` read and drive the nodes through their HTTP API.

Every process and proxy started here is stopped (processes by their pid) in
``LocalMesh.close()``, which callers run in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import structlog

from sporenet.transports.delay_proxy import DelayProxy

from .api_client import ApiClient, ApiClientError
from .keyfile import generate_identity, write_key_file

log = structlog.get_logger(__name__)


# The package this process runs, wherever it came from (site-packages, an editable
# install, a source tree). A child node must import the same one, never whatever a
# ``sporenet`` folder in its working directory holds: ``-P`` keeps the working
# directory off the child's sys.path, and PYTHONPATH names our package's root first.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def node_command() -> list[str]:
    """argv prefix that runs this package's CLI in a child Python process."""
    return [sys.executable, "-P", "-m", "sporenet.cli"]


def node_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this package's root first on PYTHONPATH (see ``node_command``)."""
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != _PACKAGE_ROOT]
    return {**env, "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, *rest])}



class MeshError(Exception):
    """A local node failed to start or to reach the expected state in time."""


@dataclass
class LocalNode:
    name: str
    run_dir: Path
    key_file: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> ApiClient:
        return ApiClient(self.info["api"])

    @property
    def endpoint(self) -> str:
        return self.info["listen"][0]

    @property
    def node_id(self) -> str:
        return self.info["node_id"]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str],
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes.

    ``what`` names the awaited state in the ``MeshError``; a callable is called only
    then, so the message can show the state at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise MeshError(f"timed out after {timeout:.1f}s waiting for "
                            f"{what() if callable(what) else what}")
        time.sleep(interval)


class LocalMesh:
    """A set of local node processes under one base directory."""

    def __init__(self, base_dir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.base_dir = Path(base_dir)
        self.extra_args = extra_args
        self.nodes: dict[str, LocalNode] = {}
        self.proxies: list[DelayProxy] = []

    def start_node(self, name: str, peers: Iterable[str] = (), *, extra_args: tuple[str, ...] = (),
                   env: Mapping[str, str] | None = None, timeout: float = 20.0) -> LocalNode:
        """Start ``sporenet up`` as ``name`` and wait for it; ``env`` is added to
        ``os.environ`` for it (e.g. ``PYTHONPATH`` so a custom agent is importable)."""
        return self.wait_ready(self.launch(name, peers, extra_args=extra_args, env=env), timeout)

    def launch(self, name: str, peers: Iterable[str] = (), *, extra_args: tuple[str, ...] = (),
               env: Mapping[str, str] | None = None) -> LocalNode:
        """Start the process and return at once; ``wait_ready`` waits for its node.json."""
        run_dir = self.base_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        key_file = run_dir / "node.key"
        if not key_file.exists():
            write_key_file(key_file, generate_identity())
        (run_dir / "node.json").unlink(missing_ok=True)
        args = [*node_command(), "up", "--key-file", str(key_file),
                "--listen", "tcp://127.0.0.1:0", "--api", "127.0.0.1:0",
                "--run-dir", str(run_dir), "--name", name, "--no-tun"]
        for p in peers:
            args += ["--peer", p]
        args += list(self.extra_args) + list(extra_args)
        log_path = run_dir / "node.log"
        env = node_env({**os.environ, "SPORENET_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
                        **(env or {})})
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)
        node = LocalNode(name, run_dir, key_file, proc, log_path)
        self.nodes[name] = node
        return node

    def wait_ready(self, node: LocalNode, timeout: float = 20.0) -> LocalNode:
        info_path = node.run_dir / "node.json"

        def ready() -> dict[str, Any] | None:
            if node.process.poll() is not None:
                raise MeshError(f"node {node.name} exited with {node.process.returncode}:\n"
                                f"{node.log_tail()}")
            try:
                return json.loads(info_path.read_text())
            except (OSError, ValueError):
                return None

        node.info = wait_for(ready, timeout, f"node {node.name} to start")
        return node

    def add_proxy(self, name: str, delay_ms: float, jitter_ms: float = 0.0) -> str:
        """A ``DelayProxy`` in front of node ``name``; returns the endpoint to dial instead.

        Each direction is delayed ``delay_ms``, so the link's RTT grows by twice that.
        """
        proxy = DelayProxy(listen="tcp://127.0.0.1:0", target=self.nodes[name].endpoint,
                           delay_ms=delay_ms, jitter_ms=jitter_ms, name=f"proxy-{name}")
        self.proxies.append(proxy)
        return proxy.start()

    def start_topology(self, links: Iterable[tuple[str, str, float]], *,
                       timeout: float = 30.0) -> dict[str, LocalNode]:
        """Start every node named in ``links`` (``(dialer, listener, one_way_delay_ms)``).

        A dialer starts once all its listeners run, so nodes start in waves, each wave
        at once. A link with a delay is dialled through ``add_proxy``. Raises
        ``MeshError`` if the dial graph has a cycle.
        """
        links = list(links)
        pending = list(dict.fromkeys(n for link in links for n in link[:2]))
        while pending:
            wave = [n for n in pending
                    if all(lis in self.nodes for dia, lis, _ in links if dia == n)]
            if not wave:
                raise MeshError(f"the links between {', '.join(pending)} dial in a cycle")
            started = []
            for name in wave:
                peers = [self.add_proxy(lis, d) if d else self.nodes[lis].endpoint
                         for dia, lis, d in links if dia == name]
                started.append(self.launch(name, peers))
            for node in started:
                self.wait_ready(node, timeout)
            pending = [n for n in pending if n not in wave]
        return self.nodes

    def name_of(self, node_id: str) -> str:
        return next((n.name for n in self.nodes.values() if n.info.get("node_id") == node_id),
                    node_id[:8])

    def stop_node(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        node = self.nodes[name]
        if node.process.poll() is None:
            node.process.send_signal(sig)
            try:
                node.process.wait(timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(5)
        return node.process.returncode

    def close(self) -> None:
        """Stop every node (SIGTERM to all first, so they stop in parallel), then the proxies."""
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.process.terminate()
        for name in list(self.nodes):
            self.stop_node(name)
        for proxy in self.proxies:
            proxy.stop()

    def __enter__(self) -> LocalMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading and driving nodes through their API ---------------------------------------


def selected_routes(node: LocalNode) -> dict[str, dict[str, Any]]:
    """``{destination node id: the selected route row}`` of ``/v1/routes``."""
    return {r["destination"]: r for r in node.api.get("/v1/routes")["routes"] if r["selected"]}


def trace(mesh: LocalMesh, src: str, dst: str) -> list[str] | None:
    """The path from node ``src`` to node ``dst`` (names), following each hop's selected
    route; ``None`` while some hop has no route, loops or is not running."""
    by_id = {n.node_id: n for n in mesh.nodes.values()}
    target, path = mesh.nodes[dst].node_id, [src]
    node = mesh.nodes[src]
    while node.node_id != target:
        if not node.alive() or len(path) > len(by_id):
            return None
        try:
            route = selected_routes(node).get(target)
        except ApiClientError:
            return None
        if route is None or route["next_hop"] not in by_id:
            return None
        node = by_id[route["next_hop"]]
        path.append(node.name)
    return path


def _result(node: LocalNode, path: str, started: dict[str, Any], timeout: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        res = node.api.get(path, id=str(started["id"]))
        return res if res.get("state") != "pending" else None

    return wait_for(finished, timeout, f"{path} {started['id']} to finish", interval=0.02)


def ping(node: LocalNode, to: str, timeout: float = 2.0) -> dict[str, Any]:
    """One overlay ping to ``to`` (node id or address): ``{"state": "ok", "rtt_ms", "hops"}``,
    or ``{"state": "failed", "reason"}`` (also when the node refuses, e.g. no route)."""
    try:
        started = node.api.post("/v1/ping", {"to": to, "timeout": timeout})
    except ApiClientError as e:
        return {"state": "failed", "reason": str(e)}
    return _result(node, "/v1/ping", started, timeout + 2)


def send_message(node: LocalNode, to: str, topic: str, text: str,
                 deadline: float = 10.0) -> dict[str, Any]:
    """Send ``text`` and wait for the end-to-end ack: ``{"state": "delivered"}`` or
    ``{"state": "failed", "reason"}``."""
    try:
        started = node.api.post("/v1/messages", {"to": to, "topic": topic, "data": text,
                                                 "deadline": deadline})
    except ApiClientError as e:
        return {"state": "failed", "reason": str(e)}
    return _result(node, "/v1/message", started, deadline + 2)
