"""The no-search baseline: the completion is the answer alone.

    answer          (or `answer none` when the search found no solution)
    5 + 7 = 12
    12 * 3 = 36
    end
"""

from __future__ import annotations

from metacot.linearization.base import ParsedTrace, ParseError
from metacot.linearization.common import ANSWER, END, NONE, Line, TextLinearization, read_answer
from metacot.linearization.dropping import DualformerDropping
from metacot.tasks.base import Problem, Task


class SolutionLinearization(TextLinearization):
    words = (ANSWER, NONE, END)

    def __init__(self, name: str = "solution", dropping: DualformerDropping | dict | None = None):
        super().__init__(name, dropping)

    def read(self, task: Task, problem: Problem, lines: list[Line], parsed: ParsedTrace) -> None:
        for idx, (ln, w) in enumerate(lines):
            if w[0] == ANSWER:
                read_answer(lines, idx, parsed)
                return
            parsed.errors.append(ParseError(ln, f"expected '{ANSWER}'"))
