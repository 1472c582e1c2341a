"""Test-wide setup: quiet structlog (warnings and errors only) so failures stand out,
and the `mesh` fixture of real nodes used by the multi-process tests."""

import pytest

from sporenet.local_mesh import LocalMesh
from sporenet.logs import configure_logging

configure_logging("warning", "console")


@pytest.fixture
def mesh(tmp_path):
    """Real ``sporenet up`` processes on loopback, probing every 0.2 s, all stopped after."""
    m = LocalMesh(tmp_path, extra_args=("--probe-interval", "0.2"))
    try:
        yield m
    finally:
        m.close()
