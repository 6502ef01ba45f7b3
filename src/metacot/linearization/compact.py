"""A compact create/close format: one word per search event, the whole trace on one line.

    c0,0 x0,0 c0,1 c1,0 x0,1 c0,2 x0,2 ...      GENERATE = c<state>, EXPAND = x<state>
    plan 0,1 0,2 1,2 ...                        the answer's actions on one line
    end

It is Searchformer's trace (create/close in search order, nodes named by their state, a created
node's parent is the node closed last) without the cost tokens, with the event kind fused into the
state word. Why: at CPU scale a tiny model learns what it sees most often per token. Calibration
runs here (5x5 mazes, 0.86M parameters, 3M training tokens) solved 11.5% of held-out mazes with
`create x,y cG cH` lines and 98.5% with this format — the cost tokens took most of the tokens and
the loss, and a separate `create` word had to be re-associated with the cell after it.

Fusing needs states that are one word (maze cells). For tasks whose states are several words
(Countdown), each event gets its own line, `c <state words>` / `x <state words>`, and a multi-word
plan separates its actions with `;`. Dead ends, goals and budget events are not written: a failed
search ends with `plan none`.
"""

from __future__ import annotations

from typing import Any

from metacot.linearization.base import ParsedTrace, ParseError
from metacot.linearization.common import END, NONE, Line, StateNodes, TextLinearization, node_state
from metacot.search.trace import EXPAND, GENERATE, TraceEvent
from metacot.tasks.base import Problem, Task

CREATE, CLOSE, PLAN, SEP = "c", "x", "plan", ";"
_HEAD = {GENERATE: CREATE, EXPAND: CLOSE}


class CompactLinearization(TextLinearization):
    words = (CREATE, CLOSE, PLAN, SEP, NONE, END)

    def __init__(self, name: str = "compact", dropping: Any = None):
        super().__init__(name, dropping)

    def task_keywords(self, task: Task) -> list[str]:
        """The fused event words `c<word>` / `x<word>` for every single-word state the task can write."""
        return [f"{h}{w}" for w in task.alphabet() for h in (CREATE, CLOSE) if " " not in w]

    # --- render -----------------------------------------------------------------------------------
    def trace_lines(self, task: Task, problem: Problem, events: list[TraceEvent], keep: list[bool],
                    annotated: bool) -> list[str]:
        states: dict[int, Any] = {}
        current = None
        written: list[tuple[str, str]] = []
        for e, k in zip(events, keep, strict=True):
            head = _HEAD.get(e.kind)
            if head is None:
                continue
            if e.kind == GENERATE:
                if e.parent != current:
                    raise ValueError(
                        f"{self.name} names no parents: node {e.node} must be generated right after its "
                        f"parent {e.parent} is expanded (the last expanded node is {current})"
                    )
                states[e.node] = e.state
            else:
                current = e.node
            if k:
                written.append((head, task.state_text(problem, node_state(states, e))))
        if any(" " in text for _, text in written):  # several-word states: one event per line
            return [f"{head} {text}" for head, text in written]
        return [" ".join(head + text for head, text in written)] if written else []

    def answer_lines(self, solution: list[str] | None) -> list[str]:
        if solution is None:
            return [f"{PLAN} {NONE}", END]
        actions = [" ".join(a.split()) for a in solution]
        sep = f" {SEP} " if any(" " in a for a in actions) else " "
        return [f"{PLAN} {sep.join(actions)}".rstrip(), END]

    # --- parse ------------------------------------------------------------------------------------
    def read(self, task: Task, problem: Problem, lines: list[Line], parsed: ParsedTrace) -> None:
        nodes = StateNodes()
        for idx, (ln, words) in enumerate(lines):
            if words[0] in (PLAN, END):
                _read_plan(lines, idx, parsed)
                return
            if words[0] in (CREATE, CLOSE):  # one multi-word event on its own line
                self._event(task, problem, words[0], " ".join(words[1:]), ln, nodes, parsed)
                continue
            for w in words:  # fused one-word events
                head, body = w[:1], w[1:]
                if head not in (CREATE, CLOSE) or not body:
                    parsed.errors.append(ParseError(ln, f"not a search event: {w!r}"))
                    continue
                self._event(task, problem, head, body, ln, nodes, parsed)

    @staticmethod
    def _event(task: Task, problem: Problem, head: str, text: str, ln: int, nodes: StateNodes,
               parsed: ParsedTrace) -> None:
        state = task.parse_state(problem, text)
        if state is None:
            parsed.errors.append(ParseError(ln, f"not a state: {text!r}"))
            return
        if head == CREATE:
            parent = nodes.current
            parsed.events.append(TraceEvent(GENERATE, nodes.create(state, parent), parent, state))
        else:
            node = nodes.find(state)
            nodes.expand(node)
            parsed.events.append(TraceEvent(EXPAND, node, None, state))


def _read_plan(lines: list[Line], start: int, parsed: ParsedTrace) -> None:
    """`plan <a1> <a2> ...` (or `plan a b c ; d e f`, or `plan none`), then `end`."""
    ln, words = lines[start]
    if words[0] == END:
        parsed.errors.append(ParseError(ln, f"'{END}' before the '{PLAN}' line"))
        return
    body = words[1:]
    if body == [NONE]:
        actions = None
    elif SEP in body:
        actions, cur = [], []
        for w in [*body, SEP]:
            if w == SEP:
                if not cur:
                    parsed.errors.append(ParseError(ln, f"empty action between '{SEP}'"))
                else:
                    actions.append(" ".join(cur))
                cur = []
            else:
                cur.append(w)
    else:
        actions = body
    rest = lines[start + 1:]
    if not rest or rest[0][1] != [END]:
        parsed.errors.append(ParseError(rest[0][0] if rest else ln, f"expected '{END}' after the plan"))
        return
    for extra_ln, _ in rest[1:]:
        parsed.errors.append(ParseError(extra_ln, f"text after '{END}'"))
    parsed.complete = True
    parsed.answer = actions
