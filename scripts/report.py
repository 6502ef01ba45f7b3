"""Build the report of a sweep or of runs: a thin wrapper of `python -m metacot.report`.

    python scripts/report.py logs/sweeps/<sweep> [logs/runs/<timestamp> ...] [--out DIR]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from metacot.report.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
