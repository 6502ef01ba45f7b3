"""The Linearization interface: a search trace <-> one token sequence.

`render` turns a trace into (prompt, completion); `parse` turns arbitrary text (model output!)
back into events plus structured errors and never raises. Formats ask the task how to write a
state or an action, so every format works with every task and every algorithm.
"""

from __future__ import annotations

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

    @property
    def well_formed(self) -> bool:
        return self.complete and not self.errors


class Linearization(ABC):
    name: str = "linearization"

    @abstractmethod
    def render(self, task: Task, problem: Problem, trace: SearchTrace) -> tuple[str, str]:
        """(prompt, completion). The completion holds the search (if the format shows one) and
        the final answer; the tokenizer adds the end-of-sequence token."""

    @abstractmethod
    def parse(self, task: Task, problem: Problem, text: str) -> ParsedTrace:
        """Read a completion. Must not raise on any input."""

    def keywords(self) -> list[str]:
        """The words this format writes itself (for the tokenizer's vocabulary)."""
        return []

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        d["name"] = self.name
        return d
