"""Which process of a multi-process job this is, before any process group exists.

Launchers say it in different variables: torchrun and Lightning's own launcher set RANK and/or
LOCAL_RANK (and NODE_RANK for the node), srun sets SLURM_PROCID. A process is global rank 0 only
when none of them names another rank (an sbatch job of one task has SLURM_PROCID=0; the workers
Lightning starts inside it get LOCAL_RANK=1, ...)."""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    for name in RANK_VARIABLES:
        try:
            if int(os.environ.get(name) or 0) != 0:
                return False
        except ValueError:
            continue
    return True
