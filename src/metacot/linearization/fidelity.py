"""Fidelity: replay a parsed trace (model output) step by step against the task's simulator.

Each step the trace claims is checked locally, from the state its parent was *claimed* to have:

- GENERATE: the root must be the initial state (and come once); a child's parent must have been
  generated, its action (when the format writes one) must be legal there and give exactly the
  claimed state, or (state-only formats) the claimed state must be a successor; a claimed g must
  equal the parent's g plus the step's cost (any step reaching that state, for state-only
  formats) and a claimed h the task's heuristic, both compared as the format's cost words
  (rounded half up, saturated at `parsed.cost_cap`). A node generated twice is invalid.
- EXPAND: the node must have been generated; a claimed state / g / h must be the node's.
- GOAL: the node's state (claimed on the line, else the generated one) must be a goal;
  DEAD_END: it must not be one. Neither checks that the node has no children: a search may
  prune. Values are estimates and are not checked. BUDGET is not a step.

`fraction` is valid / total, and 1.0 for a trace with no steps (the solution-only format): a
trace with nothing in it claims nothing false. Weigh by `total_steps` to average over formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metacot.linearization.base import ParsedTrace
from metacot.linearization.common import cost_value
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, TraceEvent, search_stats
from metacot.tasks.base import Problem, Task, Verdict


@dataclass
class Fidelity:
    valid_steps: int
    total_steps: int
    fraction: float
    nodes: int
    expansions: int
    backtracks: int
    max_depth: int
    answer_correct: bool
    answer_optimal: bool
    verdict: Verdict
    well_formed: bool
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (event index, why) per bad step

    def as_dict(self) -> dict[str, Any]:
        """Flat numbers for metrics tables."""
        return {k: getattr(self, k) for k in (
            "valid_steps", "total_steps", "fraction", "nodes", "expansions", "backtracks", "max_depth",
            "answer_correct", "answer_optimal", "well_formed")}


def replay(task: Task, problem: Problem, parsed: ParsedTrace, reference_length: int | None = None) -> Fidelity:
    """Check every step of `parsed` and verify its answer.

    `reference_length` is the optimal number of actions when the caller knows it (dataset records
    carry it): the answer is optimal iff correct and no longer. Without it, `task.verify` decides.
    """
    cap = parsed.cost_cap
    nodes: dict[int, tuple[Any, float]] = {}  # node -> (claimed state, g)
    invalid: list[tuple[int, str]] = []
    total = roots = 0
    for i, e in enumerate(parsed.events):
        if e.kind == BUDGET:
            continue
        total += 1
        if e.kind == GENERATE:
            if e.parent is None and roots:
                why = "a second root"
            else:
                why = _generate(task, problem, e, nodes, cap)
            roots += e.parent is None
        elif e.kind == EXPAND:
            why = _expand(task, problem, e, nodes, cap)
        elif e.kind in (GOAL, DEAD_END):
            why = _leaf(task, problem, e, nodes)
        else:
            why = f"unknown event kind {e.kind!r}"
        if why:
            invalid.append((i, why))

    if parsed.answer is None:
        verdict = Verdict(False, 0, error="no answer")
    else:
        verdict = task.verify(problem, parsed.answer)
    if reference_length is not None:
        optimal = verdict.correct and verdict.length <= reference_length
    else:
        optimal = verdict.correct and verdict.optimal
    stats = search_stats(parsed.events)
    valid = total - len(invalid)
    return Fidelity(
        valid_steps=valid, total_steps=total, fraction=valid / total if total else 1.0,
        nodes=stats["nodes"], expansions=stats["expansions"], backtracks=stats["backtracks"],
        max_depth=stats["max_depth"], answer_correct=verdict.correct, answer_optimal=optimal,
        verdict=verdict, well_formed=parsed.well_formed, invalid=invalid,
    )


def _generate(task: Task, problem: Problem, e: TraceEvent, nodes: dict, cap: int | None) -> str | None:
    if e.node in nodes:
        return "node generated twice"
    if e.state is None:
        return "no state"
    if e.parent is None:
        gs = [0.0]
        why = None if e.state == task.initial_state(problem) else "a root that is not the initial state"
    elif e.parent not in nodes:
        nodes[e.node] = (e.state, e.g if e.g is not None else 0.0)
        return "parent was never generated"
    else:
        parent_state, parent_g = nodes[e.parent]
        succ = task.successors(problem, parent_state)
        if e.action is not None:
            nxt = task.apply(problem, parent_state, e.action)
            why = ("illegal action" if nxt is None else
                   None if nxt == e.state else "the action does not give the claimed state")
            action = " ".join(e.action.split())
            costs = [s.cost for s in succ if s.action == action] or [1.0]
        else:  # state-only formats: any step that reaches the state will do (e.g. 1 + 1 and 1 * 2)
            costs = [s.cost for s in succ if s.state == e.state]
            why = None if costs else "not a successor of its parent"
        gs = [parent_g + c for c in costs] if why is None else [parent_g]
    nodes[e.node] = (e.state, e.g if e.g is not None else min(gs))
    if why is None and e.g is not None and all(cost_value(e.g, cap) != cost_value(g, cap) for g in gs):
        why = "wrong cost-so-far g"
    if why is None and e.h is not None and cost_value(e.h, cap) != cost_value(task.heuristic(problem, e.state), cap):
        why = "wrong heuristic h"
    return why


def _expand(task: Task, problem: Problem, e: TraceEvent, nodes: dict, cap: int | None) -> str | None:
    if e.node not in nodes:
        return "expands a node never generated"
    state, g = nodes[e.node]
    if e.state is not None and e.state != state:
        return "the claimed state is not the node's"
    if e.g is not None and cost_value(e.g, cap) != cost_value(g, cap):
        return "wrong cost-so-far g"
    if e.h is not None and cost_value(e.h, cap) != cost_value(task.heuristic(problem, state), cap):
        return "wrong heuristic h"
    return None


def _leaf(task: Task, problem: Problem, e: TraceEvent, nodes: dict) -> str | None:
    known = nodes.get(e.node, (None, 0.0))[0]
    if known is not None and e.state is not None and e.state != known:
        return "the claimed state is not the node's"
    state = e.state if e.state is not None else known
    if state is None:
        return "refers to an unknown node"
    goal = task.is_goal(problem, state)
    if e.kind == GOAL:
        return None if goal else "not a goal"
    return "a goal declared a dead end" if goal else None
