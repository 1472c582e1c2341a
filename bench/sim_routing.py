"""Routing simulator figures for issue [2/7]: every scenario, at 1,000 nodes by default.

Runs ``sporenet sim routing --scenario ...`` as separate processes, one at a time (each
process's peak RSS is then its own): the shared-network scenarios (converge, idle,
join, cut, churn), then lossy, then regions, at ``--nodes``; then idle alone at each
of ``--idle-sizes``. Each run writes its report.json and plots under ``--work``; this
script copies the plots to ``--figures`` as ``sim_routing_<scenario>.png``, draws
``sim_routing_idle_scaling.png`` and writes ``sim_routing.json`` (all reports, with
the git commit of the router they ran on) there.

    python bench/sim_routing.py                       # 1,000 nodes, idle at 100/300/1000
    python bench/sim_routing.py --nodes 200 --idle-sizes 100,200 --cuts 5   # quicker
    python bench/sim_routing.py --reuse --idle-sizes 100,300,1000   # add a size to the last run

A size whose run exceeds ``--timeout`` seconds is killed and reported as such.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUPS = (("base", ("converge", "idle", "join", "cut", "churn")), ("lossy", ("lossy",)),
          ("regions", ("regions",)))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(nodes: int, names, out: Path, args, *, idle_window: float | None = None) -> dict | None:
    cmd = [sys.executable, "-m", "sporenet.cli", "sim", "routing", "--nodes", str(nodes),
           "--topology", "geo", "--seed", str(args.seed), "--degree", str(args.degree),
           "--cuts", str(args.cuts), "--sample-every", str(args.sample_every),
           "--idle-window", str(idle_window or args.idle_window),
           "--lossy-settle", str(args.lossy_settle), "--out", str(out)]
    for name in names:
        cmd += ["--scenario", name]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.monotonic()
    try:
        subprocess.run(cmd, cwd=ROOT, check=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"  killed after {args.timeout} s", flush=True)
        return None
    except subprocess.CalledProcessError as exc:
        print(f"  failed: {exc}", flush=True)
        return None
    report = json.loads((out / "report.json").read_text())
    for result in report["scenarios"].values():  # the series stay in the run's own report
        for key in [k for k in result if k.endswith("_series")]:
            del result[key]
    report["process_wall_s"] = round(time.monotonic() - started, 1)
    return report


def idle_plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ns = [r["nodes"] for r in rows]
    ax.plot(ns, [r["bytes_per_node_per_min"] / 1024 for r in rows], "o-", label="per node")
    ax.plot(ns, [r["bytes_per_peer_per_min"] / 1024 for r in rows], "s-", label="per peer")
    ax.set_xscale("log")
    ax.set_xlabel("network size (nodes)")
    ax.set_ylabel("KiB per minute, idle")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("idle control traffic (probes + routing) vs network size", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--degree", type=float, default=5.0)
    p.add_argument("--cuts", type=int, default=10)
    p.add_argument("--sample-every", type=float, default=2.0)
    p.add_argument("--idle-window", type=float, default=60.0)
    p.add_argument("--lossy-settle", type=float, default=180.0,
                   help="simulated s after convergence: the loss estimate needs probes")
    p.add_argument("--idle-sizes", default="100,300,1000")
    p.add_argument("--groups", default="base,lossy,regions")
    p.add_argument("--reuse", action="store_true",
                   help="keep the runs already in --figures/sim_routing.json, run only missing ones")
    p.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    p.add_argument("--work", type=Path, default=Path("/tmp/sim_routing"))
    p.add_argument("--figures", type=Path, default=ROOT / "bench" / "figures")
    args = p.parse_args()
    args.figures.mkdir(parents=True, exist_ok=True)
    summary_path = args.figures / "sim_routing.json"
    summary = {"commit": _git("rev-parse", "--short", "HEAD"),
               "router_commit": _git("log", "-1", "--format=%h", "--", "sporenet/protocols/routing/router.py"),
               "prober_commit": _git("log", "-1", "--format=%h", "--", "sporenet/protocols/link/prober.py"),
               "nodes": args.nodes, "seed": args.seed, "degree": args.degree, "runs": {}}
    if args.reuse and summary_path.exists():  # keep earlier runs (e.g. add an idle size)
        summary["runs"] = json.loads(summary_path.read_text()).get("runs", {})
    wanted = args.groups.split(",")
    for group, names in GROUPS:
        if group not in wanted or summary["runs"].get(f"{group}_{args.nodes}"):
            continue
        out = args.work / f"{group}_{args.nodes}"
        report = run(args.nodes, names, out, args)
        summary["runs"][f"{group}_{args.nodes}"] = report
        if report is not None:
            for name in names:
                if (out / f"{name}.png").exists():
                    shutil.copy(out / f"{name}.png", args.figures / f"sim_routing_{name}.png")
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    rows = []
    for size in [int(x) for x in args.idle_sizes.split(",") if x]:
        key = f"base_{size}"
        report = summary["runs"].get(key)
        report = report or summary["runs"].get(f"idle_{size}")
        if report is None:
            report = run(size, ("idle",), args.work / f"idle_{size}", args)
            summary["runs"][f"idle_{size}"] = report
        if report is not None:
            idle = report["scenarios"]["idle"]
            rows.append({"nodes": size, "bytes_per_node_per_min": idle["bytes_per_node_per_min"]["mean"],
                         "bytes_per_peer_per_min": idle["bytes_per_peer_per_min"]["mean"],
                         "max_rss_mb": idle["max_rss_mb"]})
        summary["idle_scaling"] = rows
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    if rows:
        idle_plot(rows, args.figures / "sim_routing_idle_scaling.png")
    print(json.dumps(summary["idle_scaling"] if rows else {}, indent=1))
    print(f"wrote {summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
