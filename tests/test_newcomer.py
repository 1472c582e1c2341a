"""What a newcomer does first: clone, install without ``-e``, run the README's first command.

A fresh clone of this repository (its committed tree) in a temporary directory, a
fresh venv, then the README's first setup command exactly as written, run by a shell
from the clone's root with the venv first on PATH (an activated venv). It must exit 0.
An editable install, or running anywhere but the clone's root, would hide a package
that imports only by accident (docs/decisions.md, "Layout").
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent


def readme_first_command() -> str:
    """The first indented command under "## Setup" in README.md."""
    text = (REPO / "README.md").read_text()
    setup = text.split("## Setup", 1)[1]
    m = re.search(r"^    (\S.*)$", setup, flags=re.M)
    assert m, "README.md: no indented command under '## Setup'"
    return m[1].strip()


def test_readme_names_a_non_editable_install_and_the_demo():
    command = readme_first_command()
    assert "pip install ." in command and "-e" not in command.split()
    assert command.endswith("sporenet demo")


def test_fresh_clone_non_editable_install_runs_the_readme_first_command(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed; the newcomer test clones the repository")
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git work tree; nothing to clone")
    clone = tmp_path / "sporenet"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A newcomer's shell: the venv activated, nothing of ours on PYTHONPATH.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               COLUMNS="120")
    command = readme_first_command()
    out = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, f"`{command}` in a fresh clone exited {out.returncode}:\n" \
                                f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    assert "Traceback" not in out.stdout + out.stderr
    # The demo ran from the installed package, not from the clone's folder.
    where = subprocess.run([str(venv / "bin" / "python"), "-P", "-c",
                            "import sporenet; print(sporenet.__file__)"], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert str(venv) in where.stdout
