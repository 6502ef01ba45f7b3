"""Options that shape a dataset (`conf/data/<name>.yaml` instantiates `DataOptions`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from metacot.data.tokenizer import NUMBER_MODES

OVERLONG_POLICIES = ("drop", "keep")


@dataclass
class TokenizerOptions:
    numbers: str = "words"  # words: one token per alphabet word; digits: numbers spelled out
    path: str | None = None  # a local pretrained HF tokenizer directory instead of building one

    def __post_init__(self) -> None:
        if self.numbers not in NUMBER_MODES:
            raise ValueError(f"data.tokenizer.numbers must be one of {NUMBER_MODES}, got {self.numbers!r}")


@dataclass
class DataOptions:
    """Problems per split, the context length and what to do with traces that do not fit it.

    `train`/`val`/`test_unseen` count problems; train gets `traces_per_problem` traces of each.
    `keep_unsolved` applies to train only: evaluation splits keep every problem (each record
    says whether the symbolic search solved it). `overlong` applies to every split: a record
    needs `prompt + completion + 2` tokens (`<s>`, `</s>`); one longer than `max_tokens` is
    dropped or kept, never split. `workers` (null = all cores) does not change the data.
    """

    train: int = 20_000
    val: int = 300
    test_unseen: int = 300
    seed: int = 0
    workers: int | None = None
    shard_size: int = 1_000
    max_tokens: int = 4_096
    overlong: str = "drop"
    keep_unsolved: bool = False
    traces_per_problem: int = 1
    tokenizer: TokenizerOptions = field(default_factory=TokenizerOptions)
    name: str = "default"

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, dict):
            self.tokenizer = TokenizerOptions(**self.tokenizer)
        for key in ("train", "val", "test_unseen"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ValueError(f"data.{key} must be an integer >= 0, got {getattr(self, key)!r}")
        for key in ("shard_size", "max_tokens", "traces_per_problem"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be an integer >= 1, got {getattr(self, key)!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"data.workers must be an integer >= 1 or null (all cores), got {self.workers!r}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"data.overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")

    @property
    def counts(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test_unseen": self.test_unseen}

    def num_workers(self) -> int:
        if self.workers:
            return self.workers
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1

    def key(self) -> dict[str, Any]:
        """What shapes the data (enters the dataset hash): everything but `workers` and `name`."""
        d = asdict(self)
        d.pop("workers")
        d.pop("name")
        return d
