"""Simulator wall time: run_probe_scenario at scale, timed.

    python bench/sim_probe.py [--sizes 200,1000] [--seed 1] [--duration 30] [--limit 60]

For each node count, in order, one ``sporenet.sim.scenario.run_probe_scenario(n,
seed, duration)`` (defaults: average degree 4, 1 s probe interval, 2 % jitter,
no loss) timed with ``time.perf_counter``. Prints wall time, simulated events,
events per wall second, links up, frames sent and the worst link's relative RTT
error (``ProbeReport.max_rel_error``: measured smoothed RTT at the worse end
against the model's round trip). A size is skipped when the wall time
extrapolated linearly in n from the previous run would exceed ``--limit``.
"""

from __future__ import annotations

import argparse
import sys
import time

from sporenet.logs import configure_logging
from sporenet.sim.scenario import run_probe_scenario


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200,1000", help="comma-separated node counts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=30.0, help="simulated seconds")
    ap.add_argument("--limit", type=float, default=60.0, help="wall-second budget per run")
    args = ap.parse_args()
    configure_logging("warning")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"probe scenario, seed {args.seed}, {args.duration:g} simulated s")
    print(f"{'nodes':>6} {'wall s':>8} {'events':>10} {'events/s':>10} {'links up':>12}"
          f" {'frames':>10} {'max RTT err':>12}")
    last: tuple[int, float] | None = None
    for n in sizes:
        if last is not None and last[1] * n / last[0] > args.limit:
            print(f"{n:>6} skipped: about {last[1] * n / last[0]:.0f} s expected, over the {args.limit:g} s limit")
            continue
        t0 = time.perf_counter()
        rep = run_probe_scenario(n, args.seed, args.duration)
        wall = time.perf_counter() - t0
        print(f"{n:>6} {wall:>8.2f} {rep.events:>10,} {rep.events / wall:>10,.0f}"
              f" {f'{rep.links_up}/{len(rep.links)}':>12} {rep.frames_sent:>10,}"
              f" {rep.max_rel_error:>11.2%}")
        last = (n, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
