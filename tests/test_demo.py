"""`sporenet demo` is the README's first command: it must work and exit 0."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_links_measures_and_survives_a_node_loss():
    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "demo"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, COLUMNS="120"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Mesh linked and measured" in out.stdout
    assert "Both survivors dropped charlie" in out.stdout
