"""Plots of evaluation results (PNG). Uses matplotlib's Agg canvas directly, so importing this
never changes the process-wide backend and works on machines without a display."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def passk_curve(metrics: dict[str, float]) -> dict[int, float]:
    """The `pass@k` entries of a flat metrics dict, as {k: value}, sorted by k."""
    curve = {}
    for key, value in metrics.items():
        if key.startswith("pass@") and key[5:].isdigit() and value is not None:
            curve[int(key[5:])] = float(value)
    return dict(sorted(curve.items()))


def plot_passk(curves: dict[str, dict[int, float]], path: str | Path, title: str = "pass@k") -> Path:
    """One curve per label (a split, or `model/split`); k on a log2 axis. Labels whose curve is
    empty are listed in the legend as "(no samples)" so a missing run is visible, not silent."""
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    all_ks: set[int] = set()
    for label, curve in curves.items():
        points = [(k, v) for k, v in sorted(curve.items()) if v is not None and math.isfinite(v)]
        if not points:
            ax.plot([], [], label=f"{label} (no samples)")
            continue
        ks, vs = zip(*points, strict=True)
        all_ks.update(ks)
        ax.plot(ks, vs, marker="o", label=label)
    if all_ks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_ks))
        ax.set_xticklabels([str(k) for k in sorted(all_ks)])
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
