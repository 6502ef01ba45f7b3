"""Critic-free PPO: the clipped-ratio surrogate with a group-mean baseline in place of a value
network (A_i = r_i − mean of its prompt, no std), token-level mean over the batch.
"""

from __future__ import annotations

from metacot.rl.advantages import group_mean_advantages
from metacot.rl.objectives.base import PolicyObjective, clipped_surrogate, require_groups, token_mean


class PPOClipObjective(PolicyObjective):
    compute_advantages = staticmethod(group_mean_advantages)
    surrogate = staticmethod(clipped_surrogate)
    aggregate = staticmethod(token_mean)

    def __init__(
        self,
        name: str = "ppo_clip",
        group_size: int = 8,
        epochs_per_batch: int = 2,
        clip_eps: float = 0.2,
        kl_coef: float = 0.0,
        kl_mode: str = "none",
        kl_estimator: str = "k3",
    ) -> None:
        require_groups(name, group_size)
        super().__init__(
            name, group_size, epochs_per_batch, clip_eps, clip_eps, kl_coef, kl_mode, kl_estimator
        )
