"""One process at a time for work two runs must not do together (training one experiment).

Jobs of a parallel sweep (`hydra/launcher=local` or `slurm`) that differ only in later stages share
their SFT experiment. Without a lock both would train it at once, writing the same `last.ckpt` and
export; with it the second waits, then finds the model trained and goes on. The lock is an advisory
`flock` on a file next to the work (local file systems and NFSv4; where `fcntl` does not exist, as
on Windows, or the file system refuses locks, there is none, with a warning). Only global rank 0 of a
job takes it (`metacot.ranks`): the other ranks are part of the same job, and waiting for rank 0's
lock would deadlock them (rank 0 waits for them inside `fit`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metacot.ranks import is_rank_zero

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) inside the block. When another process
    holds it, say who (`host pid N`, written in the file) and wait for it."""
    if fcntl is None or not is_rank_zero():
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
        except OSError as e:  # ENOLCK/ENOSYS: a file system without locks (some NFS, Lustre without flock)
            log.warning("cannot lock %s (%s): %s goes on unlocked; do not run two jobs on it at once", path, e, what)
            yield
            return
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
