"""AdamW with linear warmup and cosine decay, and gradient clipping that every strategy accepts.

Clipping is done by hand in `on_before_optimizer_step` (see `clip_gradients`), never through
Lightning's `gradient_clip_val`: Lightning 2.6 refuses its own clipping with a fused AdamW under
bf16-mixed, and norm clipping under its FSDP precision plugin. Clipping by hand works with both,
so the fused AdamW (faster on GPU) is always allowed; under FSDP the wrapped root's own
`clip_grad_norm_` computes the norm over all shards (in an RL step, after
`metacot.modules.fsdp.finish_backward` has returned the root to IDLE).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier after `step` optimizer steps: linear from 1/warmup to 1 over `warmup_steps`,
    then a cosine down to `min_ratio` at `total_steps` (and `min_ratio` after it)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Picklable `lr_lambda` for LambdaLR (checkpoints store the scheduler)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_ratio)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay the weights of Linear and Embedding layers only (not norms, not biases). Decided by
    module type, not by tensor shape, so it also holds for FSDP's flattened shards."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            wants_decay = name == "weight" and isinstance(module, (nn.Linear, nn.Embedding))
            (decay if wants_decay else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, fused: bool | None) -> torch.optim.AdamW:
    """AdamW; `fused=None` uses the fused CUDA kernel when the parameters are on a GPU."""
    groups = param_groups(model, weight_decay)
    on_gpu = any(p.is_cuda for g in groups for p in g["params"])
    use_fused = on_gpu if fused is None else (fused and on_gpu)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=use_fused or None)


def clip_gradients(root: nn.Module, params: Any, max_norm: float | None) -> torch.Tensor:
    """Clip to `max_norm` (None or <= 0: measure only) and return the total norm, with no host
    sync. `root` is the strategy's wrapped model: FSDP's root has its own `clip_grad_norm_`."""
    limit = float(max_norm) if max_norm and max_norm > 0 else math.inf
    fsdp_clip = getattr(root, "clip_grad_norm_", None)
    if fsdp_clip is not None:
        return fsdp_clip(limit)
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    if math.isinf(limit):
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    return torch.nn.utils.clip_grad_norm_(params, limit)
