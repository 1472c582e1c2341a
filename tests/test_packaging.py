"""The installed distribution holds every module in the tree.

setup.cfg finds packages with ``packages = find:``, which takes only folders that
hold an ``__init__.py``. A folder of modules without one works from the source tree
(as a namespace package) and in an editable install, and is missing after a plain
``pip install .``: an ImportError on the user's first command. This asks setuptools
what it would install and compares it with every folder of ``.py`` files.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def _found() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options"]["packages"].strip() == "find:"
    include = config["options.packages.find"]["include"].split()
    return set(find_packages(where=str(ROOT), include=include))


def test_every_folder_of_modules_is_a_package_setuptools_finds() -> None:
    folders = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "sporenet").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(folders - _found())
    assert not missing, f"add an __init__.py to these folders (setuptools skips them): {missing}"


def test_only_the_sporenet_package_installs() -> None:
    found = _found()
    assert "sporenet" in found and "sporenet.protocols.sessions" in found
    assert all(p == "sporenet" or p.startswith("sporenet.") for p in found), found
