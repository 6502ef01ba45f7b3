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

A child that is a leaf right away (its verdict is the next event), of the node the search stands
on, is written as SoS writes it: the `explore` line, then the bare verdict, with no id --
`explore 12 - 3 = 9 -> 9` / `no solution` -- its id is implied: the path of the last `move to`
plus the number of children written under it so far. Most DFS events are such leaves, so this cuts
a quarter to a third of the tokens. Path words are child indices (`0` .. `max_children - 1`, keywords of their
own, so a wide node is a clear render error rather than an unknown token). When an action's words
equal its state's (mazes) the step is written once: `explore 3,4`. SoS carries no costs or values.
"""

from __future__ import annotations

from typing import Any

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
    single_spaced,
)
from metacot.linearization.dropping import DualformerDropping
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task

HASH = "#"
_VERDICT = {DEAD_END: "no solution", GOAL: "goal reached"}
_KIND = {("no", "solution"): DEAD_END, ("goal", "reached"): GOAL}
_NO_ID = "'explore' without a 'generated' line (or a bare verdict) after it"
_spaced: dict[str, str] = {}  # action -> its single-spaced form (tasks reuse action strings)


def _remember_spaced(action: str) -> str:
    if len(_spaced) >= 1 << 16:
        _spaced.clear()
    out = _spaced[action] = single_spaced(action)
    return out


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
        self._index_words = [f" {i}" for i in range(max_children)]  # path words, space-led

    def render_counted(self, task: Task, problem: Problem, trace: SearchTrace,
                       counter: Any) -> tuple[str, str, int, int]:
        """`render` and both token counts. Every word of the completion is a keyword or a word of a
        state text, action or answer line written, so `counter.count_within` gets those."""
        if self.dropping is not None:  # a mode word first: the generic path
            return super().render_counted(task, problem, trace, counter)
        written: list[str] = []
        lines = self.trace_lines(task, problem, trace.events, None, True, written)
        answer = self.answer_lines(trace.solution)
        written += answer
        completion = "\n".join(lines + answer)
        prompt = task.prompt_text(problem)
        return prompt, completion, counter.count(prompt), counter.count_within(completion, written, self.words)

    def trace_lines(self, task: Task, problem: Problem, events: list[TraceEvent], keep: list[bool] | None,
                    annotated: bool, written: list[str] | None = None) -> list[str]:
        """The lines of the events whose `keep` flag is set (None: all of them); `written`, when
        given, receives the state texts and actions written."""
        refs: dict[int | None, str] = {None: HASH}  # node -> its path id as written: "# 0 2 1"
        texts: dict[int, str] = {}  # node -> its state text, once written
        hidden: dict[int, object] = {}  # node -> its state, when its GENERATE line was dropped
        children: dict[int | None, int] = {}  # node -> children generated (path indices)
        dropped: set[int | None] = set()  # nodes with a child left unwritten (readers count written ones)
        index_words, state_text, verdict, spaced = self._index_words, task.state_text, _VERDICT, _spaced
        max_children, every = self.max_children, keep is None
        here = None  # the node of the last `move to` line: a bare verdict's parent
        lines: list[str] = []
        append = lines.append
        actions: list[str] = []
        j, n = 0, len(events)
        while j < n:
            e = events[j]
            kept = every or keep[j]  # type: ignore[index]
            j += 1
            kind, node = e.kind, e.node
            if kind == GENERATE:
                parent = e.parent
                i = children[parent] = children.get(parent, -1) + 1
                if i >= max_children:
                    raise ValueError(f"node {parent} has more than max_children={max_children} children; "
                                     "raise `linearization.max_children`")
                ref = refs.get(parent)
                if ref is None:
                    raise ValueError(f"node {node} is generated from node {parent}, never created")
                ref = refs[node] = ref + index_words[i]
                if not kept:
                    hidden[node] = e.state
                    texts.pop(node, None)
                    dropped.add(parent)
                    continue
                st = texts[node] = state_text(problem, e.state)
                if parent is None:
                    append(f"start {ref} : {st}")
                    continue
                action = e.action or ""
                action = spaced.get(action) or _remember_spaced(action)
                actions.append(action)
                append(f"explore {action} {ARROW} {st}" if action != st else "explore " + action)
                if parent == here and j < n and not (dropped and parent in dropped):
                    nxt = events[j]
                    if nxt.node == node and nxt.kind in verdict and (every or keep[j]):  # type: ignore[index]
                        append(verdict[nxt.kind])  # the leaf's bare verdict: its id is implied
                        j += 1
                        continue
                append("generated " + ref)
            elif kind == EXPAND:
                if node not in texts and node not in hidden:
                    node_state({}, e)  # raises: no GENERATE created this node
                if kept:
                    st = texts.get(node)
                    if st is None:
                        st = texts[node] = state_text(problem, hidden[node])
                    append("move to " + refs[node])
                    append("current state " + st)
                    here = node
            elif kind == BUDGET:
                if kept:
                    append("budget exhausted")
            else:
                if node not in texts and node not in hidden:
                    node_state({}, e)
                if kept:
                    append(f"{verdict[kind]} {refs[node]}")
        if written is not None:
            written += texts.values()
            written += actions
        return lines

    def read(self, task: Task, problem: Problem, lines: list[Line], parsed: ParsedTrace) -> None:
        ids: dict[tuple[int, ...], int] = {}
        written: dict[tuple[int, ...], int] = {}  # path -> its children written so far
        events, errors = parsed.events, parsed.errors

        def node(path: tuple[int, ...]) -> int:
            return ids.setdefault(path, len(ids))

        def child(path: tuple[int, ...], action: str, state: object) -> None:
            parent = path[:-1]
            written[parent] = written.get(parent, 0) + 1
            events.append(TraceEvent(GENERATE, node(path), node(parent), state, action))

        pending = None  # (line, action, state) of an `explore` line waiting for its `generated`
        moved = None  # the EXPAND event a `current state` line may complete
        here = None  # the path of the last `move to` line: the parent of a bare verdict's leaf
        for idx, (ln, w) in enumerate(lines):
            head, pair = w[0], tuple(w[:2])
            bare = pair in _KIND and len(w) == 2  # a leaf's verdict, right after its `explore`
            if pending is not None and head != "generated" and not bare:
                errors.append(ParseError(pending[0], _NO_ID))
                pending = None
            waiting, moved = moved, None
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
                    child(path, pending[1], pending[2])
                pending = None
            elif pair == ("move", "to"):
                path, rest = _path(w[2:])
                if path is None or rest:
                    errors.append(ParseError(ln, "expected 'move to # <path>'"))
                    continue
                here = path
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
            elif bare:
                if pending is None or here is None:
                    errors.append(ParseError(ln, f"expected '{' '.join(pair)} # <path>' (a bare "
                                                 f"'{' '.join(pair)}' follows an 'explore' after a 'move to')"))
                    pending = None
                    continue
                path = here + (written.get(here, 0),)
                child(path, pending[1], pending[2])
                events.append(TraceEvent(_KIND[pair], node(path)))
                pending = None
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
            errors.append(ParseError(pending[0], _NO_ID))


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
