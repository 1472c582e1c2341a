"""The installed distribution holds every package in the tree.

An editable install finds any folder on disk, so a package left out of
setup.cfg only shows up after a plain ``pip install .``, as an ImportError
on the user's first command. This reads setup.cfg the way setuptools does
and compares it with the folders that hold an ``__init__.py``.
"""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _options() -> tuple[dict[str, str], set[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    mapping = {}
    for line in config["options"]["package_dir"].strip().splitlines():
        name, _, folder = line.partition("=")
        mapping[name.strip()] = folder.strip()
    packages = {line.strip() for line in config["options"]["packages"].split() if line.strip()}
    return mapping, packages


def test_every_package_folder_is_listed_in_setup_cfg() -> None:
    mapping, packages = _options()
    on_disk = set()
    for top, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base)
            parts = [] if str(relative) == "." else list(relative.parts)
            on_disk.add(".".join([top, *parts]))
    missing = sorted(on_disk - packages)
    assert not missing, f"add these to [options] packages in setup.cfg: {missing}"


def test_every_listed_package_exists() -> None:
    mapping, packages = _options()
    for package in packages:
        top, *rest = package.split(".")
        # The longest mapped prefix decides the folder, as in setuptools.
        best = max((name for name in mapping if package == name or package.startswith(name + ".")), key=len)
        tail = package[len(best):].lstrip(".")
        folder = ROOT / mapping[best] / Path(*tail.split(".")) if tail else ROOT / mapping[best]
        assert (folder / "__init__.py").is_file(), f"{package} is listed but {folder} has no __init__.py"
