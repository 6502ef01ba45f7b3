"""Atomic JSON files: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def finite(x: Any) -> Any:
    """NaN/inf -> None, recursively (the files are strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def umask() -> int:
    """The process umask. Linux reports it in /proc/self/status; elsewhere reading it means setting
    it (`os.umask`) and restoring it at once, which a thread creating a file meanwhile could see."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: Path | str, data: Any) -> None:
    """Write `data` to `path` atomically, readable as any new file is (0666 less the umask: mkstemp
    makes its file owner-only, which would hide results from the rest of a team)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            if hasattr(os, "fchmod"):  # not on Windows before Python 3.13 (where mkstemp's mode is moot)
                os.fchmod(f.fileno(), 0o666 & ~umask())
            json.dump(finite(data), f, indent=2, sort_keys=True, default=str, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
