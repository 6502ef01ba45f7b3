"""Collect every run's `results.json` under sweep/run directories into one report: Markdown
tables, CSVs, PNG plots and TensorBoard figures.

    python -m metacot.report DIR... [--out DIR]      # or scripts/report.py; see docs/REPORTS.md

The entry points are `metacot.report.__main__.main` (the CLI) and `build_report` there.
"""
