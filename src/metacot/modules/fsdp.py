"""FSDP from inside one Lightning training step (the RL stage).

Lightning's FSDP root wraps the LightningModule, so its forward runs `training_step`. SFT does one
forward and one backward per step and FSDP's bookkeeping works as designed. An RL step instead
runs rollouts, several backward passes and optimizer steps inside that one forward. FSDP (the
`FullyShardedDataParallel` API that Lightning's `FSDPStrategy` uses) finalises a backward
(gradients moved to the parameters' `.grad`, parameters resharded, every unit back to IDLE) in a
callback that only the root's own outputs queue; an RL loss comes from the policy unit, so
`finish_backward(root)` runs it by hand after each backward. Without it the optimizer's parameters
drifted from the module's (one GPU), units stayed mid-backward on sharded ranks (checkpoints
failed), and root-only calls such as `clip_grad_norm_` refused to run (the root was not IDLE).

It uses an FSDP internal (`_runtime_utils._post_backward_final_callback`), present from torch 2.0
to at least 2.13; `tests/slow/test_rl_fsdp_cpu.py` checks the result against a plain process
(FSDP emulated on the CPU, 1 and 2 ranks).
"""

from __future__ import annotations

from torch import nn


def finish_backward(root: nn.Module) -> None:
    """Run FSDP's end-of-backward callback on `root` (an FSDP root) unless a backward of its own
    outputs queued it already; a no-op for any other module."""
    if (type(root).__name__ != "FullyShardedDataParallel" or not getattr(root, "_is_root", False)
            or getattr(root, "_post_backward_callback_queued", False)):
        return
    from torch.distributed.fsdp._runtime_utils import _post_backward_final_callback

    _post_backward_final_callback(root, root)
