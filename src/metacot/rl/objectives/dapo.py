"""DAPO: decoupled clip (ε_low 0.2, ε_high 0.28 — "clip-higher" leaves room for unlikely tokens
to grow), token-level loss normalised over all response tokens of the batch, groups whose
rewards are all equal dropped (no signal; "dynamic sampling" then refills the batch, which is the
stage's job), no KL. The soft overlong penalty lives in the reward (`reward.overlong_buffer`).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from metacot.rl.advantages import grpo_advantages, zero_variance_mask
from metacot.rl.objectives.base import PolicyObjective, clipped_surrogate, require_groups, token_mean


class DAPOObjective(PolicyObjective):
    surrogate = staticmethod(clipped_surrogate)
    aggregate = staticmethod(token_mean)

    def __init__(
        self,
        name: str = "dapo",
        group_size: int = 8,
        epochs_per_batch: int = 1,
        clip_eps_low: float = 0.2,
        clip_eps_high: float = 0.28,
        std_eps: float = 1e-6,
        drop_zero_variance: bool = True,
        kl_coef: float = 0.0,
        kl_mode: str = "none",
        kl_estimator: str = "k3",
    ) -> None:
        require_groups(name, group_size)
        super().__init__(
            name, group_size, epochs_per_batch, clip_eps_low, clip_eps_high, kl_coef, kl_mode, kl_estimator
        )
        self.std_eps = std_eps
        self.drop_zero_variance = drop_zero_variance
        self.compute_advantages = partial(grpo_advantages, eps=std_eps)

    def keep_mask(self, rewards: Tensor, group_size: int) -> Tensor:
        keep = super().keep_mask(rewards, group_size)
        return keep & ~zero_variance_mask(rewards, group_size) if self.drop_zero_variance else keep
