"""Plumbing shared by the text formats: lines of words, the answer section, trace dropping, and
node lookup for the formats that name nodes by their state instead of an id.

Every format is line-based: one step per line, the first word(s) say what the line is. Parsers
read `text.split("\\n")` then `line.split()`, so the single spaces (and spaces around newlines) a
word-level decoder produces are harmless.
"""

from __future__ import annotations

import math
import random
from abc import abstractmethod
from typing import Any

from metacot.linearization.base import Linearization, ParsedTrace, ParseError
from metacot.linearization.dropping import FAST, SLOW, DualformerDropping
from metacot.search.trace import SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task

ARROW = "->"
ANSWER, NONE, END = "answer", "none", "end"

Line = tuple[int, list[str]]  # (0-based line number in the completion, words)


def split_lines(text: str) -> list[Line]:
    return [(i, words) for i, line in enumerate(text.split("\n")) if (words := line.split())]


def int_word(word: str, prefix: str = "") -> int | None:
    """`<prefix><digits>` as an int, else None. Short ASCII digits only: model text is arbitrary
    (and `int()` of 5000 digits raises)."""
    if not word.startswith(prefix):
        return None
    digits = word[len(prefix):]
    if 0 < len(digits) <= 6 and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def cost_value(x: float, cap: int | None) -> int:
    """A cost as its token's value: rounded half up, floored at 0, saturated at `cap`."""
    if x != x:  # NaN
        return 0
    if math.isinf(x):
        return 0 if x < 0 else (cap if cap is not None else 2**31)
    v = max(0, math.floor(x + 0.5))
    return v if cap is None else min(v, cap)


def step_cost(task: Task, problem: Problem, parent_state: Any, action: str | None, state: Any) -> float:
    """The cost of the step parent -> state (by action when known); 1 if the task has no such step."""
    for s in task.successors(problem, parent_state):
        if (s.action == action) if action is not None else (s.state == state):
            return s.cost
    return 1.0


def single_spaced(text: str) -> str:
    """`" ".join(text.split())`, skipping the split when the text is already single-spaced (the
    usual case: tasks write their actions that way). `isprintable()` rules out every whitespace
    character but the ASCII space, so the fast path agrees with `split()` exactly."""
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return " ".join(text.split())


def step_text(task: Task, problem: Problem, action: str, state: Any, state_text: str | None = None) -> str:
    """`<action> -> <state>`, or just `<action>` when its words are the state's (mazes: a move is
    the cell it reaches), which keeps such traces compact. `state_text`: the state's text if the
    caller already has it."""
    st = task.state_text(problem, state) if state_text is None else state_text
    a = single_spaced(action)
    return a if a == st else f"{a} {ARROW} {st}"


def parse_step(task: Task, problem: Problem, words: list[str]) -> tuple[str | None, Any, str | None]:
    """(action, state, error) from the words of `step_text`."""
    if ARROW in words:
        k = words.index(ARROW)
        action, st = words[:k], words[k + 1:]
        if not action:
            return None, None, f"missing action before '{ARROW}'"
    else:
        action = st = words
    state = task.parse_state(problem, " ".join(st))
    if state is None:
        return None, None, f"not a state: {' '.join(st)!r}"
    return " ".join(action), state, None


def read_answer(lines: list[Line], start: int, parsed: ParsedTrace) -> None:
    """The header-style answer section: `answer` (or `answer none`), one action per line, `end`."""
    ln, words = lines[start]
    unsolved = words[1:] == [NONE]
    if len(words) > 1 and not unsolved:
        parsed.errors.append(ParseError(ln, f"expected '{ANSWER}' or '{ANSWER} {NONE}'"))
    actions = []
    for ln, words in lines[start + 1:]:
        if parsed.complete:
            parsed.errors.append(ParseError(ln, f"text after '{END}'"))
        elif words == [END]:
            parsed.complete = True
        elif unsolved:
            parsed.errors.append(ParseError(ln, f"action after '{ANSWER} {NONE}'"))
        else:
            actions.append(" ".join(words))
    if parsed.complete:
        parsed.answer = None if unsolved else actions


def answer_lines(solution: list[str] | None) -> list[str]:
    if solution is None:
        return [f"{ANSWER} {NONE}", END]
    return [ANSWER, *(" ".join(a.split()) for a in solution), END]


class StateNodes:
    """Node ids for formats that name a node by its state (searchformer, metacot).

    Ids are given in order of creation. A reference by state resolves to the node the search most
    plausibly meant: among the nodes with that state (children of `among` first, when given),
    an *open* one (neither expanded nor declared dead / goal) first, then one whose g matches,
    then the most recent. This recovers the exact tree for A* (re-generated cheaper duplicates),
    DFS (backtracks to the most recent copy of an ancestor), BFS, beam and MCTS. A state never
    created gets a phantom id of its own, which fidelity replay flags.
    """

    def __init__(self) -> None:
        self.with_state: dict[Any, list[int]] = {}
        self.parent: dict[int, int | None] = {}
        self.g: dict[int, float | None] = {}
        self.settled: set[int] = set()
        self.phantoms: dict[Any, int] = {}
        self.count = 0
        self.current: int | None = None  # the node expanded last
        self.last: int | None = None  # the node of the last event

    def create(self, state: Any, parent: int | None, g: float | None = None) -> int:
        node = self.count
        self.count += 1
        self.with_state.setdefault(state, []).append(node)
        self.parent[node] = parent
        self.g[node] = g
        self.last = node
        return node

    def find(self, state: Any, g: float | None = None, among: int | None = None,
             prefer_last: bool = False) -> int:
        nodes = self.with_state.get(state)
        if not nodes:
            if state not in self.phantoms:
                self.phantoms[state] = self.count
                self.count += 1
            node = self.phantoms[state]
        elif prefer_last and self.last in nodes:
            node = self.last
        else:
            if among is not None:
                nodes = [n for n in nodes if self.parent[n] == among] or nodes
            node = max(nodes, key=lambda n: (n not in self.settled, g is not None and self.g[n] == g, n))
        self.last = node
        return node

    def expand(self, node: int) -> None:
        self.settled.add(node)
        self.current = node


class TextLinearization(Linearization):
    """A line-based format: optional mode word, trace lines, answer section.

    Subclasses write `trace_lines` (render the events whose `keep` flag is set; structure such as
    paths or parents comes from all events) and `read` (parse the lines into `parsed`).
    `dropping` (a DualformerDropping, or its arguments as a dict) turns on `augment`.
    """

    cost_cap: int | None = None  # see ParsedTrace.cost_cap
    words: tuple[str, ...] = ()  # the format's own keywords

    def __init__(self, name: str, dropping: DualformerDropping | dict | None = None):
        self.name = name
        if isinstance(dropping, dict):
            dropping = DualformerDropping(**{k: v for k, v in dropping.items() if k != "_target_"})
        self.dropping = dropping

    def trace_lines(self, task: Task, problem: Problem, events: list[TraceEvent], keep: list[bool],
                    annotated: bool) -> list[str]:
        return []

    @abstractmethod
    def read(self, task: Task, problem: Problem, lines: list[Line], parsed: ParsedTrace) -> None:
        """Parse the completion's lines into `parsed` (never raise: record ParseErrors)."""

    def answer_lines(self, solution: list[str] | None) -> list[str]:
        return answer_lines(solution)

    # --- the Linearization API ------------------------------------------------------------------
    def render(self, task: Task, problem: Problem, trace: SearchTrace) -> tuple[str, str]:
        return task.prompt_text(problem), self.completion(task, problem, trace.events, trace.solution)

    def completion(self, task: Task, problem: Problem, events: list[TraceEvent],
                   solution: list[str] | None, level: int = 0, rng: random.Random | None = None) -> str:
        """The completion text at a dropping `level` (0: the full trace)."""
        if level and self.dropping is None:
            raise ValueError(f"{self.name}: dropping level {level} needs a `dropping` config")
        keep = self.dropping.keep_mask(level, events, rng or random.Random(0)) if level else [True] * len(events)
        mode = self.dropping.mode_word(level) if self.dropping is not None else None
        lines = [mode] if mode else []
        lines += self.trace_lines(task, problem, events, keep, DualformerDropping.annotated(level))
        lines += self.answer_lines(solution)
        return "\n".join(lines)

    def parse(self, task: Task, problem: Problem, text: str) -> ParsedTrace:
        parsed = ParsedTrace(cost_cap=self.cost_cap)
        lines = split_lines(text)
        if lines and lines[0][1] in ([SLOW], [FAST]):
            lines = lines[1:]
        self.read(task, problem, lines, parsed)
        return parsed

    def augment(self, task: Task, problem: Problem, completion: str, rng: random.Random) -> str:
        """Parse the stored completion, drop parts of it at a random level, render it again."""
        if self.dropping is None:
            return completion
        parsed = self.parse(task, problem, completion)
        if not parsed.well_formed:
            first = parsed.errors[0] if parsed.errors else "no final answer section"
            raise ValueError(
                f"{self.name}.augment needs a completion rendered by this format; parsing it failed "
                f"({first}). Rebuild the dataset with this linearization (`stage=datagen`)."
            )
        level = self.dropping.sample_level(rng)
        return self.completion(task, problem, parsed.events, parsed.answer, level, rng)

    def keywords(self) -> list[str]:
        extra = self.dropping.keywords() if self.dropping is not None else []
        return list(dict.fromkeys([*self.words, *extra]))

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in super().describe().items() if k not in ("words", "cost_cap")}
        if self.dropping is not None:
            d["dropping"] = self.dropping.describe()
        return d


def node_state(state_of: dict[int, Any], e: TraceEvent) -> Any:
    """The state of the node an event refers to (renderers need it; the IR guarantees it)."""
    if e.node not in state_of:
        raise ValueError(f"{e.kind} event refers to node {e.node}, which no earlier GENERATE created")
    return state_of[e.node]
