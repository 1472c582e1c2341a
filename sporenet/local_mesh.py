"""Start and stop real ``sporenet up`` processes on loopback.

Used by ``sporenet demo`` and by the multi-process tests: each node is a real
subprocess with its own key file, run directory and API port. A node writes
``<run_dir>/node.json`` once its listeners and API are bound; the launcher reads
the real ports from there, so every port is chosen by the kernel (port 0) and
nothing races for a fixed port.

Every process started here is stopped by its pid in ``LocalMesh.close()``,
which callers run in a ``finally``.
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
from typing import Any, Callable, Mapping

from .api_client import ApiClient
from .keyfile import generate_identity, write_key_file


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


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise MeshError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class LocalMesh:
    """A set of local node processes under one base directory."""

    def __init__(self, base_dir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.base_dir = Path(base_dir)
        self.extra_args = extra_args
        self.nodes: dict[str, LocalNode] = {}

    def start_node(self, name: str, peers: list[str] = (), *, extra_args: tuple[str, ...] = (),
                   env: Mapping[str, str] | None = None, timeout: float = 20.0) -> LocalNode:
        """Start ``sporenet up`` as ``name``; ``env`` is added to ``os.environ`` for it
        (e.g. ``PYTHONPATH`` so a custom agent in ``[[agents]]`` is importable)."""
        run_dir = self.base_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        key_file = run_dir / "node.key"
        if not key_file.exists():
            write_key_file(key_file, generate_identity())
        (run_dir / "node.json").unlink(missing_ok=True)
        args = [sys.executable, "-m", "sporenet.cli", "up", "--key-file", str(key_file),
                "--listen", "tcp://127.0.0.1:0", "--api", "127.0.0.1:0",
                "--run-dir", str(run_dir), "--name", name, "--no-tun"]
        for p in peers:
            args += ["--peer", p]
        args += list(self.extra_args) + list(extra_args)
        log_path = run_dir / "node.log"
        env = {**os.environ, "SPORENET_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)
        node = LocalNode(name, run_dir, key_file, proc, log_path)
        self.nodes[name] = node
        info_path = run_dir / "node.json"

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise MeshError(f"node {name} exited with {proc.returncode}:\n{node.log_tail()}")
            try:
                return json.loads(info_path.read_text())
            except (OSError, ValueError):
                return None

        node.info = wait_for(ready, timeout, f"node {name} to start")
        return node

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
        for name in list(self.nodes):
            self.stop_node(name)

    def __enter__(self) -> LocalMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
