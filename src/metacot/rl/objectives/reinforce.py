"""REINFORCE with a group-mean baseline: A_i = r_i − mean(r of its prompt), loss −A_i Σ_t log π.

No clipping: the per-token surrogate is −ρA (ρ = 1 on-policy, so its gradient is the REINFORCE
gradient); tokens are summed per sequence and averaged over the sequences of the batch.
"""

from __future__ import annotations

from torch import Tensor

from metacot.rl.advantages import group_mean_advantages, group_view
from metacot.rl.objectives.base import PolicyObjective, require_groups, sequence_sum, unclipped_surrogate


def _no_baseline(rewards: Tensor, group_size: int) -> Tensor:
    group_view(rewards, group_size)  # validates the grouping
    return rewards


class ReinforceObjective(PolicyObjective):
    surrogate = staticmethod(unclipped_surrogate)
    aggregate = staticmethod(sequence_sum)

    def __init__(
        self,
        name: str = "reinforce",
        baseline: bool = True,
        group_size: int = 8,
        epochs_per_batch: int = 1,
        kl_coef: float = 0.0,
        kl_mode: str = "none",
        kl_estimator: str = "k3",
    ) -> None:
        if baseline:
            require_groups(name, group_size)
        super().__init__(name, group_size, epochs_per_batch, 0.0, 0.0, kl_coef, kl_mode, kl_estimator)
        self.baseline = baseline
        # An instance attribute is not bound as a method, so a plain function works here.
        self.compute_advantages = group_mean_advantages if baseline else _no_baseline
