"""Every foreseeable failure of ``sporenet up`` is one clear line and exit status 1.

Real processes: a node runs (``LocalMesh``), then a second ``sporenet up`` is started
the way an operator would get it wrong: on the first node's run directory, on its
link port, on its API address, with a key file that is missing, with a config key that
does not exist. Each must exit 1 with an ``Error:`` line that names the problem and
what to do, never a traceback, and leave the running node untouched.
"""

from __future__ import annotations

import subprocess

import pytest

from sporenet.keyfile import generate_identity, write_key_file
from sporenet.local_mesh import node_command, node_env

pytestmark = pytest.mark.slow


def up(*args: str, cwd=None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([*node_command(), "up", "--no-tun", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd,
                          env=node_env({**os.environ, "SPORENET_LOG_FORMAT": "json"}))


def error_line(out: subprocess.CompletedProcess) -> str:
    """The one ``Error:`` line; the process exited 1 and printed no traceback."""
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    return errors[0]


@pytest.fixture
def running(mesh):
    node = mesh.start_node("a")
    yield node
    # the refused starts left it alone: its node.json is there and its API answers
    assert (node.run_dir / "node.json").exists()
    assert node.api.get("/v1/status")["node_id"] == node.node_id


def test_a_second_node_on_a_run_directory_in_use(running, tmp_path):
    key = tmp_path / "b.key"
    write_key_file(key, generate_identity())
    line = error_line(up("--key-file", str(key), "--listen", "tcp://127.0.0.1:0",
                         "--api", "127.0.0.1:0", "--run-dir", str(running.run_dir)))
    assert "already runs in" in line and "--run-dir" in line


def test_a_link_port_or_api_address_in_use(running, tmp_path):
    key = tmp_path / "b.key"
    write_key_file(key, generate_identity())
    taken = running.info["listen"][0]
    line = error_line(up("--key-file", str(key), "--listen", taken, "--api", "127.0.0.1:0",
                         "--run-dir", str(tmp_path / "run-b")))
    assert f"cannot listen on {taken}" in line and "choose another" in line
    line = error_line(up("--key-file", str(key), "--listen", "tcp://127.0.0.1:0",
                         "--api", running.info["api"], "--run-dir", str(tmp_path / "run-c")))
    assert f"cannot serve the API on {running.info['api']}" in line and "--api" in line


def test_a_missing_key_file_and_an_unknown_config_key(tmp_path):
    line = error_line(up("--key-file", str(tmp_path / "nope.key"), "--run-dir",
                         str(tmp_path / "run")))
    assert "nope.key" in line and "sporenet keygen" in line
    (tmp_path / "node.toml").write_text('listne = ["tcp://127.0.0.1:0"]\n')
    line = error_line(up("--config", str(tmp_path / "node.toml")))
    assert "listne" in line


def test_without_cap_net_admin_a_tun_node_says_so_in_one_line(tmp_path):
    """``sporenet up`` without ``--no-tun`` on a host where it may not make a TUN."""
    import os
    import shlex
    import shutil
    if shutil.which("capsh") is None or os.geteuid() != 0:
        pytest.skip("needs root and capsh to start a node without CAP_NET_ADMIN")
    key = tmp_path / "n.key"
    write_key_file(key, generate_identity())
    cmd = [*node_command(), "up", "--key-file", str(key), "--listen", "tcp://127.0.0.1:0",
           "--api", "127.0.0.1:0", "--run-dir", str(tmp_path / "run")]
    out = subprocess.run(["capsh", "--drop=cap_net_admin", "--", "-c", shlex.join(cmd)],
                         capture_output=True, text=True, timeout=60,
                         env=node_env({**os.environ, "SPORENET_LOG_FORMAT": "json"}))
    line = error_line(out)
    assert "CAP_NET_ADMIN" in line and "--no-tun" in line
