"""FSDP from inside one Lightning training step (the RL stage).

Lightning's FSDP root wraps the LightningModule, so its forward runs `training_step`. SFT does one
forward and one backward per step and FSDP's bookkeeping works as designed. An RL step instead
runs rollouts, several backward passes and optimizer steps inside that one forward, and FSDP (the
`FullyShardedDataParallel` API that Lightning's `FSDPStrategy` uses) then needs two helpers:

- `finish_backward(root)` after each backward: FSDP finalises a backward (gradients moved to
  the parameters' `.grad`, parameters resharded, every unit back to IDLE) in a callback that only
  the root's own outputs queue; an RL loss comes from the policy unit, so it is run by hand. Without
  it, checkpointing and `state_dict` failed on sharded ranks ("expects IDLE, got BACKWARD_POST").
- `fsdp_idle(root)` around root-only calls (`clip_grad_norm_`) while the root's forward is running.

Both are no-ops for anything but an FSDP root. They use FSDP internals (`_runtime_utils`,
`training_state`), present from torch 2.0 to at least 2.13; `tests/slow/test_rl_fsdp_cpu.py`
checks them against a plain process (emulated on the CPU, 1 and 2 ranks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def _root_state(root: nn.Module):
    """`root` if it is an initialised FSDP root, else None."""
    if type(root).__name__ != "FullyShardedDataParallel" or not getattr(root, "_is_root", False):
        return None
    return root


def finish_backward(root: nn.Module) -> None:
    """Run FSDP's end-of-backward callback on `root` unless a backward of its own outputs queued it."""
    state = _root_state(root)
    if state is None or getattr(state, "_post_backward_callback_queued", False):
        return
    from torch.distributed.fsdp._runtime_utils import _post_backward_final_callback

    _post_backward_final_callback(state, root)


@contextmanager
def fsdp_idle(root: nn.Module) -> Iterator[None]:
    """Let FSDP's root-only calls (`clip_grad_norm_`) run inside the root's own forward.

    Lightning's FSDP root wraps the LightningModule, so a manual-optimization step (RL: rollouts,
    several backward passes and optimizer steps in one `training_step`) runs inside the root's
    forward, where the root's state is FORWARD_BACKWARD and `clip_grad_norm_` refuses to run.
    Clipping only reads and scales the sharded gradients, so it is marked IDLE for that call and
    restored after. Outside a forward (SFT: automatic optimization) this changes nothing."""
    from torch.distributed.fsdp._common_utils import TrainingState

    state = getattr(root, "training_state", None)
    if state is not TrainingState.FORWARD_BACKWARD:
        yield
        return
    root.training_state = TrainingState.IDLE
    try:
        yield
    finally:
        root.training_state = state
