"""`python -m metacot.report <sweep or run dirs> [--out DIR]`: one report over every run found.

Writes `report.md`, one CSV per table (and `runs.csv`: every metric of every evaluated model and
split), `passk_*.png`, `budget_*.png`, `compute_*.png`, and the same figures to
`<out>/tensorboard`. docs/REPORTS.md says how to read each section.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from metacot.report.collect import RESULTS, evaluations, load_runs, metric_rows
from metacot.report.curves import boundary_section, budget_section, compute_section, passk_section
from metacot.report.figures import FigureSink
from metacot.report.sections import (
    Section,
    behaviour_section,
    efficiency_section,
    runs_section,
    solve_section,
)
from metacot.report.tables import to_markdown, write_csv, write_table

NO_RESULTS = (
    "report: no {name} found under {dirs}. A run directory must contain {name} (written by train.py at the "
    "end of every run, with `status`, `config`, `overrides` and one summary per stage under `stages`); "
    "pass a run directory or a sweep directory whose job directories hold one."
)


def render(sections: list[Section], dirs: list[str]) -> str:
    lines = ["# metacot report", "", f"Runs under {', '.join(f'`{d}`' for d in dirs)}, built "
             f"{datetime.now().isoformat(timespec='seconds')}. Numbers are mean ± std (sample std) over runs "
             "that differ only in their seed; `n` counts them. Every table is also a CSV next to this file "
             "(`runs.csv` holds every metric of every run). How to read it: docs/REPORTS.md.", ""]
    for i, section in enumerate(sections, 1):
        lines += [f"## {i}. {section.title}", "", section.intro, ""]
        for table in section.tables:
            lines += [to_markdown(table), "", f"CSV: `{table.name}.csv`", ""]
        if not section.tables and not section.notes:
            lines += ["_No data for this section in these runs._", ""]
        lines += [f"![{name}]({name})" for name in section.figures]
        if section.figures:
            lines.append("")
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
    return "\n".join(lines)


def build_report(dirs: list[str | Path], out: str | Path | None = None) -> tuple[Path, str]:
    """Write the report of every run under `dirs` into `out` (default `<first dir>/report`);
    returns (path of report.md, one-line summary)."""
    dirs = [str(d) for d in dirs]
    runs, unreadable = load_runs(dirs)
    if not runs and not unreadable:
        raise SystemExit(NO_RESULTS.format(name=RESULTS, dirs=", ".join(dirs)))
    out_dir = Path(out) if out is not None else Path(dirs[0]) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    evals = evaluations(runs)
    sink = FigureSink(out_dir)
    try:
        sections = [runs_section(runs, unreadable), solve_section(evals), efficiency_section(evals),
                    passk_section(evals, sink), boundary_section(evals), behaviour_section(evals),
                    budget_section(evals, sink), compute_section(evals, sink)]
        for section in sections:
            for table in section.tables:
                write_table(table, out_dir)
        columns, rows = metric_rows(evals)
        write_csv(out_dir / "runs.csv", columns, [[row.get(c) for c in columns] for row in rows])
        text = render(sections, dirs)
        (out_dir / "report.md").write_text(text + "\n")
        sink.add_text("report", text)
    finally:
        sink.close()
    complete = sum(r.status == "complete" for r in runs)
    summary = (f"{len(runs)} runs ({complete} complete, {len(runs) - complete} failed/running, "
               f"{len(unreadable)} unreadable), {len(evals)} evaluated models, {len(sink.saved)} plots")
    return out_dir / "report.md", summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metacot.report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively for results.json)")
    parser.add_argument("--out", default=None, help="output directory (default: <first dir>/report)")
    args = parser.parse_args(argv)
    path, summary = build_report(args.dirs, args.out)
    print(path)
    print(f"report: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
