"""Expert iteration (STaR; Searchformer's search-dynamics bootstrapping) on the RL machinery.

Each RL step is one round: sample `samples_per_problem` completions for this step's training
problems (the same rollout collector and verifier as policy-gradient RL), keep the
verified-correct ones (`ExpertIterationObjective.select`: all, or the shortest per problem), and
fine-tune on them with the SFT loss (`metacot.modules.sft.token_loss_sum` over
`metacot.data.collate` rows) for `rl.sft_epochs` passes of `rl.sft_batch_size` examples per
optimizer step. Checkpoints, resume, DDP, evaluation and logging are `RLModule`'s.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from typing import Any

import torch

from metacot.data.collate import Encoded, collate_rows, encode_pair
from metacot.modules.rl import RLModule
from metacot.modules.sft import token_loss_sum
from metacot.rl.rollout import Rollout, step_seed


class ExpertIterationModule(RLModule):
    """`algo=expert_iteration`: `options.steps` is the number of rounds."""

    def select(self, rollout: Rollout) -> list[tuple[str, str]]:
        """(prompt, completion text) of the samples to fine-tune on."""
        problem = [i // rollout.group_size for i in range(len(rollout))]
        chosen = self.objective.select(problem, [o.correct for o in rollout.outcomes],
                                       [len(r) for r in rollout.responses])
        return [(rollout.record_of(i)["prompt"], rollout.texts[i]) for i in chosen]

    def _encode(self, examples: list[tuple[str, str]]) -> list[Encoded]:
        tok = self.tokenizer
        return [encode_pair(tok, self.collector.encode({"prompt": p}), tok.encode(c, add_special_tokens=False),
                            loss_on_prompt=False) for p, c in examples]

    def update(self, rollout: Rollout) -> dict[str, float]:
        o = self.options
        t0 = time.perf_counter()
        encoded = self._encode(self.select(rollout))
        world = self.rank_world[1]
        steps_per_epoch = math.ceil(self._max_over_ranks(len(encoded)) / o.sft_batch_size)
        opt, sched = self.optimizers(), self.lr_schedulers()
        loss_sum = tokens_sum = 0.0
        skipped = 0
        for epoch in range(o.sft_epochs if steps_per_epoch else 0):
            order = list(range(len(encoded)))
            random.Random(step_seed(o.seed, self.rl_step, self.rank_world[0], f"ei-{epoch}")).shuffle(order)
            for s in range(steps_per_epoch):
                chunk = [encoded[i] for i in order[s * o.sft_batch_size : (s + 1) * o.sft_batch_size]]
                local_tokens = sum(len(ids) - first for ids, first in chunk)
                (global_tokens,) = self._reduce_sum([float(local_tokens)])
                loss = self._sft_step(chunk, max(global_tokens, 1.0) / world)
                skipped += not self._optimizer_step(opt, sched)
                loss_sum += loss
                tokens_sum += local_tokens
        stats = {
            "ei/selected": float(len(encoded)),
            "ei/selected_per_problem": len(encoded) / max(len(rollout.records), 1) / world,
            "ei/sft_loss": loss_sum / max(tokens_sum, 1.0) / world,
            "ei/optimizer_steps": float(steps_per_epoch * o.sft_epochs) / world,
            "grad_norm": float(self._last_grad_norm) / world,
            "nan_skipped_steps": float(skipped) / world,
            "lr": float(opt.param_groups[0]["lr"]) / world,
            "time/update_s": (time.perf_counter() - t0) / world,
        }
        return stats

    def _sft_step(self, chunk: list[Encoded], denominator: float) -> float:
        """Accumulate the gradient of Σ token CE / `denominator` over `chunk` in micro-batches.

        A rank with nothing to learn this step still runs one zero-loss backward, so every rank
        makes the same number of gradient all-reduces under DDP.
        """
        pad = self.tokenizer.pad_token_id
        micro = self.options.micro_batch_size
        parts = [chunk[i : i + micro] for i in range(0, len(chunk), micro)] or [[]]
        total = 0.0
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            with self._no_sync() if not last else nullcontext():
                if part:
                    batch = collate_rows([[e] for e in part], pad)
                    batch = {key: v.to(self.device) if torch.is_tensor(v) else v for key, v in batch.items()}
                    loss_sum = token_loss_sum(self.model, batch)
                else:  # keeps DDP's all-reduce count equal across ranks
                    ids = torch.tensor([[self.tokenizer.bos_token_id or 0]], device=self.device)
                    loss_sum = self.model(input_ids=ids).logits.float().sum() * 0.0
                self._backward(loss_sum / denominator)
            total += float(loss_sum.detach())
        return total

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["metacot_rl"]["algo"] = "expert_iteration"
