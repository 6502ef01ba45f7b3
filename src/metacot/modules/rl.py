"""RLModule: on-policy RL with verifiable rewards, a LightningModule with manual optimisation.

One training step is one RL step:

1. rollout (`metacot.rl.rollout`): this rank's prompts for the step, G samples each, parsed,
   replayed and verified into rewards — prompts and sampler seeds are pure functions of
   (seed, step, rank), so the step counter is the whole data/RNG position and resume is exact;
2. log-probs of the rollout under the rollout policy (only when the objective reuses the batch or
   folds KL into the reward) and under the frozen reference (only when the objective uses KL);
3. `objective.prepare` once on the whole batch, then `epochs_per_batch` passes of micro-batches
   with gradient accumulation (the objective's loss is already scaled by whole-batch normalisers,
   made global over DDP ranks here), norm clipping and one optimizer step per pass.

The trainer's batches are dummies (`StepStream`); the module stops the fit itself after
`options.steps` steps, so a resumed or extended run trains exactly the missing steps.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from metacot.modules.fsdp import finish_backward
from metacot.modules.optim import WarmupCosine, build_optimizer, clip_gradients
from metacot.modules.rl_options import RLOptions
from metacot.rl.objectives.base import LossNorm
from metacot.rl.rollout import Rollout, RolloutCollector, step_seed, summarize
from metacot.rl.update import advantage_stats, batch_logprobs, policy_gradient_pass

log = logging.getLogger(__name__)
__all__ = ["RLModule", "RLOptions", "StepStream"]  # RLOptions lives in rl_options; re-exported


class StepStream(IterableDataset):
    """Endless dummy batches: the RL step counter, not the loader, is the data position."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0


# --- the LightningModule -----------------------------------------------------------------------


class RLModule(L.LightningModule):
    """Policy-gradient RL (every `algo=` except expert iteration, see `ExpertIterationModule`)."""

    def __init__(self, model: nn.Module, tokenizer: Any, objective: Any, collector: RolloutCollector,
                 train_records: list[dict[str, Any]], options: RLOptions, max_new_tokens: int,
                 eval_sets: dict[str, list[dict[str, Any]]] | None = None, eval_options: Any = None,
                 sampler_factory: Callable[[nn.Module], Any] | None = None,
                 evaluate_fn: Callable[..., dict[str, float]] | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.tokenizer = tokenizer
        self.objective = objective
        self.collector = collector
        self.train_records = list(train_records)
        self.options = options
        self.max_new_tokens = int(max_new_tokens)
        self.group_size = int(options.group_size or objective.group_size)
        self.epochs = int(options.epochs_per_batch or getattr(objective, "epochs_per_batch", 1))
        self.eval_sets = eval_sets or {}
        self.eval_options = eval_options
        self.sampler_factory = sampler_factory
        self.evaluate_fn = evaluate_fn
        self.ref_model = None
        model.train()  # from_pretrained returns eval mode (no dropout); Lightning no longer sets train mode
        if getattr(objective, "uses_reference", False):
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.checkpoint_path: Path | None = None  # last.ckpt, written every `save_every` steps
        self.rl_step = 0
        self.nan_skips = 0
        self.eval_history: list[dict[str, Any]] = []
        self._sampler: Any = None
        self._stepped = False
        self._last_grad_norm = torch.zeros(())
        self._t_start: float | None = None
        self.step_times: list[tuple[float, float, float]] = []  # (rollout, log-probs, update) s, this process's steps

    # --- plumbing ------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return DataLoader(StepStream(), batch_size=None)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.options
        opt = build_optimizer(self.model, o.lr, o.weight_decay, o.betas, o.eps, fused=None)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, WarmupCosine(o.warmup_steps, o.steps * self.epochs, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @property
    def rank_world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    @property
    def sampler(self) -> Any:
        if self._sampler is None:
            if self.sampler_factory is not None:
                self._sampler = self.sampler_factory(self.model)
            else:
                from metacot.generation import Sampler

                self._sampler = Sampler(self.model, eos_token_id=self.tokenizer.eos_token_id,
                                        pad_token_id=self.tokenizer.pad_token_id)
        return self._sampler

    def _backward(self, loss: Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)
            finish_backward(self._trainer.strategy.model)  # FSDP: see metacot.modules.fsdp
        else:
            loss.backward()

    def _no_sync(self) -> AbstractContextManager:
        """Skip the gradient all-reduce of a micro-batch that is not the last (DDP). Under FSDP every
        micro-batch reduce-scatters instead: FSDP's `no_sync` may only be entered outside the root's
        forward, and a whole RL step runs inside it (the root wraps the LightningModule)."""
        strategy = self._trainer.strategy if self._trainer else None
        if strategy is None or isinstance(strategy, FSDPStrategy):
            return nullcontext()
        block = getattr(strategy, "block_backward_sync", None)
        return block() if block is not None else nullcontext()

    def _root(self) -> nn.Module:
        return self._trainer.strategy.model if self._trainer is not None else self.model

    def _max_over_ranks(self, value: float) -> float:
        if self.rank_world[1] == 1:
            return value
        return float(self.all_gather(torch.tensor([float(value)], device=self.device)).max())

    def _reduce_sum(self, values: list[float]) -> list[float]:
        if self.rank_world[1] == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(t, reduce_op="sum").tolist()

    def _reduce_tensor(self, t: Tensor) -> Tensor:
        """Sum of `t` over ranks (float64 on the wire)."""
        return self.trainer.strategy.reduce(t.double(), reduce_op="sum")

    # --- the RL step ---------------------------------------------------------------------------
    def collect(self, step: int) -> tuple[Rollout, Rollout]:
        """(rollout to learn from, everything sampled) of this rank at `step` (`collect_step`)."""
        o = self.options
        rank, world = self.rank_world
        was_training = self.model.training
        self.model.eval()
        try:
            return self.collector.collect_step(
                self.sampler, self.train_records, step, rank, world, o.prompts_per_step, self.group_size,
                self.max_new_tokens, temperature=o.temperature, top_p=o.top_p, seed=o.seed,
                batch_size=o.gen_batch_size, refill_rounds=o.refill_rounds)
        finally:
            self.model.train(was_training)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        o = self.options
        self._stepped = False
        if self.rl_step >= o.steps:
            self.trainer.should_stop = True
            return None
        if self._t_start is None:
            self._t_start = time.perf_counter()
        if o.eval_at_start and self.rl_step == 0 and not self.eval_history:
            self.run_eval()
        torch.manual_seed(step_seed(o.seed, self.rl_step, self.rank_world[0], "torch"))
        t0 = time.perf_counter()
        rollout, sampled = self.collect(self.rl_step)
        stats = summarize(sampled)  # what the policy does (before any refill selection)
        stats["rollout/sampled_groups"] = float(len(sampled.records))
        stats["rollout/informative_frac"] = len(rollout.informative_groups()) / max(len(rollout.records), 1)
        stats["time/rollout_s"] = time.perf_counter() - t0
        policy = self.update(rollout)
        self.rl_step += 1
        self._stepped = True
        stats = self.log_scalars(stats, policy)
        self.step_times.append(tuple(stats.get(f"time/{k}_s", 0.0) for k in ("rollout", "logprob", "update")))
        log.info("RL step %d/%d: reward %.3f, solve %.3f, zero-var groups %.2f, len %.0f, %.1fs",
                 self.rl_step, o.steps, stats["reward/mean"], stats["rollout/solve_rate"],
                 stats["rollout/zero_variance_frac"], stats["response/len_mean"], time.perf_counter() - t0)
        if o.table_every and (self.rl_step % o.table_every == 0 or self.rl_step == 1):
            self._add_text("rollouts", rollout.table(o.table_rows))
        done = self.rl_step >= o.steps or self._out_of_time()
        if (o.eval_every and self.rl_step % o.eval_every == 0) or done:
            self.run_eval()
        if done:
            self.trainer.should_stop = True
        return None

    def _out_of_time(self) -> bool:
        """`max_time_s` spent (all ranks agree: rank 0's clock decides)."""
        if not self.options.max_time_s:
            return False
        out = time.perf_counter() - self._t_start >= self.options.max_time_s
        if self.rank_world[1] > 1:
            out = bool(self.trainer.strategy.broadcast(out, src=0))
        if out:
            log.info("rl.max_time_s=%s reached after RL step %d", self.options.max_time_s, self.rl_step)
        return out

    def log_scalars(self, means: dict[str, float], sums: dict[str, float]) -> dict[str, float]:
        """Write one step's scalars at x = RL step. `means` are per-rank means (averaged over
        ranks); `sums` are additive (the objective's stats under global normalisers: summed)."""
        world = self.rank_world[1]
        if world > 1:
            keys = sorted(means) + sorted(sums)
            values = self._reduce_sum([means[k] for k in sorted(means)] + [sums[k] for k in sorted(sums)])
            reduced = dict(zip(keys, values, strict=True))
            means = {k: reduced[k] / world for k in means}
            sums = {k: reduced[k] for k in sums}
        merged = {**means, **sums}
        if self._trainer is not None and self.trainer.logger is not None:
            self.trainer.logger.log_metrics(merged, step=self.rl_step)
        return merged

    def update(self, rollout: Rollout) -> dict[str, float]:
        """Log-probs, advantages and `epochs` optimizer steps on one rollout batch; stats."""
        o, obj = self.options, self.objective
        t0 = time.perf_counter()
        t = rollout.tensors(self.tokenizer.pad_token_id).to(self.device)
        rewards = rollout.reward_tensor().to(self.device)
        reward_kl = getattr(obj, "kl_mode", "none") == "reward" and self.ref_model is not None
        old = batch_logprobs(self.model, t, o.micro_batch_size, o.temperature) if (self.epochs > 1 or reward_kl) else None
        ref = None
        if self.ref_model is not None:
            self.ref_model.eval()  # Lightning's train() reaches it too; the reference never uses dropout
            ref = batch_logprobs(self.ref_model, t, o.micro_batch_size, o.temperature)
        prep = obj.prepare(rewards, t.mask, group_size=self.group_size, old_logp=old, ref_logp=ref,
                           max_length=self.max_new_tokens,
                           reduce_sum=self._reduce_tensor if self.rank_world[1] > 1 else None)
        seqs, toks = self._reduce_sum([float(prep.keep.sum()), float(prep.mask.sum())])
        norm = LossNorm(max(int(seqs), 1), max(int(toks), 1), prep.norm.max_length)
        t1 = time.perf_counter()
        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        skipped = 0
        grad_norm = torch.zeros(())
        for _ in range(self.epochs):
            stats = policy_gradient_pass(self.model, obj, t, prep.advantages, prep.mask, norm, old, ref,
                                         o.micro_batch_size, o.temperature, self._backward,
                                         float(self.rank_world[1]), self._no_sync)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v / self.epochs
            skipped += not self._optimizer_step(opt, sched)
            grad_norm = self._last_grad_norm
        out = {f"policy/{k}": v for k, v in totals.items()}
        world = self.rank_world[1]  # per-rank values below are averaged over ranks when logged:
        out.update({k: v / world for k, v in advantage_stats(prep.advantages, prep.mask).items()})
        out.update({"rollout/kept_frac": prep.stats["kept_frac"] / world,
                    "grad_norm": float(grad_norm) / world, "nan_skipped_steps": float(skipped) / world,
                    "lr": float(opt.param_groups[0]["lr"]) / world, "time/logprob_s": (t1 - t0) / world,
                    "time/update_s": (time.perf_counter() - t1) / world})
        return out

    def _optimizer_step(self, opt: Any, sched: Any) -> bool:
        """Clip, then step unless the gradient is not finite (NaN guard). True if it stepped."""
        grad_norm = clip_gradients(self._root(), [p for p in self.model.parameters() if p.requires_grad],
                                   self.options.clip_grad_norm)
        self._last_grad_norm = grad_norm.detach()
        finite = bool(torch.isfinite(grad_norm).item())
        if finite:
            opt.step()
            sched.step()
            self.nan_skips = 0
        else:
            self.nan_skips += 1
            log.warning("non-finite gradient norm at RL step %d: skipped the optimizer step (%d in a row)",
                        self.rl_step, self.nan_skips)
        opt.zero_grad(set_to_none=True)
        if self.nan_skips > self.options.max_nan_skips:
            raise FloatingPointError(
                f"{self.nan_skips} optimizer steps in a row had a non-finite gradient (RL step {self.rl_step}); "
                "the last good checkpoint is kept. Lower rl.lr or rl.clip_grad_norm, or check the rewards.")
        return finite

    # --- evaluation, logging, checkpoints ------------------------------------------------------
    def run_eval(self) -> dict[str, dict[str, float]]:
        """The evaluator's metrics (same as stage=eval) on every eval split; logged and recorded."""
        if not self.eval_sets:
            return {}
        evaluate = self.evaluate_fn
        if evaluate is None:
            from metacot.eval.evaluator import evaluate
        from metacot.eval.evaluator import EvalOptions

        options = EvalOptions.from_any(self.eval_options)
        if self.rank_world[1] > 1:
            options = EvalOptions(**{**asdict(options), "shard": True})
        t0 = time.perf_counter()
        results: dict[str, dict[str, float]] = {}
        for split, records in self.eval_sets.items():
            out = evaluate(self.model, self.tokenizer, self.collector.task, self.collector.linearization, records,
                           options, sampler=self.sampler)
            results[split] = {k: float(v) for k, v in dict(out).items()}
            for row in getattr(out, "examples", [])[:1]:
                self._add_text(f"eval/{split}/example", f"{row['prompt']}\n\n{row['completion']}\n\n{row['verdict']}")
        self.eval_history.append({"step": self.rl_step, "metrics": results})
        if self._trainer is not None and self.trainer.logger is not None:
            flat = {f"eval/{s}/{k}": v for s, m in results.items() for k, v in m.items() if math.isfinite(v)}
            flat["time/eval_s"] = time.perf_counter() - t0
            self.trainer.logger.log_metrics(flat, step=self.rl_step)
        log.info("RL step %d eval: %s", self.rl_step,
                 ", ".join(f"{s} solve {m.get('solve_rate', float('nan')):.3f}" for s, m in results.items()))
        return results

    def _add_text(self, tag: str, text: str) -> None:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or trainer.logger is None:
            return
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text(tag, text, self.rl_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Periodic last.ckpt (the end, Ctrl-C and SIGTERM are `StopAndSave`'s)."""
        if self.checkpoint_path is not None and self._stepped and self.rl_step % self.options.save_every == 0:
            self.trainer.save_checkpoint(self.checkpoint_path, weights_only=False)  # full state (and no INFO line)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise FloatingPointError("non-finite policy weights: not overwriting the last good checkpoint")
        checkpoint["metacot_rl"] = {"rl_step": self.rl_step, "nan_skips": self.nan_skips,
                                    "eval_history": self.eval_history, "options": asdict(self.options)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("metacot_rl")
        if state is None:
            raise ValueError("this checkpoint was not written by stage=rl (no `metacot_rl` state); "
                             "start RL from it with init_from=<path> instead of resuming")
        self.rl_step = int(state["rl_step"])
        self.nan_skips = int(state["nan_skips"])
        self.eval_history = list(state["eval_history"])

    def on_train_start(self) -> None:
        self._t_start = time.perf_counter()
