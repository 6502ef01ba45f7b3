"""The update half of RL, as plain tensor functions (testable without a Trainer).

Log-probs of a rollout batch's response tokens under a model, and one gradient pass of a policy
objective over the batch in micro-batches. `metacot.modules.rl.RLModule` calls these between the
rollout (`metacot.rl.rollout`) and the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from metacot.rl.objectives.base import LossNorm
from metacot.rl.rollout import RolloutTensors


def token_logprobs(model: nn.Module, t: RolloutTensors, temperature: float = 1.0,
                   entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs `[n, T]` of the response tokens under `model` (logits / temperature: the sampling
    distribution), and optionally the per-token entropy (detached, for logging)."""
    logits = model(input_ids=t.input_ids).logits
    idx = (t.positions - 1).clamp(min=0)
    pred = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1])).float()
    if temperature > 0 and temperature != 1.0:
        pred = pred / temperature
    logp_all = torch.log_softmax(pred, dim=-1)
    target = t.input_ids.gather(1, t.positions)
    logp = logp_all.gather(-1, target[..., None]).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


@torch.no_grad()
def batch_logprobs(model: nn.Module, t: RolloutTensors, micro_batch_size: int, temperature: float = 1.0) -> Tensor:
    """`[N, T]` log-probs of a whole rollout batch, micro-batch by micro-batch, without grad."""
    out = torch.zeros(t.mask.shape, dtype=torch.float32, device=t.mask.device)
    for start in range(0, t.mask.shape[0], micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        part = t.rows(rows)
        out[rows, : part.mask.shape[1]] = token_logprobs(model, part, temperature)[0]
    return out


def _crop(x: Tensor | None, rows: slice, width: int) -> Tensor | None:
    if x is None:
        return None
    return x[rows] if x.dim() == 1 else x[rows, :width]


def policy_gradient_pass(model: nn.Module, objective: Any, t: RolloutTensors, advantages: Tensor, mask: Tensor,
                         norm: LossNorm, old_logp: Tensor | None, ref_logp: Tensor | None, micro_batch_size: int,
                         temperature: float = 1.0, backward: Callable[[Tensor], None] = Tensor.backward,
                         loss_scale: float = 1.0,
                         no_sync: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
    """One gradient pass over the batch: forward + `backward(loss × loss_scale)` per micro-batch,
    gradients accumulating in `.grad` (no optimizer step). The objective's normalisers are the
    whole batch's, so the accumulated gradient does not depend on `micro_batch_size`. Every
    micro-batch but the last runs under `no_sync` (DDP: one all-reduce per pass). Returns the
    objective's stats summed over micro-batches (= the batch values)."""
    n = t.mask.shape[0]
    starts = list(range(0, n, micro_batch_size))
    totals: dict[str, Tensor] = {}
    for k, start in enumerate(starts):
        rows = slice(start, start + micro_batch_size)
        part = t.rows(rows)
        width = part.mask.shape[1]
        with no_sync() if k < len(starts) - 1 else nullcontext():
            logp, ent = token_logprobs(model, part, temperature, entropy=True)
            loss, stats = objective.loss(logp, _crop(old_logp, rows, width), _crop(ref_logp, rows, width),
                                         _crop(advantages, rows, width), mask[rows, :width], norm, entropy=ent)
            backward(loss * loss_scale)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value.detach().float()
    return {k: float(v) for k, v in totals.items()}


def advantage_stats(advantages: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean / std / |max| of the advantages over the samples (or tokens) that enter the loss."""
    m = mask.bool() if advantages.dim() == 2 else mask.bool().any(dim=1)
    values = advantages[m].float()
    if values.numel() == 0:
        return {"adv/mean": 0.0, "adv/std": 0.0, "adv/abs_max": 0.0}
    return {"adv/mean": float(values.mean()), "adv/std": float(values.std(correction=0)),
            "adv/abs_max": float(values.abs().max())}
