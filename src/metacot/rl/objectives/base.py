"""The policy-objective contract shared by every RL algorithm, and micro-batch-safe aggregation.

How the RL stage uses an objective (`algo=<name>` builds it; all tensors prompt-major, see
`metacot.rl.advantages`):

    prep = objective.prepare(rewards, mask, old_logp=old_logp, ref_logp=ref_logp,
                             max_length=max_new_tokens)          # once, on the WHOLE rollout batch
    for epoch in range(objective.epochs_per_batch):
        for idx in micro_batches:                                # any split, any sizes
            loss, stats = objective.loss(logp[idx], old_logp[idx], ref_logp[idx] or None,
                                         prep.advantages[idx], prep.mask[idx], prep.norm,
                                         entropy=entropy[idx] or None)
            loss.backward()                                      # NOT divided by the number of
        optimizer.step()                                         # micro-batches: already scaled

`loss` divides by normalisers of the whole batch (`LossNorm`), so the summed gradient of any
micro-batch split equals the full-batch gradient, whatever the accumulation. Stats are additive the
same way: summing a stat over the micro-batches of one batch gives the batch value.

`old_logp` are the log-probs of the rollout policy (no grad), `ref_logp` those of the frozen
reference, needed only when `objective.uses_reference`. `prep.mask` is the response mask with the
samples the objective drops (DAPO's zero-variance groups) zeroed; `prep.keep` says which samples
remain, so the stage may skip the others' forward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from metacot.rl.advantages import group_view, zero_variance_mask
from metacot.rl.kl import get_kl_estimator

KL_MODES = ("none", "loss", "reward")


@dataclass(frozen=True)
class LossNorm:
    """Normalisers of a whole rollout batch (after dropping samples), each at least 1."""

    num_sequences: int  # kept samples
    num_tokens: int  # response tokens of the kept samples
    max_length: int  # generation budget (Dr. GRPO's constant)


def loss_norm(mask: Tensor, keep: Tensor | None = None, max_length: int | None = None) -> LossNorm:
    """Normalisers from the FULL batch's response mask `[B*G, T]` (and kept samples `[B*G]`).

    `max_length` should be the generation budget; it defaults to the batch's padded width T.
    """
    keep = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device) if keep is None else keep.bool()
    tokens = (mask.bool() & keep[:, None]).sum().item()
    width = mask.shape[1] if max_length is None else max_length
    if width < 1:
        raise ValueError(f"max_length must be >= 1, got {width}")
    return LossNorm(
        num_sequences=max(int(keep.sum().item()), 1), num_tokens=max(int(tokens), 1), max_length=int(width)
    )


def as_float(rewards: Tensor) -> Tensor:
    """Rewards as a detached floating tensor (keeps float64, promotes ints/bools to float32)."""
    rewards = rewards.detach()
    return rewards if rewards.is_floating_point() else rewards.float()


# --- aggregations: per-token values [N, T] -> scalar, divided by whole-batch normalisers --------


def token_mean(x: Tensor, mask: Tensor, norm: LossNorm) -> Tensor:
    """Σ over all response tokens / tokens in the batch (DAPO, PPO)."""
    return torch.where(mask.bool(), x, 0.0).sum() / norm.num_tokens


def sequence_mean(x: Tensor, mask: Tensor, norm: LossNorm) -> Tensor:
    """Mean over each sequence's tokens, then / sequences in the batch (GRPO)."""
    m = mask.bool()
    per_seq = torch.where(m, x, 0.0).sum(dim=-1) / m.sum(dim=-1).clamp(min=1)
    return per_seq.sum() / norm.num_sequences


def sequence_sum(x: Tensor, mask: Tensor, norm: LossNorm) -> Tensor:
    """Sum over each sequence's tokens, then / sequences (REINFORCE: −A Σ_t log π)."""
    return torch.where(mask.bool(), x, 0.0).sum() / norm.num_sequences


def sequence_sum_over_budget(x: Tensor, mask: Tensor, norm: LossNorm) -> Tensor:
    """Sum over tokens / (sequences × generation budget): Dr. GRPO's unbiased constant normaliser."""
    return torch.where(mask.bool(), x, 0.0).sum() / (norm.num_sequences * norm.max_length)


# --- per-token policy-gradient surrogates (to minimise) ----------------------------------------


def unclipped_surrogate(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """−ρA: the REINFORCE gradient on-policy (ρ = 1), importance-weighted off-policy."""
    return -ratio * adv


def clipped_surrogate(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A): PPO's pessimistic bound."""
    return -torch.minimum(ratio * adv, ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)


@dataclass
class PreparedRollout:
    """What `PolicyObjective.prepare` derives once from the whole rollout batch."""

    advantages: Tensor  # [B*G] or [B*G, T], no grad
    mask: Tensor  # [B*G, T] response mask, dropped samples zeroed
    keep: Tensor  # [B*G] bool, samples that enter the loss
    norm: LossNorm
    stats: dict[str, float]


def require_groups(objective: str, group_size: int) -> None:
    """Objectives whose baseline is the sample's group need two samples per prompt or more."""
    if group_size < 2:
        raise ValueError(f"algo={objective} compares each sample with the others of its group: it needs "
                         f"algo.group_size >= 2, got {group_size} (with one sample every advantage is 0)")


class PolicyObjective:
    """Base of every policy objective. Subclasses pick three plain functions (no string switch):

    - `compute_advantages(rewards, group_size) -> [B*G]` (from `metacot.rl.advantages`),
    - `surrogate(ratio, adv, eps_low, eps_high) -> per-token loss`,
    - `aggregate(x, mask, norm) -> scalar`,
    and may override `advantages` (token-level schemes) or `keep_mask` (sample dropping).

    KL to a frozen reference: `kl_mode="loss"` adds kl_coef × KL (aggregated like the policy term);
    `kl_mode="reward"` subtracts kl_coef × Σ_t KL of the rollout from each sample's reward before
    the advantages; `"none"` ignores it. `kl_estimator` is k1, k2 or k3 (`metacot.rl.kl`).
    """

    compute_advantages: Callable[[Tensor, int], Tensor]
    surrogate: Callable[[Tensor, Tensor, float, float], Tensor] = staticmethod(clipped_surrogate)
    aggregate: Callable[[Tensor, Tensor, LossNorm], Tensor] = staticmethod(sequence_mean)
    batch_statistics = False  # advantages use whole-batch statistics: `prepare` passes `reduce_sum` on

    def __init__(
        self,
        name: str,
        group_size: int = 8,
        epochs_per_batch: int = 1,
        clip_eps_low: float = 0.2,
        clip_eps_high: float = 0.2,
        kl_coef: float = 0.0,
        kl_mode: str = "none",
        kl_estimator: str = "k3",
    ) -> None:
        if kl_mode not in KL_MODES:
            raise ValueError(f"kl_mode must be one of {KL_MODES}, got {kl_mode!r}")
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        if not (0.0 <= clip_eps_low < 1.0 and clip_eps_high >= 0.0):
            raise ValueError(
                f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {clip_eps_low}, {clip_eps_high}"
            )
        if group_size < 1 or epochs_per_batch < 1:
            raise ValueError(
                f"group_size and epochs_per_batch must be >= 1, got {group_size}, {epochs_per_batch}"
            )
        self.name = name
        self.group_size = group_size
        self.epochs_per_batch = epochs_per_batch
        self.clip_eps_low = clip_eps_low
        self.clip_eps_high = clip_eps_high
        self.kl_coef = kl_coef
        self.kl_mode = kl_mode
        self.kl_estimator = kl_estimator
        self.kl_fn = get_kl_estimator(kl_estimator)

    @property
    def uses_reference(self) -> bool:
        """Whether the RL stage must keep a frozen reference model and pass `ref_logp`."""
        return self.kl_mode != "none" and self.kl_coef > 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(G={self.group_size}, eps=({self.clip_eps_low}, {self.clip_eps_high}), "
            f"kl={self.kl_coef}/{self.kl_mode}/{self.kl_estimator})"
        )

    # --- whole-batch preparation ---------------------------------------------------------------

    def token_kl(self, old_logp: Tensor | None, ref_logp: Tensor | None, mask: Tensor | None) -> Tensor:
        """Per-token KL of the rollout policy to the reference, zero on padding (for kl_mode=reward)."""
        if old_logp is None or ref_logp is None or mask is None:
            raise ValueError(f"{type(self).__name__} with kl_mode='reward' needs mask, old_logp and ref_logp")
        m = mask.bool()
        return torch.where(m, self.kl_fn(torch.where(m, old_logp, 0.0), torch.where(m, ref_logp, 0.0)), 0.0)

    def advantages(
        self,
        rewards: Tensor,
        group_size: int | None = None,
        mask: Tensor | None = None,
        old_logp: Tensor | None = None,
        ref_logp: Tensor | None = None,
    ) -> Tensor:
        """Advantages `[B*G]` (or `[B*G, T]`) of the whole batch; no grad flows through them."""
        group_size = self.group_size if group_size is None else group_size
        rewards = as_float(rewards)
        if self.kl_mode == "reward" and self.kl_coef > 0:
            rewards = rewards - self.kl_coef * self.token_kl(old_logp, ref_logp, mask).detach().sum(dim=-1)
        return self.compute_advantages(rewards, group_size)

    def keep_mask(self, rewards: Tensor, group_size: int) -> Tensor:
        """`[B*G]` bool: samples that enter the loss (all, unless the algorithm drops some)."""
        return torch.ones(group_view(rewards, group_size).numel(), dtype=torch.bool, device=rewards.device)

    def prepare(
        self,
        rewards: Tensor,
        mask: Tensor,
        group_size: int | None = None,
        old_logp: Tensor | None = None,
        ref_logp: Tensor | None = None,
        max_length: int | None = None,
        reduce_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> PreparedRollout:
        """Advantages, effective mask and normalisers of the WHOLE rollout batch, plus a few stats.

        `reduce_sum` (DDP: a sum over ranks) reaches the objectives whose advantages use statistics
        of the whole batch (`batch_statistics`); group-relative advantages need none, since every
        group is sampled on one rank."""
        group_size = self.group_size if group_size is None else group_size
        if mask.dim() != 2 or mask.shape[0] != rewards.numel():
            raise ValueError(f"mask must be [B*G, T] with B*G={rewards.numel()}, got {tuple(mask.shape)}")
        keep = self.keep_mask(rewards, group_size)
        extra = {"reduce_sum": reduce_sum} if self.batch_statistics else {}
        adv = self.advantages(rewards, group_size, mask=mask, old_logp=old_logp, ref_logp=ref_logp,
                              **extra).detach()
        eff_mask = mask.bool() & keep[:, None]
        stats = {
            "reward_mean": rewards.float().mean().item(),
            "zero_variance_frac": zero_variance_mask(rewards, group_size).float().mean().item(),
            "kept_frac": keep.float().mean().item(),
            "response_len_mean": mask.float().sum(dim=-1).mean().item(),
        }
        return PreparedRollout(adv, eff_mask, keep, loss_norm(mask, keep, max_length), stats)

    # --- per-micro-batch loss ------------------------------------------------------------------

    def loss(
        self,
        logp: Tensor,
        old_logp: Tensor | None,
        ref_logp: Tensor | None,
        advantages: Tensor,
        mask: Tensor,
        norm: LossNorm,
        entropy: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss of a micro-batch (rows of the batch) and additive stats (detached tensors).

        `logp`, `old_logp`, `ref_logp`, `entropy`: `[n, T]` per-token values of the sampled tokens;
        `old_logp=None` means on-policy (ratio 1). Padding may hold anything (even NaN): it never
        contributes to the loss, the stats or the gradients.
        """
        m = mask.bool()
        if logp.shape != m.shape:
            raise ValueError(f"logp {tuple(logp.shape)} and mask {tuple(m.shape)} must have the same shape")
        adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(logp)
        adv = torch.where(m, adv.detach().to(logp.dtype), 0.0)
        old = logp.detach() if old_logp is None else old_logp.detach()
        log_ratio = torch.where(m, logp - old, 0.0)
        ratio = torch.exp(log_ratio)
        per_token = self.surrogate(ratio, adv, self.clip_eps_low, self.clip_eps_high)
        pg_loss = self.aggregate(per_token, m, norm)
        loss = pg_loss
        clipped = per_token.detach() != (-ratio * adv).detach()  # the clipped branch won the min

        def tok(x: Tensor) -> Tensor:  # additive token mean for stats
            return token_mean(x.detach().float(), m, norm)

        stats = {
            "pg_loss": pg_loss.detach(),
            "ratio_mean": tok(ratio),
            "clip_frac_low": tok((clipped & (ratio < 1.0)).float()),
            "clip_frac_high": tok((clipped & (ratio > 1.0)).float()),
            "approx_kl_old": tok(0.5 * log_ratio**2),
        }
        if self.kl_mode == "loss" and self.kl_coef > 0 and ref_logp is None:
            raise ValueError(
                f"{type(self).__name__} has kl_mode='loss', kl_coef={self.kl_coef}: pass ref_logp"
            )
        if ref_logp is not None:
            kl = self.kl_fn(torch.where(m, logp, 0.0), torch.where(m, ref_logp.detach(), 0.0))
            stats["kl_mean"] = tok(kl)
            if self.kl_mode == "loss" and self.kl_coef > 0:
                kl_loss = self.aggregate(kl, m, norm)
                stats["kl_loss"] = kl_loss.detach()
                loss = loss + self.kl_coef * kl_loss
        if entropy is not None:
            stats["entropy"] = tok(entropy)
        stats["loss"] = loss.detach()
        return loss, stats
