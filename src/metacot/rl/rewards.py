"""Rule-based rewards from verification results (config group `reward=`).

The verifier replays the model's answer and trace (never executing model text); the RL stage
summarises each sample as a `RolloutOutcome`, and `RewardFunction` turns it into a scalar:

    base    = outcome (1 if correct) + format_reward (well-formed but wrong)
              + optimal_bonus (correct and optimal) + fidelity_weight × fidelity
    total   = base × length_gamma ** (num_tokens / length_scale)          # Meta-CoT γ^|Z|
              + overlong_penalty × overlong(num_tokens)                     # DAPO, ≤ 0

DAPO's soft overlong term is 0 up to max_length − overlong_buffer tokens, falls linearly to −1 at
max_length, and is −1 for truncated samples. `max_length` is the generation budget: build with
`build(cfg.reward, max_length=<max new tokens>)`, or set `reward.max_length`.
Pure Python: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RolloutOutcome:
    """What the verifier learned about one sampled completion."""

    correct: bool  # the final answer replays to a goal
    optimal: bool  # ... and is of optimal length
    well_formed: bool  # the format's final section parsed without errors
    num_tokens: int  # generated tokens (the eos included)
    truncated: bool  # generation hit the budget before the eos
    fidelity: float | None = None  # fraction of the trace's steps that are legal; None: no trace


class RewardFunction:
    """Outcome reward plus optional shaping terms; every shaping term is off by default."""

    def __init__(
        self,
        name: str = "outcome",
        format_reward: float = 0.0,
        optimal_bonus: float = 0.0,
        length_gamma: float = 1.0,
        length_scale: float = 1000.0,
        fidelity_weight: float = 0.0,
        overlong_buffer: int = 0,
        overlong_penalty: float = 1.0,
        max_length: int | None = None,
    ) -> None:
        if not 0.0 < length_gamma <= 1.0:
            raise ValueError(f"length_gamma must be in (0, 1] (1.0 = no length discount), got {length_gamma}")
        if length_scale <= 0:
            raise ValueError(f"length_scale must be > 0 tokens, got {length_scale}")
        if overlong_buffer < 0 or overlong_penalty < 0:
            raise ValueError(
                f"overlong_buffer and overlong_penalty must be >= 0, got {overlong_buffer}, {overlong_penalty}"
            )
        if max_length is not None and not 0 <= overlong_buffer <= max_length:
            raise ValueError(f"overlong_buffer ({overlong_buffer}) must not exceed max_length ({max_length})")
        self.name = name
        self.format_reward = format_reward
        self.optimal_bonus = optimal_bonus
        self.length_gamma = length_gamma
        self.length_scale = length_scale
        self.fidelity_weight = fidelity_weight
        self.overlong_buffer = overlong_buffer
        self.overlong_penalty = overlong_penalty
        self.max_length = max_length

    def overlong(self, num_tokens: int, truncated: bool) -> float:
        """DAPO's soft overlong punishment in [−1, 0] (before `overlong_penalty` scaling)."""
        if self.overlong_buffer == 0:
            return 0.0
        if self.max_length is None:
            raise ValueError(
                "overlong_buffer > 0 needs the generation budget: set reward.max_length "
                "or build the reward with max_length=<max new tokens>"
            )
        if truncated or num_tokens >= self.max_length:
            return -1.0
        start = self.max_length - self.overlong_buffer
        return min(0.0, (start - num_tokens) / self.overlong_buffer)

    def __call__(self, o: RolloutOutcome) -> tuple[float, dict[str, float]]:
        """(total reward, components) of one sample; components are for logging."""
        if o.num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {o.num_tokens}")
        if o.fidelity is not None and not 0.0 <= o.fidelity <= 1.0:
            raise ValueError(f"fidelity is a fraction of valid steps in [0, 1], got {o.fidelity}")
        parts = {
            "outcome": 1.0 if o.correct else 0.0,
            "format": self.format_reward if (o.well_formed and not o.correct) else 0.0,
            "optimal": self.optimal_bonus if (o.correct and o.optimal) else 0.0,
            "fidelity": self.fidelity_weight * (o.fidelity or 0.0),
        }
        base = sum(parts.values())
        factor = self.length_gamma ** (o.num_tokens / self.length_scale)
        penalty = self.overlong_penalty * self.overlong(o.num_tokens, o.truncated)
        total = base * factor + penalty
        parts.update(length_factor=factor, overlong=penalty, total=total)
        return total, parts

    def batch(self, outcomes: Sequence[RolloutOutcome]) -> tuple[list[float], dict[str, float]]:
        """Rewards of a rollout batch (in order) and the mean of every component."""
        if not outcomes:
            return [], {}
        scored = [self(o) for o in outcomes]
        totals = [t for t, _ in scored]
        means = {k: sum(p[k] for _, p in scored) / len(scored) for k in scored[0][1]}
        return totals, means

    def __repr__(self) -> str:
        return (
            f"RewardFunction({self.name}: format={self.format_reward}, optimal={self.optimal_bonus}, "
            f"gamma={self.length_gamma}/{self.length_scale}, fidelity={self.fidelity_weight}, "
            f"overlong={self.overlong_buffer}x{self.overlong_penalty}@{self.max_length})"
        )
