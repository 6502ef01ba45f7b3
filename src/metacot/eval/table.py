"""A compact text table of evaluation results: one row per metric, one column per split (e.g.
`val` = seen targets, `test_unseen` = unseen), the model's numbers next to the symbolic
algorithm's on the same problems."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Model metric, then the symbolic algorithm's counterpart on the same problems.
ROWS = (
    "solve_rate", "symbolic_solve_rate", "optimal_rate", "symbolic_optimal_rate", "swc", "ilr",
    "fidelity", "invalid_format_rate", "tokens_per_problem", "symbolic_tokens", "tokens_per_solve",
    "model_nodes", "symbolic_nodes", "model_backtracks", "symbolic_backtracks", "model_depth",
    "symbolic_depth", "num_problems",
)


def _finite(value: float | None) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def fmt_row(values: Sequence[float | None]) -> list[str]:
    """One row's cells in one style: integers when every value is one (counts), else 3 decimals
    for rates and small numbers, 1 for values of 10 and more (token and node counts); "-" for a
    missing or undefined (NaN) value."""
    finite = [float(v) for v in values if _finite(v)]
    integral = bool(finite) and all(v.is_integer() for v in finite) and max(abs(v) for v in finite) > 1
    big = bool(finite) and max(abs(v) for v in finite) >= 10
    spec = ".0f" if integral else ".1f" if big else ".3f"
    return [format(float(v), spec) if _finite(v) else "-" for v in values]


def format_table(results: dict[str, dict[str, float | None]], rows: Sequence[str] | None = None) -> str:
    """`results` maps a column label to its flat metrics. Default rows: `ROWS` then every pass@k
    found (sorted by k); rows no column has are skipped."""
    if rows is None:
        passk = sorted({k for m in results.values() for k in m if k.startswith("pass@") and k[5:].isdigit()},
                       key=lambda k: int(k[5:]))
        rows = [*ROWS, *passk]
    rows = [r for r in rows if any(r in m for m in results.values())]
    columns = list(results)
    cells = [["metric", *columns]] + [[r, *fmt_row([results[c].get(r) for c in columns])] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
