"""Searchformer's token format (Lehnert et al. 2024): create / close steps, then the plan.

    create 0,0 c0 c6       GENERATE: state, cost-so-far g, heuristic h
    close 0,0 c0 c6        EXPAND
    dead 2,3               DEAD_END
    goal 4,4               GOAL
    budget                 BUDGET
    plan 0,1               one line per action of the answer (`plan none`: no answer)
    end

There are no node ids: a node is named by its state, and a created node's parent is the node
closed last (every algorithm here generates a node's children right after expanding it). Costs
are words `c0` .. `c<max_cost>`, rounded half up and saturated at `max_cost` (`c<max_cost>`
reads ">= max_cost"); a trace whose IR lacks g or h gets them from the task (h) and the step
costs (g), so every algorithm's trace has the same shape. `costs=False` writes none.
"""

from __future__ import annotations

from metacot.linearization.base import ParsedTrace, ParseError
from metacot.linearization.common import (
    END,
    NONE,
    Line,
    StateNodes,
    TextLinearization,
    cost_value,
    int_word,
    node_state,
    step_cost,
)
from metacot.linearization.dropping import DualformerDropping
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, TraceEvent
from metacot.tasks.base import Problem, Task

PLAN = "plan"
_HEAD = {GENERATE: "create", EXPAND: "close", DEAD_END: "dead", GOAL: "goal"}


class SearchformerLinearization(TextLinearization):
    def __init__(self, name: str = "searchformer", costs: bool = True, max_cost: int = 100,
                 dropping: DualformerDropping | dict | None = None):
        super().__init__(name, dropping)
        if max_cost < 1:
            raise ValueError(f"max_cost must be >= 1, got {max_cost}")
        self.costs = costs
        self.max_cost = max_cost
        self.cost_cap = max_cost
        self.words = (*_HEAD.values(), "budget", PLAN, NONE, END,
                      *((f"c{i}" for i in range(max_cost + 1)) if costs else ()))

    def trace_lines(self, task: Task, problem: Problem, events: list[TraceEvent], keep: list[bool],
                    annotated: bool) -> list[str]:
        states: dict[int, object] = {}
        costs: dict[int, str] = {}
        g_of: dict[int, float] = {}
        current = None
        lines = []
        for e, k in zip(events, keep, strict=True):
            if e.kind == BUDGET:
                if k:
                    lines.append("budget")
                continue
            if e.kind == GENERATE:
                if e.parent != current:
                    raise ValueError(
                        f"{self.name} names no parents: node {e.node} must be generated right after its "
                        f"parent {e.parent} is expanded (the last expanded node is {current})"
                    )
                states[e.node] = e.state
                if e.g is not None:
                    g = e.g
                elif e.parent is None:
                    g = 0.0
                else:
                    g = g_of[e.parent] + step_cost(task, problem, states[e.parent], e.action, e.state)
                h = e.h if e.h is not None else task.heuristic(problem, e.state)
                g_of[e.node] = g
                costs[e.node] = f" c{cost_value(g, self.max_cost)} c{cost_value(h, self.max_cost)}"
            state = node_state(states, e)
            if e.kind == EXPAND:
                current = e.node
            if k:
                tail = costs[e.node] if self.costs and annotated and e.kind in (GENERATE, EXPAND) else ""
                lines.append(f"{_HEAD[e.kind]} {task.state_text(problem, state)}{tail}")
        return lines

    def answer_lines(self, solution: list[str] | None) -> list[str]:
        if solution is None:
            return [f"{PLAN} {NONE}", END]
        return [*(f"{PLAN} {' '.join(a.split())}" for a in solution), END]

    def read(self, task: Task, problem: Problem, lines: list[Line], parsed: ParsedTrace) -> None:
        nodes = StateNodes()
        events, errors = parsed.events, parsed.errors
        for idx, (ln, w) in enumerate(lines):
            head = w[0]
            if head == PLAN or w == [END]:
                _read_plan(lines, idx, parsed)
                return
            if w == ["budget"]:
                events.append(TraceEvent(BUDGET, -1))
                continue
            if head not in ("create", "close", "dead", "goal"):
                errors.append(ParseError(ln, f"unknown line starting with {head!r}"))
                continue
            body, tokens = _split_costs(w[1:])
            if tokens and (len(tokens) != 2 or head in ("dead", "goal")):
                errors.append(ParseError(ln, f"'{head}' takes a state then 0 or 2 cost words (c<g> c<h>)"))
                continue
            state = task.parse_state(problem, " ".join(body))
            if state is None:
                errors.append(ParseError(ln, f"not a state: {' '.join(body)!r}"))
                continue
            g, h = tokens if tokens else (None, None)
            if head == "create":
                parent = nodes.current
                events.append(TraceEvent(GENERATE, nodes.create(state, parent, g), parent, state, None, g, h))
            elif head == "close":
                node = nodes.find(state, g=g)
                nodes.expand(node)
                events.append(TraceEvent(EXPAND, node, None, state, None, g, h))
            else:
                node = nodes.find(state, prefer_last=True)
                nodes.settled.add(node)
                events.append(TraceEvent(DEAD_END if head == "dead" else GOAL, node, None, state))


def _split_costs(words: list[str]) -> tuple[list[str], list[int]]:
    """(state words, trailing cost values)."""
    k = len(words)
    while k > 0 and int_word(words[k - 1], "c") is not None:
        k -= 1
    return words[:k], [int_word(w, "c") for w in words[k:]]


def _read_plan(lines: list[Line], start: int, parsed: ParsedTrace) -> None:
    """`plan <action>` lines (or one `plan none`), then `end`."""
    actions: list[str] = []
    unsolved = False
    for ln, w in lines[start:]:
        if parsed.complete:
            parsed.errors.append(ParseError(ln, f"text after '{END}'"))
        elif w == [END]:
            parsed.complete = True
        elif w[0] != PLAN or len(w) < 2:
            parsed.errors.append(ParseError(ln, f"expected '{PLAN} <action>' or '{END}'"))
        elif w[1:] == [NONE]:
            if actions or unsolved:
                parsed.errors.append(ParseError(ln, f"'{PLAN} {NONE}' must be the only plan line"))
            unsolved = True
        elif unsolved:
            parsed.errors.append(ParseError(ln, f"plan step after '{PLAN} {NONE}'"))
        else:
            actions.append(" ".join(w[1:]))
    if parsed.complete:
        parsed.answer = None if unsolved else actions
