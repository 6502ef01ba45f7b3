"""GRPO (DeepSeekMath): group-normalised advantages A_i = (r_i − mean) / (std + eps), the PPO
clipped ratio per token, mean over each sequence's tokens, then mean over sequences; KL to a
frozen reference in the loss with the k3 estimator.
"""

from __future__ import annotations

from functools import partial

from metacot.rl.advantages import grpo_advantages
from metacot.rl.objectives.base import PolicyObjective, clipped_surrogate, require_groups, sequence_mean


class GRPOObjective(PolicyObjective):
    surrogate = staticmethod(clipped_surrogate)
    aggregate = staticmethod(sequence_mean)

    def __init__(
        self,
        name: str = "grpo",
        group_size: int = 8,
        epochs_per_batch: int = 1,
        clip_eps: float = 0.2,
        std_eps: float = 1e-6,
        kl_coef: float = 0.04,
        kl_mode: str = "loss",
        kl_estimator: str = "k3",
    ) -> None:
        require_groups(name, group_size)
        super().__init__(
            name, group_size, epochs_per_batch, clip_eps, clip_eps, kl_coef, kl_mode, kl_estimator
        )
        self.std_eps = std_eps
        self.compute_advantages = partial(grpo_advantages, eps=std_eps)
