"""SFTModule: next-token loss on linearized traces, with the guards a long run needs.

Loss = summed cross-entropy over the target tokens of a micro-batch / their count (targets
are shifted per example by the collator, so packed rows never predict across examples).
A training step makes no host sync and calls no `self.log`: metrics are logged only on the steps
Lightning writes them (every `log_every_n_steps`, and the last), because every `self.log` costs a
clone, and a Python float costs a blocking host-to-GPU copy. Token counts are Python ints; the
step losses wait on the device and are checked for NaN/inf in one read every `log_every_n_steps`
steps and before any checkpoint is written — so a NaN never overwrites the last good checkpoint.
Validation: token-weighted val loss over every rank's batches, plus the greedy solve rate of an
optional `evaluate_fn(model) -> dict` (the evaluator, when present).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from metacot.data.collate import IGNORE_INDEX
from metacot.models.common import ATTENTION_CHOICES, attention, training_attention
from metacot.modules.optim import WarmupCosine, build_optimizer, clip_gradients

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per GPU, for MFU (matched against torch.cuda.get_device_name()).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "L40": 181e12,
                   "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12}


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like `torch.cuda.get_device_name()`, None if unknown."""
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)


@dataclass
class SFTConfig:
    """`conf/sft/<name>.yaml`: the SFT hyperparameters (see that file for what each one does)."""

    name: str = "default"
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    max_steps: int = 400
    train_tokens: int | None = None
    max_time_s: float | None = None
    batch_tokens: int = 8192
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    fused_adamw: bool | None = None
    compile: bool = False
    attention: str = "auto"
    packing: bool = True
    pack_width: int | None = None
    loss_on_prompt: bool = False
    seed: int = 0
    num_workers: int = 0
    val_every_steps: int = 200
    val_examples: int | None = 256
    solve_rate_problems: int = 16
    solve_rate_max_new_tokens: int | None = None
    log_every_n_steps: int = 10
    ckpt_every_steps: int = 100
    resume: str = "auto"
    export_hf: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        for key in ("max_steps", "batch_tokens", "grad_accum", "val_every_steps", "log_every_n_steps",
                    "ckpt_every_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"sft.{key} must be an integer >= 1, got {getattr(self, key)!r}")
        if self.train_tokens is not None and (not isinstance(self.train_tokens, int) or self.train_tokens < 1):
            raise ValueError(f"sft.train_tokens must be null or an integer >= 1, got {self.train_tokens!r}")
        if not 0 <= self.warmup_steps:
            raise ValueError(f"sft.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.lr > 0:
            raise ValueError(f"sft.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"sft.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"sft.attention must be one of {', '.join(ATTENTION_CHOICES)}, got {self.attention!r}")
        if self.resume not in ("auto", "never") and not str(self.resume).endswith(".ckpt"):
            raise ValueError(f"sft.resume must be auto, never or a path to a .ckpt, got {self.resume!r}")

    def for_token_budget(self, fill: float, world_size: int = 1) -> SFTConfig:
        """With `train_tokens` set: the same config whose `max_steps` trains on that many real
        (non-padding) tokens, given the fraction of batch slots that hold tokens (`fill`) and
        the number of ranks. Warmup is kept, but at most a quarter of the run."""
        if self.train_tokens is None:
            return self
        per_step = self.batch_tokens * self.grad_accum * world_size * fill
        if per_step <= 0:
            raise ValueError("sft.train_tokens: the training batches hold no tokens (fill 0)")
        steps = max(1, math.ceil(self.train_tokens / per_step))
        return replace(self, max_steps=steps, warmup_steps=min(self.warmup_steps, steps // 4))

    @property
    def max_time(self) -> timedelta | None:
        return timedelta(seconds=self.max_time_s) if self.max_time_s else None

    # what must agree for a checkpoint to be resumed (the rest may change between runs)
    RESUME_KEYS = ("lr", "min_lr_ratio", "warmup_steps", "batch_tokens", "grad_accum", "clip_grad_norm",
                   "weight_decay", "betas", "eps", "packing", "pack_width", "loss_on_prompt", "seed")


def token_loss_sum(model: torch.nn.Module, batch: dict[str, Any], reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of the batch's targets (summed, or per token with reduction='none')."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    losses = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                             ignore_index=IGNORE_INDEX, reduction=reduction)
    return losses if reduction == "sum" else losses.view(batch["targets"].shape)


class SFTModule(L.LightningModule):
    """`model` is a Hugging Face causal LM; `evaluate_fn(model)` returns metrics with a
    `solve_rate` (and `.examples` rows for a text table), or is None to log val loss only."""

    def __init__(self, model: torch.nn.Module, config: SFTConfig,
                 evaluate_fn: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
                 flops_per_token: float | None = None):
        super().__init__()
        self.model = model
        self.config = config
        self.evaluate_fn = evaluate_fn
        self.flops_per_token = flops_per_token
        self._losses: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked for NaN/inf
        self._first_bad: int | None = None  # the first step whose loss was not finite
        self._tokens, self._t0, self._warm = 0, time.perf_counter(), False  # the tokens/s window
        self._logged_at = -1
        self._peak_flops: float | None = None
        self._val: list[Any] = [None, 0]
        self.last_eval: dict[str, Any] = {}
        self.resumed_step: int | None = None  # the step of the checkpoint this run resumed from
        self._attention: tuple[str, str] | None = None  # (device type, attention of training forwards)

    def setup(self, stage: str) -> None:
        if self._trainer is not None:  # resolved for this fit's device: a bad sft.attention fails here
            self.training_attention(self.trainer.strategy.root_device)
        if self.config.compile and not getattr(self, "_compiled", False):
            self.model.compile()  # in place: state_dict keys stay the model's own
            self._compiled = True

    # --- training ---------------------------------------------------------------------------
    def logs_after(self, steps_done: int) -> bool:
        """Whether the logger writes after optimizer step `steps_done` (1-based): every
        `log_every_n_steps`, plus the last step (for the run's final `callback_metrics`)."""
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else self.config.log_every_n_steps
        last = trainer.max_steps if trainer is not None else self.config.max_steps
        return steps_done > 0 and ((every > 0 and steps_done % every == 0) or steps_done == last)

    def training_attention(self, device: torch.device) -> str:
        """`sft.attention` resolved for `device` (once per device type): training and val-loss forwards."""
        known = self._attention
        if known is None or known[0] != device.type:
            impl = training_attention(self.model, self.config.attention, device.type, self.config.packing)
            known = self._attention = (device.type, impl)
            log.info("SFT forwards use %s attention (sft.attention=%s)", impl, self.config.attention)
        return known[1]

    def loss_sum(self, batch: dict[str, Any]) -> torch.Tensor:
        with attention(self.model, self.training_attention(batch["input_ids"].device)):
            return token_loss_sum(self.model, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        n = max(1, batch["n_targets"])
        loss = self.loss_sum(batch) / n
        detached = loss.detach()
        self._losses.append((self.global_step, detached))
        self._tokens += batch["n_tokens"]
        if self.logs_after(self.global_step + 1):
            self.log("train/loss", detached, on_step=True, on_epoch=False, batch_size=n)
            self.log("train/ppl", torch.exp(detached.clamp(max=30.0)), on_step=True, on_epoch=False, batch_size=n)
            self.log("train/fill", batch["n_tokens"] / batch["input_ids"].numel(), on_step=True, on_epoch=False,
                     batch_size=n)
        return loss

    def on_train_start(self) -> None:
        self._tokens, self._t0, self._warm, self._logged_at = 0, time.perf_counter(), False, -1

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        root = self.trainer.strategy.model if self._trainer is not None else self
        norm = clip_gradients(root, self.parameters(), self.config.clip_grad_norm)  # clips on the device
        if self.logs_after(self.global_step + 1):
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        if step == self._logged_at or not self.logs_after(step):
            return  # also skips the micro-batches that accumulate into the next step
        self._logged_at = step
        self.raise_if_nonfinite()  # reads the losses: the one host sync of the window
        now = time.perf_counter()
        if self._warm:  # the first window holds start-up (and compilation): not a rate
            rate = self._tokens / max(now - self._t0, 1e-9)
            world = self.trainer.world_size if self._trainer is not None else 1
            self.log("train/tokens_per_s", rate * world, on_step=True, on_epoch=False, batch_size=1)
            mfu = self._mfu(rate)
            if mfu is not None:
                self.log("train/mfu", mfu, on_step=True, on_epoch=False, batch_size=1)
        self._tokens, self._t0, self._warm = 0, now, True
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=1)

    def _mfu(self, tokens_per_s: float) -> float | None:
        if self.flops_per_token is None or self.device.type != "cuda":
            return None
        if self._peak_flops is None:
            self._peak_flops = peak_bf16_flops(torch.cuda.get_device_name(self.device)) or 0.0
        return tokens_per_s * self.flops_per_token / self._peak_flops if self._peak_flops else None

    def raise_if_nonfinite(self) -> None:
        """Stop with a clear message if any training loss so far was NaN/inf (all ranks agree)."""
        if self._losses and self._first_bad is None:
            finite = torch.isfinite(torch.stack([loss for _, loss in self._losses])).tolist()  # one read
            self._first_bad = next((s for (s, _), ok in zip(self._losses, finite, strict=True) if not ok), None)
        self._losses.clear()
        local = self._first_bad is not None
        bad = self.trainer.strategy.reduce_boolean_decision(local, all=False) if self._trainer else local
        if bad:
            where = f"at step {self._first_bad}" if local else f"before step {self.global_step}"
            raise FloatingPointError(
                f"non-finite training loss (NaN/inf) {where}; stopped without saving, so the checkpoints "
                "on disk still hold the last finite weights. Lower sft.lr, raise sft.warmup_steps or set "
                "sft.clip_grad_norm, then resume (sft.resume=auto) or start over (sft.resume=never)."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.raise_if_nonfinite()  # never write NaN weights over a good checkpoint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resumed_step = int(checkpoint.get("global_step", 0))

    def configure_optimizers(self) -> dict[str, Any]:
        c = self.config
        optimizer = build_optimizer(self.model, c.lr, c.weight_decay, c.betas, c.eps, c.fused_adamw)
        schedule = WarmupCosine(c.warmup_steps, c.max_steps, c.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = [torch.zeros((), dtype=torch.float64, device=self.device), 0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val[0] += self.loss_sum(batch).detach().double()
        self._val[1] += batch["n_targets"]

    def on_validation_epoch_end(self) -> None:
        total = torch.stack([self._val[0], torch.tensor(float(self._val[1]), dtype=torch.float64,
                                                        device=self.device)])
        if self._trainer is not None:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        if total[1] > 0:
            loss = (total[0] / total[1]).float()
            self.log("val/loss", loss, sync_dist=True)
            self.log("val/ppl", torch.exp(loss.clamp(max=30.0)), sync_dist=True)
        if self.evaluate_fn is None or (self._trainer is not None and self.trainer.sanity_checking):
            return
        t0 = time.perf_counter()
        result = self.evaluate_fn(self.model)
        self.last_eval = dict(result)
        for key, value in result.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.log(f"val/{key}", float(value), sync_dist=True)  # identical on every rank
        log.info("step %d: val solve rate %.3f (%.1fs)", self.global_step, result.get("solve_rate", float("nan")),
                 time.perf_counter() - t0)
        self._log_examples(getattr(result, "examples", None) or [])

    def _log_examples(self, rows: list[dict[str, str]]) -> None:
        experiment = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if not rows or not hasattr(experiment, "add_text") or self.global_rank != 0:
            return
        table = "| prompt | model trace | verdict |\n|---|---|---|\n" + "\n".join(
            f"| {_cell(r.get('prompt', ''))} | {_cell(r.get('completion', ''))} | {_cell(r.get('verdict', ''))} |"
            for r in rows)
        experiment.add_text("val/samples", table, self.global_step)


def _cell(text: str, limit: int = 1500) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("|", "\\|").replace("\n", "<br>")
