"""`sporenet demo` is the README's first command: it must work, exit 0 and show what it
promises (lowest latency over fewest hops, a ping across 3+ hops, a message, a reroute
after a transit node dies), and fail with a clear message and no leftovers otherwise."""

import io
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from rich.console import Console

from sporenet.commands import demo

pytestmark = pytest.mark.slow


def test_demo_routes_around_latency_and_a_dead_transit_node():
    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "demo"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, COLUMNS="120"))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "FAIL" not in text and text.count("PASS") == 7, text
    # The fast 4-hop path beats the 2-hop one, the ping crossed it, then the detour.
    assert "alpha → bravo → charlie → delta → golf" in text
    assert "reply from golf" in text and "4 hops" in text
    assert "golf received 'hello golf, from alpha'" in text
    m = re.search(r"rerouted in ([0-9.]+) s; pings crossed (\d+) then (\d+) hops", text)
    assert m, text
    assert float(m[1]) < 10 and int(m[2]) >= 3 and int(m[3]) >= 3
    assert "both directions on alpha → echo → delta → golf" in text
    assert not re.search(r"Traceback|\[info", out.stdout + out.stderr)


@pytest.fixture
def meshes(monkeypatch):
    """Every LocalMesh the demo creates, to check that nothing outlives it."""
    made = []

    class Recorded(demo.LocalMesh):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(demo, "LocalMesh", Recorded)
    return made


def test_a_failed_step_is_named_shown_and_cleaned_up(tmp_path, monkeypatch, meshes):
    # An expectation that cannot come true: step 2 times out.
    monkeypatch.setattr(demo, "FAST", ["alpha", "sierra", "golf"])
    monkeypatch.setattr(demo, "TIMEOUT", 1.0)
    screen = io.StringIO()
    with pytest.raises(demo.DemoFailed, match=r"step 2 \(routes converge\): timed out") as err:
        demo.run_demo(Console(file=screen, width=120), tmp_path)
    assert "expected alpha → sierra → golf" in str(err.value)
    text = screen.getvalue()
    assert re.search(r"1 .*start 7 nodes.*PASS", text)
    assert re.search(r"2 .*routes converge.*FAIL", text)
    (mesh,) = meshes
    assert len(mesh.nodes) == 7 and all(n.process.poll() is not None for n in mesh.nodes.values())
    assert len(mesh.proxies) == 2 and all(p._thread is None or not p._thread.is_alive()
                                          for p in mesh.proxies)


def test_cli_exits_non_zero_with_the_failed_step_and_removes_its_directory(tmp_path, monkeypatch):
    base = tmp_path / "demo-base"

    def mkdtemp(prefix):
        base.mkdir()
        return str(base)

    def fail(console, where):
        (where / "alpha").mkdir()
        raise demo.DemoFailed("step 6 (alpha reroutes): timed out after 30.0s waiting for x")

    monkeypatch.setattr(demo.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(demo, "run_demo", fail)
    monkeypatch.setattr(demo, "configure_logging", lambda *a, **kw: None)
    result = CliRunner().invoke(demo.command, [])
    assert result.exit_code == 1
    assert "demo failed at step 6 (alpha reroutes): timed out" in result.output
    assert "rerun with --keep" in result.output and not base.exists()


def test_start_topology_refuses_a_dial_cycle_before_starting_anything(tmp_path):
    from sporenet.local_mesh import LocalMesh, MeshError

    with LocalMesh(tmp_path) as mesh:
        with pytest.raises(MeshError, match="dial in a cycle"):
            mesh.start_topology([("a", "b", 0), ("b", "c", 0), ("c", "a", 5)])
        assert mesh.nodes == {} and mesh.proxies == []
