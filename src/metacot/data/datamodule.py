"""TraceDataModule: dataset records -> token batches for SFT (packed, token-budgeted, resumable).

The training stream is one deterministic sequence of micro-batches for the whole run
(`RunPlan`): epoch after epoch, each shuffled with (seed, epoch). A run of `max_steps`
optimizer steps is one Lightning epoch of exactly `max_steps x accumulate` micro-batches, and
the loader starts at `global_step x accumulate` — so resuming from any checkpoint, at a data
epoch boundary or not, continues the same stream instead of replaying or skipping data, and
raising `max_steps` on a finished run trains the extra steps. Under DDP every rank computes the
same stream and takes every `world`-th batch (no DistributedSampler: build the Trainer with
`use_distributed_sampler=False`, as `TrainerFactory` does).

Examples longer than the context are dropped with a counted warning, never split.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from metacot.data.collate import (
    IGNORE_INDEX,
    Encoded,
    collate_rows,
    encode_example,
    encode_pair,
    encode_prompt,
)
from metacot.data.packing import Batch, RunPlan, length_batches, pack_rows
from metacot.data.records import why_empty

__all__ = ["IGNORE_INDEX", "LinearizationAugment", "TraceDataModule", "encode_example", "encode_prompt"]

log = logging.getLogger(__name__)
NO_AUGMENT = -1  # the "epoch" of validation batches: stored completions, unchanged


class _Examples:
    """Records encoded once; with an augmentation, re-encoded per epoch (cached for the last one)."""

    def __init__(self, records: Sequence[dict[str, Any]], tokenizer: Any, loss_on_prompt: bool,
                 augment: Callable[[dict[str, Any], random.Random], str] | None, seed: int):
        self.records = list(records)
        self.tokenizer = tokenizer
        self.loss_on_prompt = loss_on_prompt
        self.augment = augment
        self.seed = seed
        self.prompts = _batch_encode(tokenizer, [r["prompt"] for r in self.records])
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.prompts = [bos + p for p in self.prompts]
        self.base = self._encode([r["completion"] for r in self.records])
        self._epoch: tuple[int, list[Encoded]] | None = None

    def keep_at_most(self, max_len: int) -> int:
        """Drop the examples longer than `max_len` tokens; return how many were dropped."""
        keep = [i for i, (ids, _) in enumerate(self.base) if len(ids) <= max_len]
        dropped = len(self.base) - len(keep)
        self.records = [self.records[i] for i in keep]
        self.prompts = [self.prompts[i] for i in keep]
        self.base = [self.base[i] for i in keep]
        return dropped

    def _encode(self, completions: list[str]) -> list[Encoded]:
        ids = _batch_encode(self.tokenizer, completions)
        return [encode_pair(self.tokenizer, p, c, self.loss_on_prompt) for p, c in zip(self.prompts, ids, strict=True)]

    def for_epoch(self, epoch: int) -> list[Encoded]:
        if self.augment is None or epoch == NO_AUGMENT:
            return self.base
        if self._epoch is None or self._epoch[0] != epoch:
            texts = [self.augment(r, self.rng(epoch, i)) for i, r in enumerate(self.records)]
            self._epoch = (epoch, self._encode(texts))
        return self._epoch[1]

    def get(self, epoch: int, i: int) -> Encoded:
        if self.augment is None or epoch == NO_AUGMENT or (self._epoch and self._epoch[0] == epoch):
            return self.for_epoch(epoch)[i]
        text = self.augment(self.records[i], self.rng(epoch, i))  # a worker: just this example
        return self._encode_one(i, text)

    def _encode_one(self, i: int, completion: str) -> Encoded:
        ids = self.tokenizer.encode(completion, add_special_tokens=False)
        return encode_pair(self.tokenizer, self.prompts[i], ids, self.loss_on_prompt)

    def rng(self, epoch: int, i: int) -> random.Random:
        return random.Random(f"{self.seed}:{epoch}:{self.records[i].get('id', i)}")


def _batch_encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


class _BatchDataset(Dataset):
    """Item = one batch: the sampler hands out (epoch, rows of example indices)."""

    def __init__(self, examples: _Examples, pad_id: int, width: int | None):
        self.examples = examples
        self.pad_id = pad_id
        self.width = width

    def __getitem__(self, spec: tuple[int, Batch]) -> dict[str, Any]:
        epoch, rows = spec
        encoded = [[self.examples.get(epoch, i) for i in row] for row in rows]
        ids = [int(self.examples.records[i].get("id", i)) for row in rows for i in row]
        return collate_rows(encoded, self.pad_id, self.width, example_ids=ids)

    def __len__(self) -> int:
        return len(self.examples.records)


class _RunSampler(Sampler):
    """This rank's micro-batches [start, stop) of the run's global stream; `start` is read when
    iteration begins (after Lightning restored a checkpoint's global_step)."""

    def __init__(self, plan: RunPlan, rank: int, world: int, start: Callable[[], int],
                 stop: Callable[[], int | None]):
        self.plan, self.rank, self.world, self.start, self.stop = plan, rank, world, start, stop

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        start, stop = self.start(), self.stop()
        stream = self.plan.iterate(start * self.world + self.rank, self.world)
        b = start
        while stop is None or b < stop:
            yield next(stream)
            b += 1

    def __len__(self) -> int:
        """The run's length, as for a resumable loader: a resumed run yields only the rest."""
        stop = self.stop()
        if stop is None:
            raise TypeError("the training stream is endless without a step budget (set max_steps)")
        return stop


class _ResumableLoader(DataLoader):
    """Declares itself resumable to Lightning (`state_dict`/`load_state_dict`): where to resume is
    not stored here but derived from the restored `global_step` (see `_RunSampler`)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _identity(x: Any) -> Any:
    return x


class LinearizationAugment:
    """`augment(record, rng)` through `linearization.augment(task, problem, completion, rng)`
    (a class, not a lambda, so DataLoader workers can pickle it)."""

    def __init__(self, task: Any, linearization: Any):
        self.task = task
        self.linearization = linearization

    def __call__(self, record: dict[str, Any], rng: random.Random) -> str:
        return self.linearization.augment(self.task, record["problem"], record["completion"], rng)


class TraceDataModule(L.LightningDataModule):
    """Batches of `<s> prompt completion </s>` sequences under a token budget.

    `augment(record, rng) -> completion` (e.g. Dualformer dropping through the linearization) is
    applied per example per epoch. `pack_width` is the packed row length: None = the longest
    training example rounded up to 64, capped at `max_seq_len` (dense attention over a packed
    row costs row_width^2, so rows much longer than the examples waste compute).
    `total_batches` is this rank's number of micro-batches for the run; None asks the attached
    Trainer (`max_steps x accumulate_grad_batches`). `manifest` (the dataset's) lets an empty
    train split say why it is empty.
    """

    def __init__(self, train_records: Sequence[dict[str, Any]], val_records: Sequence[dict[str, Any]],
                 tokenizer: Any, max_seq_len: int, batch_tokens: int = 8192, packing: bool = True,
                 pack_width: int | None = None, loss_on_prompt: bool = False, seed: int = 0,
                 num_workers: int = 0, val_examples: int | None = None,
                 augment: Callable[[dict[str, Any], random.Random], str] | None = None,
                 total_batches: int | None = None, overlong_policy: str | None = None,
                 manifest: dict[str, Any] | None = None):
        super().__init__()
        if max_seq_len < 2 or batch_tokens < 1:
            raise ValueError(f"need max_seq_len >= 2 and batch_tokens >= 1, got {max_seq_len}, {batch_tokens}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.batch_tokens = batch_tokens
        self.packing = packing
        self.loss_on_prompt = loss_on_prompt
        self.seed = seed
        self.num_workers = num_workers
        self.augment = augment
        self.total_batches = total_batches
        self.overlong_policy = overlong_policy
        val_records = list(val_records)[:val_examples] if val_examples is not None else list(val_records)
        self.train = _Examples(train_records, tokenizer, loss_on_prompt, augment, seed)
        self.val = _Examples(val_records, tokenizer, loss_on_prompt, None, seed)
        self.dropped = {"train": self._drop_overlong(self.train, "train"), "val": self._drop_overlong(self.val, "val")}
        if not self.train.records:
            raise ValueError(self._no_train_examples(manifest))
        longest = max(len(ids) for ids, _ in self.train.base)
        self.width = min(max_seq_len, pack_width or -(-(longest + 8) // 64) * 64)
        self.rows_per_batch = max(1, batch_tokens // self.width)
        self.plan = RunPlan(self._epoch_batches)
        self._epoch_drops: dict[int, int] = {}

    # --- setup ------------------------------------------------------------------------------
    def _drop_overlong(self, examples: _Examples, split: str) -> int:
        """Keep the examples whose full sequence fits `max_seq_len`; count and report the others."""
        dropped = examples.keep_at_most(self.max_seq_len)
        if dropped:
            policy = f" (dataset overlong policy: {self.overlong_policy})" if self.overlong_policy else ""
            log.warning("dropped %d of %d %s examples longer than max_seq_len=%d tokens%s; traces are never split",
                        dropped, dropped + len(examples.records), split, self.max_seq_len, policy)
        return dropped

    def _no_train_examples(self, manifest: dict[str, Any] | None) -> str:
        """Why there is nothing to train on: an empty train split (data.train=0, or the build
        dropped every trace: the manifest says which), or records none of which fits the context."""
        dropped = self.dropped["train"]
        if dropped:
            policy = f" (the dataset's overlong policy: {self.overlong_policy})" if self.overlong_policy else ""
            return (f"no training examples fit the context: all {dropped} train records of the dataset are longer "
                    f"than max_seq_len={self.max_seq_len} tokens{policy}; raise data.max_tokens")
        reason = why_empty(manifest, "train") if manifest is not None else None
        reason = reason or ("data.train=0, or the build dropped every train trace as overlong or unsolved: "
                            "its manifest.json counts them")
        return f"no training examples: the dataset's train split has 0 records ({reason})"

    @property
    def val_records(self) -> list[dict[str, Any]]:
        return self.val.records

    # --- the training stream ----------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[Batch]:
        encoded = self.train.for_epoch(epoch)
        lengths = [len(ids) for ids, _ in encoded]
        rng = random.Random(f"{self.seed}:plan:{epoch}")
        order = list(range(len(lengths)))
        rng.shuffle(order)
        fits = [i for i in order if lengths[i] <= self.width]
        if len(fits) < len(order) and epoch not in self._epoch_drops:
            self._epoch_drops[epoch] = len(order) - len(fits)
            log.warning("epoch %d: %d augmented examples exceed the row width %d and were left out",
                        epoch, len(order) - len(fits), self.width)
        return self._batches(lengths, fits, rng, self.width)

    def _batches(self, lengths: list[int], order: list[int], rng: random.Random, width: int) -> list[Batch]:
        if not self.packing:
            return length_batches(lengths, order, self.batch_tokens, rng)
        rows = pack_rows(lengths, order, width)
        rng.shuffle(rows)
        r = max(1, self.batch_tokens // width)
        batches = [rows[i : i + r] for i in range(0, len(rows), r)]
        batches[-1] = batches[-1] + [[] for _ in range(r - len(batches[-1]))]  # same shape every step
        return batches

    def fill_fraction(self, epoch: int = 0) -> float:
        """Share of the token slots of an epoch's batches that hold real tokens (not padding)."""
        lengths = [len(ids) for ids, _ in self.train.for_epoch(epoch)]
        used = slots = 0
        for batch in self.plan.batches(epoch):
            row_lengths = [sum(lengths[i] for i in row) for row in batch]
            width = self.width if self.packing else max(8, -(-max(row_lengths) // 8) * 8)
            used += sum(row_lengths)
            slots += width * len(batch)
        return used / max(1, slots)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _trainer_or_none(self) -> Any:
        return getattr(self, "trainer", None)

    def _start(self) -> int:
        trainer = self._trainer_or_none()
        return trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0

    def _stop(self) -> int | None:
        if self.total_batches is not None:
            return self.total_batches
        trainer = self._trainer_or_none()
        if trainer is None or trainer.max_steps is None or trainer.max_steps < 0:
            return None
        return trainer.max_steps * trainer.accumulate_grad_batches

    def _loader(self, dataset: Dataset, sampler: Any) -> DataLoader:
        return _ResumableLoader(dataset, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=_identity, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = _RunSampler(self.plan, rank, world, self._start, self._stop)
        return self._loader(_BatchDataset(self.train, self.tokenizer.pad_token_id,
                                          self.width if self.packing else None), sampler)

    def val_dataloader(self) -> DataLoader:
        """Every validation example once, in a fixed order, split over the ranks; empty batches
        pad the list so every rank runs the same number of steps (FSDP needs that)."""
        rank, world = self._rank_world()
        lengths = [len(ids) for ids, _ in self.val.base]
        width = max(self.width, max(lengths, default=0))
        batches = self._batches(lengths, list(range(len(lengths))), random.Random(f"{self.seed}:val"), width)
        batches += [[[]]] * (-len(batches) % world or (world if not batches else 0))  # same count per rank
        specs = [(NO_AUGMENT, b) for b in batches[rank::world]]
        return self._loader(_BatchDataset(self.val, self.tokenizer.pad_token_id, width if self.packing else None),
                            specs)

    # --- checkpointing (LightningDataModule hooks) --------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.plan.load_state_dict(state_dict.get("plan", {}))
