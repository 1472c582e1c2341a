"""Real nodes with real TUN devices, each in its own network namespace (root only).

``TunLab`` builds a line of ``sn-<tag>-<name>`` namespaces, joined in order by veth
pairs (``10.203.K.1`` / ``10.203.K.2`` for the K-th hop), and runs ``sporenet up`` in
each (TUN on, linking to the previous node). It is what the TUN tests, ``bench/
throughput`` and ``sporenet demo --tun`` stand on. ``close()`` stops every node it
started (by pid) and deletes every namespace it made, whatever happened before:
use it as a context manager or in a ``finally``.

Nothing here leaves the namespaces: underlay traffic runs on the veths between them,
and each node's API listens on its own namespace's loopback (``get``/``run`` reach it
through ``ip netns exec``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from sporenet.keyfile import generate_identity, load_key_file, write_key_file
from sporenet.local_mesh import node_command, node_env

PORT = 7000
API = "127.0.0.1:8990"


def _sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class LabNode:
    name: str
    ns: str
    underlay: str               # the address its link carrier listens on
    key_file: Path
    run_dir: Path
    log_path: Path
    address: str                # its overlay address
    peers: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    also_listen: tuple[str, ...] = ()  # underlay addresses of its next veths

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class TunLab:
    def __init__(self, base_dir: Path, names: Iterable[str] = ("a", "b", "c"), *,
                 tag: str | None = None, extra_args: tuple[str, ...] = (),
                 carrier: str = "tcp") -> None:
        self.base = Path(base_dir)
        self.carrier = carrier  # the links' scheme: "tcp" or "udp"
        self.tag = tag or secrets.token_hex(2)
        self.extra_args = extra_args
        self.nodes: dict[str, LabNode] = {}
        self._namespaces: list[str] = []
        self._names = list(names)

    # ----- building ------------------------------------------------------------------

    def build(self) -> TunLab:
        """Namespaces and veths for the line; keys for each node. Nodes not started."""
        prev: LabNode | None = None
        for k, name in enumerate(self._names):
            ns = f"sn-{self.tag}-{name}"
            _sh("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            key = self.base / f"{name}.key"
            if not key.exists():
                write_key_file(key, generate_identity())
            ident = load_key_file(key)
            node = LabNode(name, ns, "", key, self.base / f"run-{name}",
                           self.base / f"{name}.log", str(ident.address))
            if prev is not None:  # veth prev <-> node on 10.203.k.0/24
                left, right = f"sn{self.tag}{k}l", f"sn{self.tag}{k}r"
                _sh("ip", "link", "add", left, "netns", prev.ns, "type", "veth",
                    "peer", "name", right, "netns", ns)
                _sh("ip", "-n", prev.ns, "addr", "add", f"10.203.{k}.1/24", "dev", left)
                _sh("ip", "-n", ns, "addr", "add", f"10.203.{k}.2/24", "dev", right)
                _sh("ip", "-n", prev.ns, "link", "set", left, "up")
                _sh("ip", "-n", ns, "link", "set", right, "up")
                prev.also_listen += (f"10.203.{k}.1",)
                node.underlay = f"10.203.{k}.2"
                node.peers = (f"{self.carrier}://10.203.{k}.1:{PORT}",)
            self.nodes[name] = node
            prev = node
        for node in self.nodes.values():  # the first node listens on its first veth
            if not node.underlay:
                node.underlay = node.also_listen[0] if node.also_listen else "127.0.0.1"
        return self

    def start(self, name: str) -> LabNode:
        node = self.nodes[name]
        listens = {node.underlay, *node.also_listen}
        args = ["ip", "netns", "exec", node.ns, *node_command(), "up",
                "--key-file", str(node.key_file), "--api", API, "--run-dir", str(node.run_dir),
                "--name", name, *self.extra_args]
        for addr in sorted(listens):
            args += ["--listen", f"{self.carrier}://{addr}:{PORT}"]
        for peer in node.peers:
            args += ["--peer", peer]
        log = open(node.log_path, "ab")
        try:
            node.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         env=node_env(os.environ), start_new_session=True)
        finally:
            log.close()
        return node

    def start_all(self, timeout: float = 30.0) -> TunLab:
        for name in self.nodes:
            self.start(name)
        for node in self.nodes.values():
            self.wait_up(node, timeout)
        return self

    def wait_up(self, node: LabNode, timeout: float = 30.0) -> None:
        """Until the node's API answers and its TUN is up."""
        self.wait_for(lambda: (self.get(node, "/v1/datapath") or {}).get("device"),
                      timeout, lambda: f"node {node.name} up with its TUN; log:\n{node.log_tail()}",
                      node=node)

    # ----- using ---------------------------------------------------------------------

    def run(self, node: LabNode, code: str, *args: str, timeout: float = 120.0) -> str:
        """Python ``code`` in the node's namespace; its stdout."""
        out = subprocess.run(["ip", "netns", "exec", node.ns, sys.executable, "-c", code, *args],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"in {node.ns}: exit {out.returncode}: {out.stderr[-2000:]}")
        return out.stdout

    def get(self, node: LabNode, path: str) -> Any:
        """``GET path`` on the node's API; None if it does not answer."""
        code = ("import sys, urllib.request\n"
                "try:\n"
                f"    print(urllib.request.urlopen('http://{API}' + sys.argv[1], timeout=3).read().decode())\n"
                "except Exception:\n"
                "    print('null')\n")
        try:
            return json.loads(self.run(node, code, path, timeout=10) or "null")
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
            return None

    def post(self, node: LabNode, path: str, body: Any) -> Any:
        """``POST path`` with a JSON body on the node's API; its JSON answer (or error)."""
        code = ("import sys, urllib.request, urllib.error\n"
                f"r = urllib.request.Request('http://{API}' + sys.argv[1], data=sys.stdin.buffer.read(),"
                " headers={'Content-Type': 'application/json'}, method='POST')\n"
                "try:\n"
                "    print(urllib.request.urlopen(r, timeout=5).read().decode())\n"
                "except urllib.error.HTTPError as e:\n"
                "    print(e.read().decode())\n")
        out = subprocess.run(["ip", "netns", "exec", node.ns, sys.executable, "-c", code, path],
                             input=json.dumps(body), capture_output=True, text=True, timeout=15)
        return json.loads(out.stdout or "null")

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str],
                 node: LabNode | None = None, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = predicate()
            if got:
                return got
            if node is not None and not node.alive():
                raise AssertionError(f"node {node.name} exited; log:\n{node.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for "
                                     f"{what() if callable(what) else what}")
            time.sleep(interval)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        node = self.nodes[name]
        if node.proc is None:
            return None
        if node.proc.poll() is None:
            try:
                os.killpg(node.proc.pid, sig)  # its own session: ip netns exec and the node
            except ProcessLookupError:
                pass
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(5)
        return node.proc.returncode

    def devices(self, node: LabNode) -> list[str]:
        out = _sh("ip", "-n", node.ns, "-o", "link", "show").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def close(self) -> None:
        for name in list(self.nodes):
            try:
                self.stop(name)
            except Exception:  # noqa: BLE001 (clean up the rest whatever happens)
                pass
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()

    def __enter__(self) -> TunLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
