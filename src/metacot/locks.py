"""One process at a time for work two runs must not do together (training one experiment).

Jobs of a parallel sweep (`hydra/launcher=local` or `slurm`) that differ only in later stages share
their SFT experiment. Without a lock both would train it at once, writing the same `last.ckpt` and
export; with it the second waits, then finds the model trained and goes on. The lock is an advisory
`flock` on a file next to the work (local file systems and NFSv4; where `fcntl` does not exist, as
on Windows, there is no lock). Only global rank 0 of a job takes it: the other ranks of a DDP job
are started by rank 0, which already holds it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def _rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) inside the block. When another process
    holds it, say who (`host pid N`, written in the file) and wait for it."""
    if fcntl is None or not _rank_zero():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            log.warning("%s is in use by %s: waiting until it is done (%s)", what, holder, path)
            fcntl.flock(f, fcntl.LOCK_EX)
            log.info("%s is free: going on", what)
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
