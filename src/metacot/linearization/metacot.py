"""Meta-CoT style text (Xiang et al. 2025): each reasoning step followed by its value estimate,
backtracking written out as a return to an earlier state.

    start 3 5 7 12 v5               the root state and its value
    go 3 5 7 12                     EXPAND a child of the node expanded last (or the first one)
    5 + 7 = 12 -> 3 12 12 v1        GENERATE a child of the node expanded last: a step, its value
    3 * 5 = 15 -> 7 12 15 v3
    back to 7 12 15                 EXPAND anywhere else: a backtrack
    dead end 7 12 15                DEAD_END
    goal 12                         GOAL
    budget                          BUDGET
    answer                          one action per line, then `end`
    5 + 7 = 12
    end

Values are words `v0` .. `v<value_bins - 1>`: bin floor(value * value_bins) of a value in [0, 1]
(clipped). The value is the IR's `value` when the search set one (MCTS: its estimate), else
1 / (1 + h / h0), h from the IR (else the task's heuristic) and h0 = max(1, h at the initial
state): MCTS's heuristic-rollout shape 1 / (1 + h), with distances in units of the root's, so the
values spread over the bins whatever the task's heuristic scale (the root is v5, a goal v9,
countdown's far-off products v0). A parsed `v<k>` reads back as the bin centre
(k + 0.5) / value_bins. Nodes are named by their state (see `StateNodes`). When an action's
words equal its state's (mazes) the step is written once: `3,4 v7`.
"""

from __future__ import annotations

import math

from metacot.linearization.base import ParsedTrace, ParseError
from metacot.linearization.common import (
    ANSWER,
    ARROW,
    END,
    NONE,
    Line,
    StateNodes,
    TextLinearization,
    int_word,
    node_state,
    parse_step,
    read_answer,
    step_text,
)
from metacot.linearization.dropping import DualformerDropping
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, TraceEvent
from metacot.tasks.base import Problem, Task


class MetaCoTLinearization(TextLinearization):
    def __init__(self, name: str = "metacot", value_bins: int = 10,
                 dropping: DualformerDropping | dict | None = None):
        super().__init__(name, dropping)
        if value_bins < 1:
            raise ValueError(f"value_bins must be >= 1, got {value_bins}")
        self.value_bins = value_bins
        self.words = ("start", "go", "back", "to", "dead", END, "goal", "budget", ANSWER, NONE, ARROW,
                      *(f"v{i}" for i in range(value_bins)))

    def value_bin(self, value: float) -> int:
        if value != value:  # NaN
            return 0
        return min(self.value_bins - 1, max(0, math.floor(value * self.value_bins)))

    def trace_lines(self, task: Task, problem: Problem, events: list[TraceEvent], keep: list[bool],
                    annotated: bool) -> list[str]:
        states: dict[int, object] = {}
        parent_of: dict[int, int | None] = {}
        current = None
        h0 = max(1.0, task.heuristic(problem, task.initial_state(problem)))  # unit of derived values
        lines = []
        for e, k in zip(events, keep, strict=True):
            if e.kind == BUDGET:
                if k:
                    lines.append("budget")
                continue
            if e.kind == GENERATE:
                if e.parent is not None and e.parent != current:
                    raise ValueError(
                        f"{self.name} names no parents: node {e.node} must be generated right after its "
                        f"parent {e.parent} is expanded (the last expanded node is {current})"
                    )
                states[e.node] = e.state
                parent_of[e.node] = e.parent
                if not k:
                    continue
                if e.parent is None:
                    text = f"start {task.state_text(problem, e.state)}"
                else:
                    text = step_text(task, problem, e.action or "", e.state)
                if annotated:
                    value = e.value
                    if value is None:
                        h = e.h if e.h is not None else task.heuristic(problem, e.state)
                        value = 1.0 / (1.0 + max(0.0, h) / h0)
                    text += f" v{self.value_bin(value)}"
                lines.append(text)
                continue
            state_text = task.state_text(problem, node_state(states, e))
            if e.kind == EXPAND:
                forward = current is None or parent_of.get(e.node) == current
                current = e.node
                if k:
                    lines.append(f"go {state_text}" if forward else f"back to {state_text}")
            elif k:
                lines.append(f"dead end {state_text}" if e.kind == DEAD_END else f"goal {state_text}")
        return lines

    def read(self, task: Task, problem: Problem, lines: list[Line], parsed: ParsedTrace) -> None:
        nodes = StateNodes()
        events, errors = parsed.events, parsed.errors
        for idx, (ln, w) in enumerate(lines):
            head, pair = w[0], tuple(w[:2])
            if head == ANSWER:
                read_answer(lines, idx, parsed)
                return
            if w == ["budget"]:
                events.append(TraceEvent(BUDGET, -1))
                continue
            if head == "start":
                body, value = self._split_value(w[1:])
                state = task.parse_state(problem, " ".join(body))
                if state is None:
                    errors.append(ParseError(ln, f"not a state: {' '.join(body)!r}"))
                    continue
                events.append(TraceEvent(GENERATE, nodes.create(state, None), None, state, value=value))
                continue
            ref = _REFS.get(pair) or _REFS.get((head,))
            if ref is None:  # a step: `<action> [-> <state>] [v<k>]`
                body, value = self._split_value(w)
                action, state, err = parse_step(task, problem, body)
                if err:
                    errors.append(ParseError(ln, err))
                    continue
                parent = nodes.current
                events.append(TraceEvent(GENERATE, nodes.create(state, parent), parent, state, action,
                                         value=value))
                continue
            kind, skip = ref
            words = w[skip:]
            state = task.parse_state(problem, " ".join(words))
            if state is None:
                errors.append(ParseError(ln, f"not a state: {' '.join(words)!r}"))
                continue
            if kind == EXPAND:
                node = nodes.find(state, among=nodes.current if head == "go" else None)
                nodes.expand(node)
            else:
                node = nodes.find(state, prefer_last=True)
                nodes.settled.add(node)
            events.append(TraceEvent(kind, node, None, state))

    def _split_value(self, words: list[str]) -> tuple[list[str], float | None]:
        """(the other words, the value of a trailing `v<k>` or None)."""
        k = int_word(words[-1], "v") if words else None
        if k is None or k >= self.value_bins:
            return words, None
        return words[:-1], (k + 0.5) / self.value_bins


# Lines that refer to an existing node by its state: leading words -> (event kind, words to skip).
_REFS = {("go",): (EXPAND, 1), ("back", "to"): (EXPAND, 2), ("dead", "end"): (DEAD_END, 2),
         ("goal",): (GOAL, 1)}
