"""Advantage estimators for critic-free RL with G samples per prompt.

Batch convention (used by everything in `metacot.rl`): a rollout batch holds B prompts × G samples,
grouped contiguously (prompt-major), so `rewards` is `[B*G]` and rows i*G .. i*G+G-1 share prompt
i. Token tensors are `[B*G, T]` with a response `mask` that is 1 on generated tokens (the eos
included) and 0 on padding.

Sequence-level schemes return `[B*G]` (one advantage per sample, broadcast over its tokens by
the objective); REINFORCE++ returns `[B*G, T]` (zero on padding). Advantages are always computed
on the *whole* rollout batch, before any micro-batching, and carry no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def group_view(rewards: Tensor, group_size: int) -> Tensor:
    """`[B*G]` → `[B, G]`, with a clear error when the batch is not whole groups."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards are not whole groups of group_size={group_size}; "
            "keep the G samples of each prompt together (prompt-major)"
        )
    return rewards.reshape(-1, group_size)


def zero_variance_mask(rewards: Tensor, group_size: int) -> Tensor:
    """`[B*G]` bool: True for samples whose whole group got exactly the same reward.

    Such groups carry no learning signal under group baselines (DAPO drops them).
    """
    groups = group_view(rewards, group_size)
    flat = groups.max(dim=1).values == groups.min(dim=1).values
    return flat.repeat_interleave(group_size)


def group_mean_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """A_i = r_i − mean(r of its group): REINFORCE with a group-mean baseline, Dr. GRPO, PPO-clip."""
    groups = group_view(rewards, group_size)
    adv = groups - groups.mean(dim=1, keepdim=True)
    # Exact zeros for constant groups (the float mean of equal values can be off by one ulp).
    return torch.where(zero_variance_mask(rewards, group_size), 0.0, adv.reshape(-1))


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: A_i = r_i − mean_{j≠i} r_j (the leave-one-out baseline is independent of sample i)."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2 (the baseline of a sample is the other samples)")
    groups = group_view(rewards, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    adv = (groups - others).reshape(-1)
    return torch.where(zero_variance_mask(rewards, group_size), 0.0, adv)


def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO: A_i = (r_i − mean) / (std + eps), std with Bessel's correction (as TRL/verl).

    Groups with a single reward value get exactly 0 (no NaN, also for G = 1).
    """
    groups = group_view(rewards, group_size)
    std = groups.std(dim=1, keepdim=True, correction=1 if group_size > 1 else 0)
    adv = (groups - groups.mean(dim=1, keepdim=True)) / (std + eps)
    return torch.where(zero_variance_mask(rewards, group_size), 0.0, adv.reshape(-1))


def dr_grpo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO: GRPO without the std division (the std biases updates toward easy/hard prompts)."""
    return group_mean_advantages(rewards, group_size)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8,
                  reduce_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(x − mean) / (std + eps) over the tokens where `mask` is set (population std); 0 elsewhere.

    `reduce_sum` (DDP: a sum over ranks) makes the mean and std those of every rank's tokens
    together, with the same two-pass formula as one process over the whole batch."""
    m = mask.bool()
    x = torch.where(m, values, 0.0)
    total = torch.stack([x.sum(), m.sum().to(x.dtype)])
    if reduce_sum is not None:
        total = reduce_sum(total).to(x.dtype)
    count = total[1].clamp(min=1)
    mean = total[0] / count
    squares = torch.where(m, (values - mean) ** 2, 0.0).sum()
    if reduce_sum is not None:
        squares = reduce_sum(squares[None]).to(x.dtype)[0]
    var = squares / count
    return torch.where(m, (values - mean) / (var.sqrt() + eps), 0.0)


def reverse_cumsum(x: Tensor) -> Tensor:
    """out[..., t] = Σ_{s ≥ t} x[..., s] (undiscounted return-to-go)."""
    return torch.flip(torch.cumsum(torch.flip(x, dims=[-1]), dim=-1), dims=[-1])


def reinforce_pp_advantages(
    rewards: Tensor,
    group_size: int,
    mask: Tensor,
    token_kl: Tensor | None = None,
    kl_coef: float = 0.0,
    baseline: bool = False,
    eps: float = 1e-8,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """REINFORCE++: token-level returns, whitened over the global batch (`reduce_sum`: over all
    ranks' batches). `[B*G, T]`.

    Per-token reward: −kl_coef · token_kl on every response token, plus the outcome reward on the
    last response token (the eos); the advantage of a token is its return-to-go (γ = 1), then
    normalised by the mean and std of all response tokens of the batch. The "baseline" variant
    first subtracts the group mean from the outcome rewards.
    """
    if mask.dim() != 2 or mask.shape[0] != rewards.numel():
        raise ValueError(f"mask must be [B*G, T] with B*G={rewards.numel()}, got {tuple(mask.shape)}")
    if baseline:
        rewards = group_mean_advantages(rewards, group_size)
    else:
        group_view(rewards, group_size)  # validates the grouping
    m = mask.bool()
    token_rewards = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    if token_kl is not None and kl_coef != 0.0:
        token_rewards = token_rewards - kl_coef * torch.where(m, token_kl.to(rewards.dtype), 0.0)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(m, positions, -1).max(dim=1).values.clamp(min=0)
    token_rewards = token_rewards.scatter_add(1, last[:, None], rewards[:, None])
    returns = reverse_cumsum(torch.where(m, token_rewards, 0.0))
    return masked_whiten(returns, m, eps, reduce_sum)
