"""A stage is one step of the pipeline (datagen, sft, eval, rl). `conf/stage/<name>.yaml` names
its class; `train.py` builds it and calls `run(cfg)`. Stages sit at the edge: they read the
composed config and wire plain objects together; the logic lives in the layers below."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Terminated(SystemExit):
    """The run was told to stop (SIGTERM) after saving a checkpoint: a sweep stops too, unlike for
    a job that failed (any other exception, or a plain SystemExit carrying a user error)."""


class Stage(ABC):
    name: str = "stage"

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    def use_earlier(self, results: dict[str, Any]) -> None:  # noqa: B027 - optional hook, no-op by default
        """In a pipeline, called before `run` with the summaries of the stages that ran before it
        (by stage name), so a stage can take what they produced rather than look it up again."""

    @abstractmethod
    def run(self, cfg: Any) -> dict[str, Any]:
        """Do the work; return a summary dict (may hold `objective` for sweeps)."""
