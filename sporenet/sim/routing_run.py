"""Run the routing scenarios by name: the shared-network ones (``routing_scenarios``) and
the variant-network ones (``routing_variants``), in ``SCENARIOS`` order, into one report.

This module sits above both, so neither imports the other's caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from typing import Callable, Iterator

from .routing_scenarios import SCENARIOS, SHARED, Config, Context
from .routing_variants import OWN


def code_blobs() -> dict[str, str]:
    """Git blob ids of the protocol sources this process runs (``git log --find-object``
    names the commit), since the figures depend on them and the tree may be dirty."""
    import hashlib
    from pathlib import Path

    from sporenet.protocols.link import prober
    from sporenet.protocols.routing import messages, router, table

    root = Path(router.__file__).resolve().parent.parent
    out = {}
    for mod in (router, prober, table, messages):
        path = Path(mod.__file__).resolve()
        data = path.read_bytes()
        out[path.relative_to(root).as_posix()] = (
            hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()[:12])
    return out


def run_scenarios(cfg: Config, names: list[str] | tuple[str, ...] = SCENARIOS,
                  progress: Callable[[str, dict], None] | None = None) -> dict[str, object]:
    """The named scenarios, always in ``SCENARIOS`` order (see the module docstring)."""
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenario(s) {sorted(unknown)}; one of {', '.join(SCENARIOS)}")
    out: dict[str, object] = {"config": dataclasses.asdict(cfg), "code": code_blobs(),
                              "scenarios": {}}
    with few_full_collections():
        ctx = Context(cfg)
        for name in SCENARIOS:
            if name not in names:
                continue
            result = SHARED[name](ctx) if name in SHARED else OWN[name](cfg)
            out["scenarios"][name] = result
            if progress is not None:
                progress(name, result)
    return out


@contextlib.contextmanager
def few_full_collections() -> Iterator[None]:
    """Run with (almost) no full garbage collections, then restore the thresholds.

    A simulated network holds tens of millions of long-lived objects (N x degree
    routes) and makes no reference cycles on its hot path, so each full collection
    scans all of them and frees nothing: measured at 300 nodes, 32 full collections
    took 30 % of a cold start's wall time, and the share grows with N. Young
    generations are still collected.
    """
    old = gc.get_threshold()
    gc.set_threshold(old[0], old[1], 1_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*old)
