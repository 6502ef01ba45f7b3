"""REINFORCE++: critic-free PPO whose per-token KL penalty is folded into the return, with
advantages whitened over all response tokens of the global batch. The "baseline" variant first
subtracts the group mean from the outcome rewards. Clipped ratio, token-level mean.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from metacot.rl.advantages import reinforce_pp_advantages
from metacot.rl.objectives.base import PolicyObjective, as_float, clipped_surrogate, token_mean


class ReinforcePPObjective(PolicyObjective):
    surrogate = staticmethod(clipped_surrogate)
    aggregate = staticmethod(token_mean)
    batch_statistics = True  # whitening over every response token of the global batch

    def __init__(
        self,
        name: str = "reinforce_pp",
        group_size: int = 8,
        epochs_per_batch: int = 1,
        clip_eps: float = 0.2,
        baseline: bool = False,
        whiten_eps: float = 1e-8,
        kl_coef: float = 0.01,
        kl_mode: str = "reward",
        kl_estimator: str = "k1",
    ) -> None:
        super().__init__(
            name, group_size, epochs_per_batch, clip_eps, clip_eps, kl_coef, kl_mode, kl_estimator
        )
        self.baseline = baseline
        self.whiten_eps = whiten_eps

    def advantages(
        self,
        rewards: Tensor,
        group_size: int | None = None,
        mask: Tensor | None = None,
        old_logp: Tensor | None = None,
        ref_logp: Tensor | None = None,
        reduce_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Token-level `[B*G, T]` advantages; needs `mask` (and old/ref log-probs for the KL term).
        `reduce_sum` (DDP): whiten with the mean and std of every rank's tokens."""
        if mask is None:
            raise ValueError("ReinforcePPObjective.advantages needs the response mask [B*G, T]")
        group_size = self.group_size if group_size is None else group_size
        token_kl = None
        if self.kl_mode == "reward" and self.kl_coef > 0:
            token_kl = self.token_kl(old_logp, ref_logp, mask).detach()
        return reinforce_pp_advantages(
            as_float(rewards),
            group_size,
            mask,
            token_kl=token_kl,
            kl_coef=self.kl_coef,
            baseline=self.baseline,
            eps=self.whiten_eps,
            reduce_sum=reduce_sum,
        )
