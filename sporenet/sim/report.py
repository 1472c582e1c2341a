"""The routing scenario's report: numbers as JSON, and plots as PNG files.

Plots use matplotlib's object API with the Agg canvas (``Figure`` +
``FigureCanvasAgg``), never pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import RoutingSample, percentiles, settle_time


@dataclass(slots=True)
class RoutingReport:
    topology: str
    nodes: int
    seed: int
    duration_s: float
    convergence_s: float | None  # from start until every pair is reachable (and stays)
    reroute_s: list[float]  # per failure: until reachability is back to 1.0
    stretch: list[float]  # per reachable pair, at the last sample
    loops_per_sample: list[int]
    control_bytes_per_node_per_s: float
    reachability: float  # at the last sample
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (t, reachability)
    failures: list[float] = field(default_factory=list)  # times of failures
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, topology: str, nodes: int, seed: int, duration_s: float,
                     samples: list[RoutingSample], *, control_bytes: int,
                     failures: list[float] = (), start: float = 0.0,
                     extra: dict[str, object] | None = None) -> RoutingReport:
        """Build the report from timed samples; ``control_bytes`` sent by all nodes."""
        timeline = [(s.t, s.reachability) for s in samples]
        first_failure = min(failures, default=math.inf)
        convergence = settle_time([p for p in timeline if p[0] < first_failure], start)
        reroutes = []
        for i, t in enumerate(sorted(failures)):
            end = sorted(failures)[i + 1] if i + 1 < len(failures) else math.inf
            took = settle_time([p for p in timeline if p[0] < end], t)
            if took is not None:
                reroutes.append(took)
        last = samples[-1] if samples else None
        return cls(topology, nodes, seed, duration_s, convergence, reroutes,
                   list(last.stretch) if last else [], [s.loops for s in samples],
                   control_bytes / max(nodes, 1) / duration_s if duration_s > 0 else 0.0,
                   last.reachability if last else 0.0, timeline, sorted(failures), dict(extra or {}))

    @property
    def total_loops(self) -> int:
        return sum(self.loops_per_sample)

    def summary(self) -> dict[str, object]:
        finite = [s for s in self.stretch if not math.isinf(s)]
        st = percentiles(finite, (50, 90, 99))
        return {
            "topology": self.topology, "nodes": self.nodes, "seed": self.seed,
            "duration_s": self.duration_s, "convergence_s": self.convergence_s,
            "reroute_s": {"count": len(self.reroute_s), **percentiles(self.reroute_s, (50, 90, 100))},
            "stretch": {"median": st["p50"], "p90": st["p90"], "p99": st["p99"],
                        "mean": sum(finite) / len(finite) if finite else None,
                        "pairs": len(self.stretch)},
            "loops": {"total": self.total_loops, "max_per_sample": max(self.loops_per_sample, default=0),
                      "samples": len(self.loops_per_sample)},
            "control_bytes_per_node_per_s": self.control_bytes_per_node_per_s,
            "reachability": self.reachability,
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_json(self, *, detail: bool = False) -> str:
        """The summary; with ``detail``, also the timeline, failures and raw reroute times."""
        out = self.summary()
        if detail:
            out.update(timeline=[list(p) for p in self.timeline], failures=self.failures,
                       reroute_samples=self.reroute_s, loops_per_sample=self.loops_per_sample)
        return json.dumps(out, indent=2, sort_keys=False)

    def write(self, out_dir: str | Path) -> list[Path]:
        """``report.json`` (with detail) and the plots, into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "report.json"
        path.write_text(self.to_json(detail=True) + "\n", encoding="utf-8")
        return [path] + self.plot(out)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """stretch_cdf.png, convergence.png and reroute_hist.png in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return [self._plot_stretch(out / "stretch_cdf.png"),
                self._plot_convergence(out / "convergence.png"),
                self._plot_reroute(out / "reroute_hist.png")]

    def _title(self, what: str) -> str:
        return f"{what} ({self.topology}, n={self.nodes}, seed={self.seed})"

    def _plot_stretch(self, path: Path) -> Path:
        fig, ax = _figure()
        data = sorted(s for s in self.stretch if not math.isinf(s))
        if data:
            ax.step(data, [(i + 1) / len(data) for i in range(len(data))], where="post")
        ax.set_xlabel("latency stretch (path / shortest)")
        ax.set_ylabel("fraction of pairs")
        ax.set_ylim(0, 1.02)
        ax.set_title(self._title("stretch CDF"))
        ax.grid(True, alpha=0.3)
        return _save(fig, path)

    def _plot_convergence(self, path: Path) -> Path:
        fig, ax = _figure()
        if self.timeline:
            ts, rs = zip(*self.timeline)
            ax.plot(ts, rs, drawstyle="steps-post", label="reachability")
        for i, t in enumerate(self.failures):
            ax.axvline(t, color="tab:red", alpha=0.4, linestyle="--", label="failure" if i == 0 else None)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("reachable pairs")
        ax.set_ylim(0, 1.02)
        ax.set_title(self._title("convergence"))
        ax.grid(True, alpha=0.3)
        if self.timeline or self.failures:
            ax.legend(loc="lower right")
        return _save(fig, path)

    def _plot_reroute(self, path: Path) -> Path:
        fig, ax = _figure()
        if self.reroute_s:
            ax.hist(self.reroute_s, bins=min(30, max(5, len(self.reroute_s))))
        ax.set_xlabel("reroute time after a failure (s)")
        ax.set_ylabel("failures")
        ax.set_title(self._title("reroute time"))
        ax.grid(True, alpha=0.3)
        return _save(fig, path)


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
