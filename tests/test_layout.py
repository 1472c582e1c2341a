"""The package's shape: which part of ``sporenet.protocols`` may import which, and no
import circles anywhere in ``sporenet`` (docs/development.md "Layout").

The graph is read from the source (``ast``) and counts every import, those inside a
function too: a deferred import that closes a circle still ties the two modules
together, it only hides the circle from the interpreter.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sporenet"
SHARED = {"wire", "identity", "base", "errors", "notices", "routed"}
# subpackage of sporenet.protocols -> the subpackages it may import besides SHARED
ALLOWED = {"link": set(), "routing": set(), "sessions": set(), "contracts": set(),
           "overlay": {"sessions"}, "datapath": {"sessions"}}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Dotted names of every module ``path`` imports, at load time or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # ``from pkg import mod``
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    state: dict[str, int] = {}   # 1 = on the stack, 2 = done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := walk(start)):
            return found
    return None


def part_of(module: str) -> str | None:
    """``sporenet.protocols.sessions.data`` -> ``sessions``; a shared module -> ``shared``."""
    parts = module.split(".")
    if parts[:2] != ["sporenet", "protocols"]:
        return None
    if len(parts) == 2:
        return "shared"
    return "shared" if parts[2] in SHARED else parts[2]


def test_no_import_circles():
    assert find_cycle(graph()) is None


def test_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_protocols_module_belongs_to_a_declared_part():
    parts = {part_of(m) for m in graph() if part_of(m)}
    assert parts <= {"shared", *ALLOWED}


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_protocols_part_imports_only_what_it_may(part):
    may = {"shared", part, *ALLOWED[part]}
    bad = sorted(f"{mod} -> {dep}" for mod, deps in graph().items() if part_of(mod) == part
                 for dep in deps if dep.startswith("sporenet.") and part_of(dep) not in may)
    assert bad == []


def test_shared_protocols_modules_import_no_part():
    bad = sorted(f"{mod} -> {dep}" for mod, deps in graph().items() if part_of(mod) == "shared"
                 for dep in deps if dep.startswith("sporenet.") and part_of(dep) != "shared")
    assert bad == []


def test_protocols_import_nothing_outside_protocols():
    bad = sorted(f"{mod} -> {dep}" for mod, deps in graph().items() if part_of(mod)
                 for dep in deps if dep.startswith("sporenet.") and not part_of(dep))
    assert bad == []


def test_part_rule_catches_an_offender():
    # the checker itself: a sessions module importing routing is reported
    assert part_of("sporenet.protocols.routing.table") not in {"shared", "sessions"}
    assert part_of("sporenet.protocols.wire") == "shared"
    assert part_of("sporenet.agents.link") is None
