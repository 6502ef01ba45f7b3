"""RLOO (REINFORCE leave-one-out): A_i = r_i − mean_{j≠i} r_j, loss −A_i Σ_t log π.

The baseline of a sample excludes the sample itself, so the gradient estimate stays unbiased;
same unclipped surrogate and sequence-sum aggregation as REINFORCE.
"""

from __future__ import annotations

from metacot.rl.advantages import rloo_advantages
from metacot.rl.objectives.base import PolicyObjective, require_groups, sequence_sum, unclipped_surrogate


class RLOOObjective(PolicyObjective):
    compute_advantages = staticmethod(rloo_advantages)
    surrogate = staticmethod(unclipped_surrogate)
    aggregate = staticmethod(sequence_sum)

    def __init__(
        self,
        name: str = "rloo",
        group_size: int = 8,
        epochs_per_batch: int = 1,
        kl_coef: float = 0.0,
        kl_mode: str = "none",
        kl_estimator: str = "k3",
    ) -> None:
        require_groups(name, group_size)
        super().__init__(name, group_size, epochs_per_batch, 0.0, 0.0, kl_coef, kl_mode, kl_estimator)
