"""Dr. GRPO ("GRPO done right"): GRPO without its two biases — no std division (A_i = r_i −
mean) and no 1/|o_i| length normalisation: token terms are summed and divided by a constant,
sequences × the generation budget (`LossNorm.max_length`), so long wrong answers are not
penalised less per token than short ones.
"""

from __future__ import annotations

from metacot.rl.advantages import dr_grpo_advantages
from metacot.rl.objectives.base import (
    PolicyObjective,
    clipped_surrogate,
    require_groups,
    sequence_sum_over_budget,
)


class DrGRPOObjective(PolicyObjective):
    compute_advantages = staticmethod(dr_grpo_advantages)
    surrogate = staticmethod(clipped_surrogate)
    aggregate = staticmethod(sequence_sum_over_budget)

    def __init__(
        self,
        name: str = "dr_grpo",
        group_size: int = 8,
        epochs_per_batch: int = 1,
        clip_eps: float = 0.2,
        kl_coef: float = 0.0,
        kl_mode: str = "none",
        kl_estimator: str = "k3",
    ) -> None:
        require_groups(name, group_size)
        super().__init__(
            name, group_size, epochs_per_batch, clip_eps, clip_eps, kl_coef, kl_mode, kl_estimator
        )
