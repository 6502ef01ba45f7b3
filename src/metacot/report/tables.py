"""Tables of the report: cells, mean ± std over seeds, Markdown and CSV.

A table is a list of columns and rows of cells; a cell is a string, a number, None (shown "-")
or a `Stat` (mean ± std over the runs of a group). The CSV of a table spells a `Stat` column as
three columns, `<col>`, `<col>_std` and `<col>_n`, so it stays machine-readable.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from metacot.report.collect import finite

T = TypeVar("T")
K = TypeVar("K")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; None for a single value) of n finite values."""

    mean: float | None
    std: float | None
    n: int


def stat(values: Iterable[Any]) -> Stat:
    xs = [v for v in (finite(x) for x in values) if v is not None]
    if not xs:
        return Stat(None, None, 0)
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Stat(mean, std, len(xs))


@dataclass
class Table:
    name: str  # CSV file stem
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells shown in bold
    formats: dict[str, str] = field(default_factory=dict)  # column -> number format, instead of the automatic one

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def drop_empty(self, keep: Iterable[str] = ()) -> Table:
        """Without the columns whose every cell is missing (e.g. ILR on a task that has none)."""
        keep = set(keep)
        idx = [i for i, c in enumerate(self.columns) if c in keep or any(_present(r[i]) for r in self.rows)]
        old = {j: i for i, j in enumerate(idx)}
        bold = {(r, old[c]) for r, c in self.bold if c in old}
        return Table(self.name, [self.columns[i] for i in idx], [[r[i] for i in idx] for r in self.rows], bold,
                     self.formats)


def _present(cell: Any) -> bool:
    if isinstance(cell, Stat):
        return cell.mean is not None
    if isinstance(cell, float):
        return math.isfinite(cell)
    return cell is not None


def number_spec(cells: Iterable[Any]) -> str:
    """One format for a whole column (as metacot.eval.table does): integers when every number is one
    and the column is a count (ints, or values above 1), else 3 decimals (1 for large values)."""
    raw = [c for c in cells if isinstance(c, (int, float, Stat)) and not isinstance(c, bool)]
    nums = [v for c in raw for v in ((c.mean, c.std) if isinstance(c, Stat) else (c,)) if finite(v) is not None]
    if not nums:
        return ".3f"
    ints = all(isinstance(c, int) for c in raw)
    if all(float(v).is_integer() for v in nums) and (ints or max(abs(v) for v in nums) > 1):
        return ".0f"
    return ".1f" if max(abs(v) for v in nums) >= 100 else ".3f"


def fmt_cell(cell: Any, spec: str = ".3f") -> str:
    if isinstance(cell, Stat):
        if cell.mean is None:
            return "-"
        return format(cell.mean, spec) + (f" ± {cell.std:{spec}}" if cell.std is not None else "")
    if cell is None or isinstance(cell, (int, float)) and not isinstance(cell, bool):
        value = finite(cell)
        return "-" if value is None else format(value, spec)
    return str(cell)


def to_markdown(table: Table) -> str:
    specs = [table.formats.get(c) or number_spec(r[j] for r in table.rows) for j, c in enumerate(table.columns)]

    def cell(i: int, j: int, value: Any) -> str:
        text = fmt_cell(value, specs[j]).replace("|", "\\|").replace("\n", " ")
        return f"**{text}**" if (i, j) in table.bold and text != "-" else text

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    for i, row in enumerate(table.rows):
        lines.append("| " + " | ".join(cell(i, j, v) for j, v in enumerate(row)) + " |")
    return "\n".join(lines)


def csv_cells(columns: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Stat columns expanded to value/std/n; missing values as empty cells."""
    stat_cols = {j for j in range(len(columns)) if any(isinstance(r[j], Stat) for r in rows)}
    header = []
    for j, c in enumerate(columns):
        header += [c, f"{c}_std", f"{c}_n"] if j in stat_cols else [c]
    out = []
    for row in rows:
        line: list[Any] = []
        for j, v in enumerate(row):
            if j in stat_cols:
                s = v if isinstance(v, Stat) else stat([v])
                line += [_csv(s.mean), _csv(s.std), s.n]
            else:
                line.append(_csv(v))
        out.append(line)
    return header, out


def _csv(value: Any) -> Any:
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    header, body = csv_cells(columns, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)
    return path


def write_table(table: Table, out_dir: Path) -> Path:
    return write_csv(out_dir / f"{table.name}.csv", table.columns, table.rows)


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Items grouped by key, groups sorted by key (strings naturally: job 10 after job 9)."""
    groups: dict[K, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(key: Any) -> Any:
    if isinstance(key, tuple):
        return tuple(_sort_key(k) for k in key)
    return (0, key, "") if isinstance(key, (int, float)) else (1, 0, str(key))


STAGE_ORDER = {"symbolic": 0, "sft": 1}


def stage_order(label: str) -> tuple[int, str]:
    """symbolic, then sft, then rl:<algo> (alphabetical), then anything else."""
    return (STAGE_ORDER.get(label, 2 if label.startswith("rl:") else 3), label)
