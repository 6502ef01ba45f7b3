"""Stream-of-Search style text (Gandhi et al. 2024): one event per line, tree-path node ids.

    start # 0 : 3 5 7 12            the root and its state
    move to # 0                     EXPAND (a transition, or a backtrack when it jumps)
    current state 3 5 7 12          ... and the state the search now stands on
    explore 5 + 7 = 12 -> 3 12 12   GENERATE: the operation tried and the state it gives
    generated # 0 2                 ... and the new node's id: its parent's path + child index
    no solution # 0 2               DEAD_END
    goal reached # 0 1 0            GOAL
    budget exhausted                BUDGET
    answer                          the final answer: one action per line, then `end`
    5 + 7 = 12
    end

Path words are child indices (`0` .. `max_children - 1`, keywords of their own, so a wide node
is a clear render error rather than an unknown token). When an action's words equal its state's
(mazes) the step is written once: `explore 3,4`. SoS carries no costs or values.
"""

from __future__ import annotations

from metacot.linearization.base import ParsedTrace, ParseError
from metacot.linearization.common import (
    ANSWER,
    ARROW,
    END,
    NONE,
    Line,
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

HASH = "#"
_VERDICT = {DEAD_END: "no solution", GOAL: "goal reached"}
_KIND = {("no", "solution"): DEAD_END, ("goal", "reached"): GOAL}


class SoSLinearization(TextLinearization):
    def __init__(self, name: str = "sos", max_children: int = 64,
                 dropping: DualformerDropping | dict | None = None):
        super().__init__(name, dropping)
        if max_children < 1:
            raise ValueError(f"max_children must be >= 1, got {max_children}")
        self.max_children = max_children
        self.words = ("start", HASH, ":", "move", "to", "current", "state", "explore", ARROW,
                      "generated", "no", "solution", "goal", "reached", "budget", "exhausted",
                      ANSWER, NONE, END, *(str(i) for i in range(max_children)))

    def trace_lines(self, task: Task, problem: Problem, events: list[TraceEvent], keep: list[bool],
                    annotated: bool) -> list[str]:
        paths: dict[int, tuple[int, ...]] = {}
        states: dict[int, object] = {}
        children: dict[int | None, int] = {}
        lines = []
        for e, k in zip(events, keep, strict=True):
            if e.kind == GENERATE:
                i = children.get(e.parent, 0)
                children[e.parent] = i + 1
                if i >= self.max_children:
                    raise ValueError(
                        f"node {e.parent} has more than max_children={self.max_children} children; "
                        "raise `linearization.max_children`"
                    )
                if e.parent is None:
                    paths[e.node] = (i,)
                else:
                    if e.parent not in paths:
                        raise ValueError(f"node {e.node} is generated from node {e.parent}, never created")
                    paths[e.node] = paths[e.parent] + (i,)
                states[e.node] = e.state
                if not k:
                    continue
                if e.parent is None:
                    lines.append(f"start {_ref(paths[e.node])} : {task.state_text(problem, e.state)}")
                else:
                    lines.append(f"explore {step_text(task, problem, e.action or '', e.state)}")
                    lines.append(f"generated {_ref(paths[e.node])}")
            elif e.kind == BUDGET:
                if k:
                    lines.append("budget exhausted")
            else:
                state = node_state(states, e)
                if not k:
                    continue
                if e.kind == EXPAND:
                    lines.append(f"move to {_ref(paths[e.node])}")
                    lines.append(f"current state {task.state_text(problem, state)}")
                else:
                    lines.append(f"{_VERDICT[e.kind]} {_ref(paths[e.node])}")
        return lines

    def read(self, task: Task, problem: Problem, lines: list[Line], parsed: ParsedTrace) -> None:
        ids: dict[tuple[int, ...], int] = {}
        events, errors = parsed.events, parsed.errors

        def node(path: tuple[int, ...]) -> int:
            return ids.setdefault(path, len(ids))

        pending = None  # (line, action, state) of an `explore` line waiting for its `generated`
        moved = None  # the EXPAND event a `current state` line may complete
        for idx, (ln, w) in enumerate(lines):
            if pending is not None and w[0] != "generated":
                errors.append(ParseError(pending[0], "'explore' without a 'generated' line after it"))
                pending = None
            waiting, moved = moved, None
            head, pair = w[0], tuple(w[:2])
            if head == ANSWER:
                read_answer(lines, idx, parsed)
                return
            if head == "start":
                path, rest = _path(w[1:])
                state = task.parse_state(problem, " ".join(rest[1:])) if rest[:1] == [":"] else None
                if path is None or len(path) != 1 or state is None:
                    errors.append(ParseError(ln, "expected 'start # <i> : <state>'"))
                    continue
                events.append(TraceEvent(GENERATE, node(path), None, state))
            elif head == "explore":
                action, state, err = parse_step(task, problem, w[1:])
                if err:
                    errors.append(ParseError(ln, err))
                else:
                    pending = (ln, action, state)
            elif head == "generated":
                path, rest = _path(w[1:])
                if path is None or len(path) < 2 or rest:
                    errors.append(ParseError(ln, "expected 'generated # <path>' (a child: 2+ indices)"))
                elif pending is None:
                    errors.append(ParseError(ln, "'generated' without an 'explore' line before it"))
                else:
                    parent = node(path[:-1])
                    events.append(TraceEvent(GENERATE, node(path), parent, pending[2], pending[1]))
                pending = None
            elif pair == ("move", "to"):
                path, rest = _path(w[2:])
                if path is None or rest:
                    errors.append(ParseError(ln, "expected 'move to # <path>'"))
                    continue
                moved = TraceEvent(EXPAND, node(path))
                events.append(moved)
            elif pair == ("current", "state"):
                state = task.parse_state(problem, " ".join(w[2:]))
                if waiting is None:
                    errors.append(ParseError(ln, "'current state' must follow a 'move to' line"))
                elif state is None:
                    errors.append(ParseError(ln, f"not a state: {' '.join(w[2:])!r}"))
                else:
                    waiting.state = state
            elif pair in _KIND:
                path, rest = _path(w[2:])
                if path is None or rest:
                    errors.append(ParseError(ln, f"expected '{' '.join(pair)} # <path>'"))
                    continue
                events.append(TraceEvent(_KIND[pair], node(path)))
            elif w == ["budget", "exhausted"]:
                events.append(TraceEvent(BUDGET, -1))
            else:
                errors.append(ParseError(ln, f"unknown line starting with {head!r}"))
        if pending is not None:
            errors.append(ParseError(pending[0], "'explore' without a 'generated' line after it"))


def _ref(path: tuple[int, ...]) -> str:
    return " ".join((HASH, *map(str, path)))


def _path(words: list[str]) -> tuple[tuple[int, ...] | None, list[str]]:
    """`# i j k ...` -> ((i, j, k), the words after the path); (None, words) if there is none."""
    if not words or words[0] != HASH:
        return None, words
    path = []
    for w in words[1:]:
        i = int_word(w)
        if i is None:
            break
        path.append(i)
    if not path:
        return None, words
    return tuple(path), words[1 + len(path):]
