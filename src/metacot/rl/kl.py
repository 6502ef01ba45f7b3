"""Per-token KL estimators between the policy and a frozen reference (Schulman, "Approximating
KL divergence").

All take log-probs of the *sampled* tokens, `logp` under the policy that generated them and `ref`
under the reference, and return a per-token estimate of KL(policy || ref) with the same shape.
With samples drawn from the policy, k1 and k3 are unbiased; k3 is also never negative (lower
variance, the GRPO choice); k2 = ½(log ratio)² is biased but low-variance, and its gradient is
the one of the true KL to first order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def kl_k1(logp: Tensor, ref: Tensor) -> Tensor:
    """k1 = logp − ref (unbiased, can be negative per token)."""
    return logp - ref


def kl_k2(logp: Tensor, ref: Tensor) -> Tensor:
    """k2 = ½ (logp − ref)² (biased, ≥ 0)."""
    return 0.5 * (logp - ref) ** 2


def kl_k3(logp: Tensor, ref: Tensor) -> Tensor:
    """k3 = exp(ref − logp) − (ref − logp) − 1 (unbiased, ≥ 0, since e^x ≥ 1 + x)."""
    log_ratio = ref - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The estimator called `name` (k1, k2 or k3)."""
    if name not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {name!r}; choose one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name]
