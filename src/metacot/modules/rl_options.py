"""RLOptions: the `rl=` config group (`conf/rl/<name>.yaml`), validated when built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RLOptions:
    """`conf/rl/<name>.yaml`. `group_size` / `epochs_per_batch` None: the algorithm's own;
    `max_new_tokens` None: the context left after the longest training prompt."""

    name: str = "default"
    steps: int = 100
    max_time_s: float | None = None  # stop stepping after this much wall time (then the final eval)
    prompts_per_step: int = 8  # per rank
    group_size: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    gen_batch_size: int | None = None  # sequences per sampler batch (None: all at once)
    refill_rounds: int = 0  # extra rollouts of fresh prompts to replace all-equal-reward groups (DAPO)
    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0  # cosine floor; 1.0 = constant after warmup
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    clip_grad_norm: float = 1.0
    micro_batch_size: int = 16
    epochs_per_batch: int | None = None
    sft_epochs: int = 1  # expert iteration: passes over each round's selected samples
    sft_batch_size: int = 32  # expert iteration: examples per optimizer step
    eval_every: int = 10  # steps; 0 = only before and after
    eval_at_start: bool = True
    table_every: int = 10
    table_rows: int = 8
    save_every: int = 1
    max_nan_skips: int = 3
    seed: int = 0
    resume: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        for key in ("steps", "prompts_per_step", "micro_batch_size", "save_every", "sft_epochs", "sft_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"rl.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"RL samples need rl.temperature > 0 and 0 < rl.top_p <= 1, got {self.temperature}, "
                             f"{self.top_p} (greedy rollouts make every group's samples identical)")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"rl.max_new_tokens must be >= 1 (or null), got {self.max_new_tokens}")
