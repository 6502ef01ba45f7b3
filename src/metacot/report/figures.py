"""Plots of the report: PNG files, each also logged to TensorBoard as a figure.

Like `metacot.eval.plots`, figures draw on matplotlib's Agg canvas directly, so building a report
never changes the process-wide backend and works without a display.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LEGEND_INSIDE_LINES = 6  # a longer legend goes beside the axes: inside it would cover the curves
LEGEND_WIDTH = 36  # characters per legend line (longer labels wrap)
LEGEND_MAX_LINES = 3  # lines per legend entry (the rest is cut, marked "…")


class FigureSink:
    """Saves figures as `<out>/<name>.png` and logs them to `<out>/tensorboard` (one event file per
    report: older event files there are removed so TensorBoard does not show stale figures)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.saved: list[Path] = []
        self._writer: Any = None

    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            tb = self.out_dir / "tensorboard"
            for old in tb.glob("events.out.tfevents.*"):
                old.unlink()
            self._writer = SummaryWriter(str(tb))
        return self._writer

    def save(self, name: str, fig: Figure) -> str:
        path = self.out_dir / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        self.writer().add_figure(f"report/{name}", fig, global_step=0, close=False)
        self.saved.append(path)
        return path.name

    def add_text(self, tag: str, text: str) -> None:
        self.writer().add_text(tag, text, 0)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _axes(title: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def legend_labels(labels: list[str]) -> tuple[list[str], str]:
    """(labels, shared) for curves drawn together: the words every label has (e.g. overrides all
    runs of the figure share, the one model of all curves) are dropped from each label and returned
    once as `shared`, so a legend entry says only how its curve differs from the others. Labels stay
    whole when that would leave one empty or make two the same."""
    words = [label.split() for label in labels]
    shared = set.intersection(*(set(w) for w in words)) if len(words) > 1 else set()
    short = [" ".join(w for w in ws if w not in shared) for ws in words]
    if not shared or not all(short) or len(set(short)) < len(set(labels)):
        return list(labels), ""
    return short, " ".join(w for w in words[0] if w in shared)


def _wrap(text: str) -> str:
    lines = textwrap.wrap(text, LEGEND_WIDTH, break_on_hyphens=False, max_lines=LEGEND_MAX_LINES, placeholder=" …")
    return "\n".join(lines) or text


def _finish(fig: Figure, ax: Any) -> Figure:
    """Legend and layout: short wrapped labels (`legend_labels`, their shared words as the legend's
    title), beside the axes when they would not fit inside without covering the curves."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        short, shared = legend_labels(labels)
        texts = [_wrap(label) for label in short]
        title = _wrap(shared) if shared else None
        lines = sum(t.count("\n") + 1 for t in texts) + (title.count("\n") + 1 if title else 0)
        if lines > LEGEND_INSIDE_LINES:  # widen the figure by the legend so the axes keep their size
            fig.set_figwidth(fig.get_figwidth() + 0.075 * LEGEND_WIDTH)
            ax.legend(handles, texts, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                      fontsize="small", title_fontsize="small")
        else:
            ax.legend(handles, texts, title=title, loc="best", fontsize="small", title_fontsize="small")
    with warnings.catch_warnings():  # many long labels: an untightened layout is still a readable plot
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def passk_figure(curves: dict[str, dict[int, float]], flat: dict[str, float], title: str) -> Figure:
    """Model pass@k curves (markers) and symbolic solve rates (dashed, flat: search is deterministic),
    k on a log2 axis."""
    fig, ax = _axes(title)
    ks = sorted({k for c in curves.values() for k in c}) or [1]
    for label, curve in curves.items():
        points = [(k, v) for k, v in sorted(curve.items()) if v is not None and math.isfinite(v)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    for label, value in flat.items():
        ax.plot([ks[0], ks[-1]], [value, value], linestyle="--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    return _finish(fig, ax)


def budget_figure(grid: list[float], curves: dict[str, list[float]], symbolic: dict[str, list[float]],
                  title: str) -> Figure:
    """Fraction solved within a token budget: one step curve per model, dashed for symbolic search."""
    fig, ax = _axes(title)
    for label, ys in curves.items():
        ax.step(grid, ys, where="post", label=label)
    for label, ys in symbolic.items():
        ax.step(grid, ys, where="post", linestyle="--", label=label)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("trace-token budget B (completion tokens)")
    ax.set_ylabel("fraction solved with tokens <= B")
    return _finish(fig, ax)


def compute_figure(lines: dict[str, list[tuple[float, float]]], xlabel: str, title: str) -> Figure:
    """Unseen solve rate against training compute, one line per (search, format), log x."""
    fig, ax = _axes(title)
    for label, points in lines.items():
        points = sorted(p for p in points if p[0] > 0)
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("unseen solve rate")
    return _finish(fig, ax)
