"""The Linearization interface: a search trace <-> one token sequence.

`render` turns a trace into (prompt, completion); `parse` turns arbitrary text (model output!)
back into events plus structured errors and never raises. Formats ask the task how to write a
state or an action, so every format works with every task and every algorithm.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from metacot.search.trace import SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task


@dataclass(frozen=True)
class ParseError:
    line: int  # 0-based line number in the completion (-1: not tied to a line)
    message: str


@dataclass
class ParsedTrace:
    """What a parser could read. `events` use the IR's event kinds; node ids are the format's own
    (re-numbered to ints in order of first appearance when the format uses path ids)."""

    events: list[TraceEvent] = field(default_factory=list)
    answer: list[str] | None = None  # the final plan/solution as action strings, if present
    errors: list[ParseError] = field(default_factory=list)
    complete: bool = False  # the format's final section was found and read
    # Costs the format writes saturate at this value (`c<cap>` means ">= cap"); fidelity replay
    # saturates the true costs the same way before comparing. None: costs are not capped.
    cost_cap: int | None = None

    @property
    def well_formed(self) -> bool:
        return self.complete and not self.errors

    def to_trace(self, task: str = "parsed", algorithm: str = "parsed",
                 problem: Problem | None = None) -> SearchTrace:
        """The parsed events as a SearchTrace (to re-render them, or compute stats). `solved` only
        says an answer was written; whether it is right is `Task.verify`'s call."""
        return SearchTrace(
            task=task, algorithm=algorithm, problem=problem or {}, events=list(self.events),
            solution=None if self.answer is None else list(self.answer), solved=self.answer is not None,
        )


class Linearization(ABC):
    name: str = "linearization"

    @abstractmethod
    def render(self, task: Task, problem: Problem, trace: SearchTrace) -> tuple[str, str]:
        """(prompt, completion). The completion holds the search (if the format shows one) and
        the final answer; the tokenizer adds the end-of-sequence token."""

    def render_counted(self, task: Task, problem: Problem, trace: SearchTrace,
                       counter: Any) -> tuple[str, str, int, int]:
        """`render` plus the token counts of prompt and completion under `counter` (a
        `metacot.data.tokenizer.TokenCounter`), equal to `counter.count` of each text. Formats that
        know which words they wrote override it to count without re-reading the text (datagen)."""
        prompt, completion = self.render(task, problem, trace)
        return prompt, completion, counter.count(prompt), counter.count(completion)

    @abstractmethod
    def parse(self, task: Task, problem: Problem, text: str) -> ParsedTrace:
        """Read a completion. Must not raise on any input."""

    def augment(self, task: Task, problem: Problem, completion: str, rng: random.Random) -> str:
        """A training-time variant of a stored completion (e.g. Dualformer trace dropping).
        Identity unless the format is configured to augment."""
        return completion

    def keywords(self) -> list[str]:
        """The words this format writes itself (for the tokenizer's vocabulary)."""
        return []

    def task_keywords(self, task: Task) -> list[str]:
        """Words this format derives from the task's own words (e.g. fused event words)."""
        return []

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        d["name"] = self.name
        return d
