"""protocols/ stays sans-IO: no I/O, thread or clock imports, no global randomness."""

import ast
import pathlib

import pytest

PROTOCOLS = pathlib.Path(__file__).resolve().parent.parent / "sporenet" / "protocols"
FORBIDDEN_MODULES = {"socket", "zmq", "threading", "asyncio", "trio", "pykka", "select",
                     "selectors", "time", "multiprocessing", "subprocess", "concurrent"}
# Module-level functions of ``random`` use the hidden global generator.
RANDOM_GLOBALS = {"random", "randint", "randrange", "uniform", "choice", "choices", "shuffle",
                  "sample", "getrandbits", "randbytes", "gauss", "seed", "betavariate",
                  "expovariate", "normalvariate", "triangular", "lognormvariate"}
CLOCK_CALLS = {"time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "sleep"}
FILES = sorted(PROTOCOLS.rglob("*.py"))


def violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            root = node.module.split(".")[0]
            if root in FORBIDDEN_MODULES:
                found.append(node.module)
            if root == "random":
                found += [f"random.{a.name}" for a in node.names if a.name in RANDOM_GLOBALS]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "random" and node.attr in RANDOM_GLOBALS:
                found.append(f"random.{node.attr}")
            if node.value.id == "time" and node.attr in CLOCK_CALLS:
                found.append(f"time.{node.attr}")
    return found


def test_there_are_protocol_modules():
    assert len(FILES) >= 5


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_module_is_sans_io(path):
    assert violations(path) == []


def test_checker_catches_offenders(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nimport time\nfrom threading import Thread\n"
                   "import random\nx = random.random()\ny = time.monotonic()\n"
                   "from random import choice\n")
    assert set(violations(bad)) == {"socket", "time", "threading", "random.random",
                                    "time.monotonic", "random.choice"}
    ok = tmp_path / "ok.py"
    ok.write_text("import random\ndef f(rng: random.Random):\n    return rng.random()\n")
    assert violations(ok) == []
