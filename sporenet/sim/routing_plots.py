"""PNG plots of ``routing_scenarios`` results, one file per scenario that ran.

matplotlib's object API with the Agg canvas (as ``report.py``): no pyplot, no global
backend. Small figures (7 x 4 in at 80 dpi) so committed PNGs stay modest.
"""

from __future__ import annotations

from pathlib import Path

from .report import _save


def _figure(cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7 * cols if cols > 1 else 7, 4), dpi=80)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    return fig, axes


def _cdf(ax, values, label=None):
    data = sorted(values)
    if data:
        ax.step(data, [(i + 1) / len(data) for i in range(len(data))], where="post", label=label)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("fraction")
    ax.grid(True, alpha=0.3)


def plot_scenarios(result: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = result["config"]
    tag = f"{cfg['topology']}, n={cfg['nodes']}, seed={cfg['seed']}"
    written = []
    for name, data in result["scenarios"].items():
        fn = _PLOTS.get(name)
        if fn is not None:
            written.append(fn(data, out / f"{name}.png", tag))
    return written


def _converge(d: dict, path: Path, tag: str) -> Path:
    fig, (a, b) = _figure(2)
    if d["timeline_series"]:
        ts, rs = zip(*[(x[0], x[1]) for x in d["timeline_series"]])
        a.plot(ts, rs, drawstyle="steps-post")
    a.set_xlabel("simulated time (s)")
    a.set_ylabel("reachable pairs")
    a.set_ylim(0, 1.02)
    a.grid(True, alpha=0.3)
    a.set_title(f"cold start ({tag})", fontsize=9)
    qs = d["stretch_cdf_series"]
    if qs:
        b.step(qs, [i / (len(qs) - 1) for i in range(len(qs))], where="post")
    b.axvline(1.05, color="tab:green", ls="--", alpha=0.5, label="1.05")
    b.axvline(1.5, color="tab:red", ls="--", alpha=0.5, label="1.5")
    b.set_xlabel("latency stretch (FIB path / Dijkstra)")
    b.set_ylabel("fraction of pairs")
    b.set_ylim(0, 1.02)
    b.grid(True, alpha=0.3)
    b.legend(loc="lower right")
    st = d.get("stretch") or {}
    b.set_title(f"stretch: median {st.get('p50', 0):.3f}, p99 {st.get('p99', 0):.3f}", fontsize=9)
    return _save(fig, path)


def _churn(d: dict, path: Path, tag: str) -> Path:
    fig, (a,) = _figure()
    ts = [x[0] for x in d["timeline_series"]]
    a.plot(ts, [x[1] for x in d["timeline_series"]], drawstyle="steps-post", label="reachability")
    a.plot(ts, [x[2] for x in d["timeline_series"]], "o", color="tab:red", ms=3,
           label=f"loops per sample (total {d['loops_total']})")
    for t in d["failures_series"]:
        a.axvline(t, color="tab:gray", alpha=0.15)
    a.set_xlabel("simulated time (s); grey lines: a node or link goes down")
    a.set_ylim(-0.02, 1.02)
    a.grid(True, alpha=0.3)
    a.legend(loc="lower left")
    a.set_title(f"churn and flaps ({tag})", fontsize=9)
    return _save(fig, path)


def _cut(d: dict, path: Path, tag: str) -> Path:
    fig, (a,) = _figure()
    per = d["per_cut"]
    _cdf(a, [c["rerouted_s"] for c in per if c["rerouted_s"] is not None], "all affected pairs rerouted")
    _cdf(a, [c["detected_s"] for c in per if c["detected_s"] is not None], "dead link detected")
    _cdf(a, [c["after_detection_s"] for c in per if c["after_detection_s"] is not None],
         "reroute after detection")
    a.axvline(3 * d["probe_interval_s"], color="tab:red", ls="--", alpha=0.5, label="3 probe intervals")
    a.set_xlabel("seconds after a silent link cut")
    a.legend(loc="lower right", fontsize=8)
    a.set_title(f"silent cuts: {d['cuts']} links ({tag})", fontsize=9)
    return _save(fig, path)


def _join(d: dict, path: Path, tag: str) -> Path:
    fig, (a,) = _figure()
    _cdf(a, d["route_series"])
    a.set_xlabel("seconds after the new node's links come up")
    a.set_title(f"nodes with a route to a joining node ({tag})", fontsize=9)
    return _save(fig, path)


def _idle(d: dict, path: Path, tag: str) -> Path:
    fig, (a,) = _figure()
    by = d["bytes_per_node_per_min_by_degree"]
    a.bar([int(k) for k in by], [v / 1024 for v in by.values()])
    a.set_xlabel("peers (degree)")
    a.set_ylabel("KiB per node per minute")
    a.grid(True, alpha=0.3)
    a.set_title(f"idle control traffic by degree ({tag})", fontsize=9)
    return _save(fig, path)


def _lossy(d: dict, path: Path, tag: str) -> Path:
    fig, (a,) = _figure()
    s = d["samples"]
    a.plot([x["t"] for x in s], [x["eligible_avoided"] for x in s], "o-",
           label="avoid lossy (loss-free path within +20 %)")
    a.plot([x["t"] for x in s], [x["no_alternative_avoided"] for x in s], "s-",
           label="avoid lossy (no such path)")
    a.axhline(0.9, color="tab:red", ls="--", alpha=0.5, label="goal 0.9")
    a.set_ylim(0, 1.02)
    a.set_xlabel("simulated time (s)")
    a.set_ylabel("fraction of flows")
    a.grid(True, alpha=0.3)
    a.legend(loc="lower right", fontsize=8)
    a.set_title(f"{d['loss'] * 100:g} % loss on {d['lossy_links']} links ({tag})", fontsize=9)
    return _save(fig, path)


_PLOTS = {"converge": _converge, "churn": _churn, "cut": _cut, "join": _join, "idle": _idle,
          "lossy": _lossy}
