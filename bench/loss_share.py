"""Each overlay's throughput with underlay loss as a share of its lossless figure.

    python bench/loss_share.py RESULTS_DIR

RESULTS_DIR holds the peer harness's ``<stamp>-<overlay>.json`` files of one lossless
and one lossy run (bench/throughput makes both); a file's ``shaping`` says which it is.
Prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    figures: dict[tuple[str, str], dict[str, dict]] = {}
    for path in sorted(Path(argv[0]).glob("*.json")):
        run = json.loads(path.read_text())
        for topo, r in run.get("topologies", {}).items():
            if r.get("status") != "ok":
                continue
            kind = "lossless" if r.get("shaping", "none") == "none" else "lossy"
            figures.setdefault((run["overlay"], topo), {})[kind] = r
    print("| overlay | hosts | TCP×1 lossless → lossy Mbit/s | share | TCP×4 lossless → lossy Mbit/s | share |")
    print("|---|---|--:|--:|--:|--:|")
    for (overlay, topo), runs in figures.items():
        if "lossless" not in runs or "lossy" not in runs:
            continue
        cells = []
        for test in ("tcp1", "tcp4"):
            a = runs["lossless"].get(test, {}).get("mbit_s")
            b = runs["lossy"].get(test, {}).get("mbit_s")
            if a and b is not None:
                cells += [f"{a:.0f} → {b:.0f}", f"{100 * b / a:.0f} %"]
            else:
                cells += ["–", "–"]
        print(f"| {overlay} | {topo} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
