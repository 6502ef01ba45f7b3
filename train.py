"""Thin shim so `python train.py stage=... task=...` works from a checkout."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from metacot.train import main  # noqa: E402

if __name__ == "__main__":
    main()
