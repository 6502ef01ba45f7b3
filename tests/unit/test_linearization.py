"""Linearizations: exact renders of a hand-built trace, round trips for every format x algorithm x
task, vocabulary coverage, parsers that never raise (fuzz, truncation, corruption), Dualformer
dropping levels."""

from __future__ import annotations

import math
import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.linearization.base import ParsedTrace
from metacot.linearization.common import cost_value, single_spaced, split_lines
from metacot.linearization.dropping import DualformerDropping
from metacot.linearization.fidelity import replay
from metacot.linearization.metacot import MetaCoTLinearization
from metacot.linearization.searchformer import SearchformerLinearization
from metacot.linearization.solution import SolutionLinearization
from metacot.linearization.sos import SoSLinearization
from metacot.search.astar import AStarSearch
from metacot.search.beam import BeamSearch
from metacot.search.bfs import BFSSearch
from metacot.search.dfs import DFSSearch
from metacot.search.mcts import MCTSSearch
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, SearchTrace, TraceEvent
from metacot.tasks.base import SPLITS, Problem, State, Successor, Task
from metacot.tasks.countdown import CountdownTask
from metacot.tasks.maze import MazeTask

FUZZ = settings(max_examples=40, deadline=None)


# --- tiny test tasks ---------------------------------------------------------------------------
def fewest_actions(task: Task, problem: Problem) -> int | None:
    """Breadth-first reference for optimal_length."""
    start = task.initial_state(problem)
    depth = {start: 0}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        if task.is_goal(problem, s):
            return depth[s]
        for x in task.successors(problem, s):
            if x.state not in depth:
                depth[x.state] = depth[s] + 1
                queue.append(x.state)
    return None


class HopTask(Task):
    """Walk a number line from `start` to `target` within [0, limit]: multi-word actions, a costlier
    move, and a non-integer heuristic (|target - n| / 2, so rounding half up matters)."""

    name = "hop"
    MOVES = (("+ 1", lambda n: n + 1, 1.0), ("+ 3", lambda n: n + 3, 1.0), ("* 2", lambda n: n * 2, 2.0),
             ("- 2", lambda n: n - 2, 1.0))

    def sample_problems(self, split: str, n: int, seed: int) -> list[Problem]:
        rng = random.Random(seed * 7 + SPLITS.index(split))
        return [{"start": rng.randrange(0, 6), "target": rng.randrange(6, 12), "limit": 12} for _ in range(n)]

    def initial_state(self, problem: Problem) -> State:
        return problem["start"]

    def successors(self, problem: Problem, state: State) -> list[Successor]:
        out = []
        for text, f, cost in self.MOVES:
            n = f(state)
            if 0 <= n <= problem["limit"]:
                out.append(Successor(text, n, cost))
        return out

    def is_goal(self, problem: Problem, state: State) -> bool:
        return state == problem["target"]

    def heuristic(self, problem: Problem, state: State) -> float:
        return abs(problem["target"] - state) / 2

    def optimal_length(self, problem: Problem) -> int | None:
        return fewest_actions(self, problem)

    def prompt_text(self, problem: Problem) -> str:
        return f"from {problem['start']} to {problem['target']}"

    def state_text(self, problem: Problem, state: State) -> str:
        return str(state)

    def parse_state(self, problem: Problem, text: str) -> State | None:
        words = text.split()
        if len(words) != 1 or not (words[0].isascii() and words[0].isdigit()) or len(words[0]) > 3:
            return None
        n = int(words[0])
        return n if n <= problem["limit"] else None

    def alphabet(self) -> list[str]:
        return ["from", "to", "+", "-", "*", *(str(i) for i in range(13))]


class GridTask(Task):
    """A 3 x 3 grid with walls; an action is the cell it reaches (as in mazes), one word `x,y`."""

    name = "grid"

    def sample_problems(self, split: str, n: int, seed: int) -> list[Problem]:
        return [GRID] * n

    def initial_state(self, problem: Problem) -> State:
        return tuple(problem["start"])

    def successors(self, problem: Problem, state: State) -> list[Successor]:
        walls = {tuple(w) for w in problem["walls"]}
        out = []
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            c = (state[0] + dx, state[1] + dy)
            if 0 <= c[0] < 3 and 0 <= c[1] < 3 and c not in walls:
                out.append(Successor(f"{c[0]},{c[1]}", c))
        return out

    def is_goal(self, problem: Problem, state: State) -> bool:
        return state == tuple(problem["goal"])

    def heuristic(self, problem: Problem, state: State) -> float:
        return abs(state[0] - problem["goal"][0]) + abs(state[1] - problem["goal"][1])

    def optimal_length(self, problem: Problem) -> int | None:
        return fewest_actions(self, problem)

    def prompt_text(self, problem: Problem) -> str:
        return "grid"

    def state_text(self, problem: Problem, state: State) -> str:
        return f"{state[0]},{state[1]}"

    def parse_state(self, problem: Problem, text: str) -> State | None:
        words = text.split()
        if len(words) != 1 or words[0] not in CELLS:
            return None
        x, y = words[0].split(",")
        return int(x), int(y)

    def alphabet(self) -> list[str]:
        return ["grid", *CELLS]


CELLS = [f"{x},{y}" for x in range(3) for y in range(3)]
GRID = {"start": [0, 0], "goal": [2, 2], "walls": [[1, 1]]}

FORMATS = {
    "sos": SoSLinearization,
    "searchformer": SearchformerLinearization,
    "metacot": MetaCoTLinearization,
    "solution": SolutionLinearization,
    "dualformer": lambda: SearchformerLinearization(
        name="dualformer", dropping=DualformerDropping([0.2, 0.2, 0.2, 0.2, 0.2])),
}


# --- a hand-built trace (shared with test_fidelity) --------------------------------------------
HOP = {"start": 1, "target": 5, "limit": 6}


def hand_trace() -> SearchTrace:
    """Expand 1; try 1*2=2 and 1+3=4; go to 4, try 4-2=2 (declared dead); back to 2; 2+3=5 goal."""
    h = HopTask()
    ev = [
        TraceEvent(GENERATE, 0, None, 1, None, 0.0, h.heuristic(HOP, 1)),
        TraceEvent(EXPAND, 0),
        TraceEvent(GENERATE, 1, 0, 2, "* 2", 2.0, 1.5),
        TraceEvent(GENERATE, 2, 0, 4, "+ 3", 1.0, 0.5, 0.83),
        TraceEvent(EXPAND, 2),
        TraceEvent(GENERATE, 3, 2, 2, "- 2", 2.0, 1.5),
        TraceEvent(DEAD_END, 3),
        TraceEvent(EXPAND, 1),
        TraceEvent(GENERATE, 4, 1, 5, "+ 3", 3.0, 0.0),
        TraceEvent(GOAL, 4),
    ]
    return SearchTrace("hop", "hand", HOP, ev, ["* 2", "+ 3"], True)


EXPECTED = {
    "sos": """start # 0 : 1
move to # 0
current state 1
explore * 2 -> 2
generated # 0 0
explore + 3 -> 4
generated # 0 1
move to # 0 1
current state 4
explore - 2 -> 2
no solution
move to # 0 0
current state 2
explore + 3 -> 5
goal reached
answer
* 2
+ 3
end""",
    # h(1) = 2, h(2) = 1.5 -> c2 and h(4) = 0.5 -> c1 (half up); the two nodes of state 2 are told
    # apart by which is still open when `close 2` comes.
    "searchformer": """create 1 c0 c2
close 1 c0 c2
create 2 c2 c2
create 4 c1 c1
close 4 c1 c1
create 2 c2 c2
dead 2
close 2 c2 c2
create 5 c3 c0
goal 5
plan * 2
plan + 3
end""",
    # h0 = 2: values 1 / (1 + h / 2) -> root 0.5 (v5), h 1.5 -> 0.57 (v5), goal 1.0 (v9); node 2
    # carries its own value 0.83 (v8).
    "metacot": """start 1 v5
go 1
* 2 -> 2 v5
+ 3 -> 4 v8
go 4
- 2 -> 2 v5
dead end 2
back to 2
+ 3 -> 5 v9
goal 5
answer
* 2
+ 3
end""",
    "solution": "answer\n* 2\n+ 3\nend",
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_hand_trace_renders_exactly(fmt):
    prompt, text = FORMATS[fmt]().render(HopTask(), HOP, hand_trace())
    assert prompt == "from 1 to 5"
    assert text == EXPECTED[fmt]


def test_unsolved_and_empty_answers():
    task = HopTask()
    failed = SearchTrace("hop", "hand", HOP, [TraceEvent(GENERATE, 0, None, 1, None, 0.0, 2.0),
                                              TraceEvent(BUDGET, -1)], None, False)
    assert FORMATS["solution"]().render(task, HOP, failed)[1] == "answer none\nend"
    assert FORMATS["searchformer"]().render(task, HOP, failed)[1] == "create 1 c0 c2\nbudget\nplan none\nend"
    assert FORMATS["sos"]().render(task, HOP, failed)[1] == "start # 0 : 1\nbudget exhausted\nanswer none\nend"
    at_goal = {"start": 5, "target": 5, "limit": 6}
    trivial = SearchTrace("hop", "hand", at_goal, [TraceEvent(GENERATE, 0, None, 5, None, 0.0, 0.0),
                                                   TraceEvent(GOAL, 0)], [], True)
    for name, make in FORMATS.items():
        lin = make()
        for trace, problem in ((failed, HOP), (trivial, at_goal)):
            parsed = lin.parse(task, problem, lin.render(task, problem, trace)[1])
            assert parsed.well_formed, (name, parsed.errors)
            assert parsed.answer == trace.solution


def test_maze_steps_are_written_once_and_costs_saturate():
    grid = GridTask()
    text = MetaCoTLinearization().render(grid, GRID, BFSSearch().run(grid, GRID))[1]
    assert text.splitlines()[:3] == ["start 0,0 v5", "go 0,0", "1,0 v5"]  # h0 = 4: h 3 -> 1 / 1.75
    cd = CountdownTask(num_count=3)
    problem = {"target": 24, "numbers": [3, 25, 25]}
    lines = SearchformerLinearization(max_cost=10).render(cd, problem, AStarSearch().run(cd, problem))[1]
    lines = lines.split("\n")
    # h = mean |n - 24|: (21 + 1 + 1) / 3 = 7.67 -> c8; 3 625 -> 311.5, saturated at c10
    assert lines[:3] == ["create 3 25 25 c0 c8", "close 3 25 25 c0 c8", "create 25 28 c1 c3"]
    assert "create 3 625 c1 c10" in lines
    costs = [int(w[1:]) for x in lines for w in x.split() if w[0] == "c" and w[1:].isdigit()]
    assert max(costs) == 10


# --- round trips over every format x algorithm x task ------------------------------------------
ALGORITHMS = {
    "bfs": lambda b: BFSSearch(max_expansions=b),
    "dfs": lambda b: DFSSearch(max_expansions=b),
    "dfs_closed": lambda b: DFSSearch(max_expansions=b, closed_set=True),
    "beam": lambda b: BeamSearch(max_expansions=b, width=2),
    "astar": lambda b: AStarSearch(max_expansions=b),
    "astar_shuffle": lambda b: AStarSearch(max_expansions=b, shuffle=True),
    "mcts": lambda b: MCTSSearch(max_expansions=b),
    "mcts_random": lambda b: MCTSSearch(max_expansions=b, rollout="random", rollout_depth=3),
}


def _problems():
    """(task, problem) pairs: tiny tasks, Countdown-3 and 5x5 mazes, solvable and unsolvable."""
    hop = HopTask()
    cd = CountdownTask(num_count=3, max_number=12)
    maze = MazeTask(size=5)
    out = [(hop, p) for p in hop.sample_problems("train", 3, 0)]
    out += [(hop, {"start": 0, "target": 11, "limit": 12}), (GridTask(), GRID)]
    out += [(cd, {"target": t, "numbers": n}) for t, n in ((24, [2, 3, 4]), (35, [5, 6, 12]), (97, [1, 1, 2]))]
    out += [(maze, p) for p in MAZES]
    return out


MAZES = [  # 5 x 5, cells are "x,y"; the second one has its goal walled in
    {"size": 5, "walls": [[0, 1], [0, 2], [0, 4], [1, 1], [1, 3], [2, 1], [2, 2], [4, 2]],
     "start": [2, 4], "goal": [0, 0]},
    {"size": 5, "walls": [[3, 4], [4, 3], [1, 1], [2, 2]], "start": [0, 0], "goal": [4, 4]},
]


PROBLEMS = _problems()
CASES = [(a, b, i) for a in ALGORITHMS for b in (4, 200) for i in range(len(PROBLEMS))]


def traces():
    for algo, budget, i in CASES:
        task, problem = PROBLEMS[i]
        yield task, problem, ALGORITHMS[algo](budget).run(task, problem, seed=i)


TRACES = list(traces())
REAL_AND_TINY = [(HopTask(), HOP), (GridTask(), GRID), (CountdownTask(num_count=3), {"target": 24, "numbers": [2, 3, 4]}),
                 (MazeTask(size=5), MAZES[0])]


def carried(lin, task, problem, events):
    """Per event, what the format can give back: kind, node / parent ids renumbered by first
    appearance, the state of created nodes, and the action / costs / value bin it writes."""
    ids: dict[int, int] = {}

    def rid(n):
        return None if n is None else -1 if n == -1 else ids.setdefault(n, len(ids))

    g_of, h_of = {}, {}
    h0 = max(1.0, task.heuristic(problem, task.initial_state(problem)))
    cap = getattr(lin, "max_cost", None)
    out = []
    for e in events:
        row = [e.kind, rid(e.node), rid(e.parent)]
        if e.kind == GENERATE:
            row.append(e.state)
            if isinstance(lin, (SoSLinearization, MetaCoTLinearization)):
                row.append(e.action)
            g_of[e.node], h_of[e.node] = e.g, e.h
        if isinstance(lin, SearchformerLinearization) and e.kind in (GENERATE, EXPAND):
            g = e.g if e.g is not None else g_of[e.node]
            h = e.h if e.h is not None else h_of[e.node]
            row += [cost_value(g, cap), cost_value(h, cap)]
        if isinstance(lin, MetaCoTLinearization) and e.kind == GENERATE:
            v = e.value if e.value is not None else 1 / (1 + e.h / h0)
            row.append(lin.value_bin(v))
        out.append(tuple(row))
    return out


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip_every_algorithm_and_task(fmt):
    lin = FORMATS[fmt]()
    seen = {GENERATE: 0, EXPAND: 0, DEAD_END: 0, GOAL: 0, BUDGET: 0}
    for task, problem, trace in TRACES:
        prompt, text = lin.render(task, problem, trace)
        assert prompt == task.prompt_text(problem)
        parsed = lin.parse(task, problem, text)
        assert parsed.errors == [] and parsed.complete, (trace.algorithm, parsed.errors[:3])
        assert parsed.answer == trace.solution
        if fmt == "solution":
            assert parsed.events == []
            continue
        assert carried(lin, task, problem, parsed.events) == carried(lin, task, problem, trace.events)
        state = {e.node: e.state for e in parsed.events if e.kind == GENERATE}
        for e in parsed.events:  # states written on move / close / leaf lines are the node's
            if e.kind != GENERATE and e.state is not None:
                assert e.state == state[e.node]
        for e in trace.events:
            seen[e.kind] += 1
        # the re-render of the parse is the same text (what augment relies on)
        again = parsed.to_trace(task.name, "parsed", problem)
        assert lin.render(task, problem, again)[1] == text
    assert fmt == "solution" or min(seen.values()) > 0, seen  # every event kind was exercised


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_words_are_task_words_or_keywords(fmt):
    lin = FORMATS[fmt]()
    kw = lin.keywords()
    assert len(kw) == len(set(kw)) and len(kw) <= 200
    for task, problem, trace in TRACES:
        if isinstance(task, CountdownTask):
            continue  # its alphabet caps numbers; larger ones are left to the tokenizer's digits
        vocab = set(task.alphabet()) | set(kw)
        words = set(lin.render(task, problem, trace)[1].split())
        assert words <= vocab, words - vocab


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab1 =\t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2000\u3000é\x00"), max_size=12))
def test_single_spaced_is_join_split(text):
    assert single_spaced(text) == " ".join(text.split())


def test_decoder_spacing_is_tolerated():
    task = HopTask()
    for make in FORMATS.values():
        lin = make()
        text = lin.render(task, HOP, hand_trace())[1]
        spaced = " \n ".join(" ".join(line.split()) for line in text.split("\n")) + " \n"
        a, b = lin.parse(task, HOP, text), lin.parse(task, HOP, spaced)
        assert b.well_formed and a.answer == b.answer and a.events == b.events


# --- parsers never raise -----------------------------------------------------------------------
def _vocab(lin, task):
    junk = ["#", "->", ":", "c5", "c999999999", "v3", "v12", "²", "٣", "-1", "0,0", "x", "1,", ",", "9" * 5000]
    return sorted(set(lin.keywords()) | set(task.alphabet()[:40]) | set(junk))


def _check(parsed: ParsedTrace):
    assert isinstance(parsed, ParsedTrace)
    assert parsed.answer is None or parsed.complete
    assert all(isinstance(a, str) for a in parsed.answer or [])
    assert all(e.kind in (GENERATE, EXPAND, DEAD_END, GOAL, BUDGET) for e in parsed.events)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@FUZZ
@given(text=st.text(max_size=300))
def test_parse_random_text(fmt, text):
    lin = FORMATS[fmt]()
    for task, problem in REAL_AND_TINY:
        parsed = lin.parse(task, problem, text)
        _check(parsed)
        replay(task, problem, parsed)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_parse_word_soup(fmt, data):
    lin = FORMATS[fmt]()
    for task, problem in REAL_AND_TINY:
        words = data.draw(st.lists(st.sampled_from(_vocab(lin, task)), max_size=60))
        seps = data.draw(st.lists(st.sampled_from([" ", "\n", "  ", " \n "]), min_size=len(words),
                                  max_size=len(words)))
        parsed = lin.parse(task, problem, "".join(w + s for w, s in zip(words, seps, strict=True)))
        _check(parsed)
        replay(task, problem, parsed)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_truncations_parse_and_are_incomplete(fmt):
    """Cut the hand trace at every character, and one short render per (task, algorithm, solved)
    at every word boundary and every third character: only the whole text is complete."""
    lin = FORMATS[fmt]()
    texts = {("hand",): (HopTask(), HOP, lin.render(HopTask(), HOP, hand_trace())[1])}
    for task, problem, trace in TRACES:
        key = (task.name, trace.algorithm, trace.solved)
        text = lin.render(task, problem, trace)[1]
        if key not in texts and len(text) <= 1500:
            texts[key] = (task, problem, text)
    for key, (task, problem, text) in texts.items():
        if key == ("hand",):
            cuts = range(len(text) + 1)
        else:
            cuts = sorted({*range(0, len(text), 3), *(i for i, c in enumerate(text) if c in " \n"), len(text)})
        for cut in cuts:
            parsed = lin.parse(task, problem, text[:cut])
            _check(parsed)
            assert parsed.complete == (cut == len(text)), (key, cut, text[cut - 10:cut])
    assert len(texts) > 10


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_parse_corrupted_renders(fmt, data):
    lin = FORMATS[fmt]()
    task, problem, trace = data.draw(st.sampled_from(TRACES))
    lines = lin.render(task, problem, trace)[1].split("\n")
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
        i = data.draw(st.integers(0, len(lines) - 1)) if lines else 0
        if not lines:
            break
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            words = lines[i].split() or [""]
            k = data.draw(st.integers(0, len(words) - 1))
            words[k] = data.draw(st.sampled_from(_vocab(lin, task)))
            lines[i] = " ".join(words)
    parsed = lin.parse(task, problem, "\n".join(lines))
    _check(parsed)
    fid = replay(task, problem, parsed)
    assert 0 <= fid.valid_steps <= fid.total_steps


# --- parse errors ------------------------------------------------------------------------------
def test_errors_name_the_line_and_parsing_goes_on():
    task = HopTask()
    lin = SearchformerLinearization()
    parsed = lin.parse(task, HOP, "create 1 c0 c2\ncreate 99 c1 c1\nfly 3\nclose 1 c0\nclose 1\nplan + 3\nend\nmore")
    assert [(e.line, e.message.split(":")[0]) for e in parsed.errors] == [
        (1, "not a state"), (2, "unknown line starting with 'fly'"),
        (3, "'close' takes a state then 0 or 2 cost words (c<g> c<h>)"), (7, "text after 'end'")]
    assert [e.kind for e in parsed.events] == [GENERATE, EXPAND]
    assert parsed.complete and parsed.answer == ["+ 3"] and not parsed.well_formed

    sos = SoSLinearization().parse(task, HOP, "start # 0 : 1\nexplore + 3 -> 4\nmove to # 0\ncurrent state 1\n"
                                             "generated # 0 0\nanswer none\n+ 1\nend")
    assert [(e.line, e.message) for e in sos.errors] == [
        (1, "'explore' without a 'generated' line (or a bare verdict) after it"),
        (4, "'generated' without an 'explore' line before it"),
        (6, "action after 'answer none'")]
    assert sos.complete and sos.answer is None
    # a bare verdict needs an `explore` just before it and a `move to` (its leaf's parent) earlier
    sos = SoSLinearization().parse(task, HOP, "start # 0 : 1\nexplore + 3 -> 4\nno solution\nmove to # 0\n"
                                             "no solution\nexplore + 3 -> 4\ngoal reached\nanswer none\nend")
    assert [(e.line, e.message.split(" (")[0]) for e in sos.errors] == [
        (2, "expected 'no solution # <path>'"), (4, "expected 'no solution # <path>'")]
    assert [(e.kind, e.node, e.parent) for e in sos.events] == [
        (GENERATE, 0, None), (EXPAND, 0, None), (GENERATE, 1, 0), (GOAL, 1, None)]

    meta = MetaCoTLinearization().parse(task, HOP, "start 1 v5\ngo 1\n+ 3 -> 44 v2\nback to 6\nanswer\n+ 3")
    assert [e.line for e in meta.errors] == [2] and not meta.complete and meta.answer is None
    assert [(e.kind, e.node) for e in meta.events] == [(GENERATE, 0), (EXPAND, 0), (EXPAND, 1)]


def test_state_formats_resolve_nodes_like_the_search_meant():
    """A* re-generates a state reached more cheaply; `close` must pick the open copy whose g
    matches, and metacot's `back to` the most recent open one."""
    task = HopTask()
    head = "create 1 c0 c2\nclose 1 c0 c2\ncreate 2 c3 c2\ncreate 4 c1 c1\nclose 4 c1 c1\ncreate 2 c2 c2\n"
    for close, node in (("close 2 c3 c2", 1), ("close 2 c2 c2", 3), ("close 2", 3)):
        parsed = SearchformerLinearization().parse(task, HOP, f"{head}{close}\nplan none\nend")
        assert parsed.well_formed and (parsed.events[-1].kind, parsed.events[-1].node) == (EXPAND, node)
    parsed = SearchformerLinearization().parse(task, HOP, f"{head}close 2 c2 c2\nclose 2 c3 c2\nplan none\nend")
    assert [e.node for e in parsed.events[-2:]] == [3, 1]  # an open copy before a closed one
    meta = MetaCoTLinearization().parse(task, HOP, "start 1\ngo 1\n* 2 -> 2\n+ 1 -> 2\nback to 2\nanswer none\nend")
    assert meta.events[-1].node == 2 and meta.well_formed


def test_render_rejects_traces_a_format_cannot_express():
    task = HopTask()
    ev = [TraceEvent(GENERATE, 0, None, 1, None, 0.0, 2.0), TraceEvent(GENERATE, 1, 0, 4, "+ 3", 1.0, 0.5)]
    trace = SearchTrace("hop", "hand", HOP, ev, None, False)
    for lin in (SearchformerLinearization(), MetaCoTLinearization()):
        with pytest.raises(ValueError, match="right after its parent"):
            lin.render(task, HOP, trace)
    assert SoSLinearization().parse(task, HOP, SoSLinearization().render(task, HOP, trace)[1]).well_formed
    with pytest.raises(ValueError, match="max_children"):
        SoSLinearization(max_children=1).render(task, HOP, hand_trace())


# --- Dualformer dropping -----------------------------------------------------------------------
def test_dropping_levels_on_the_hand_trace():
    task = HopTask()
    events = hand_trace().events
    drop = DualformerDropping(create_drop_fraction=0.4)
    assert drop.keep_mask(0, events, random.Random(0)) == [True] * 10
    assert drop.keep_mask(1, events, random.Random(0)) == [e.kind != EXPAND for e in events]
    assert drop.keep_mask(2, events, random.Random(0)) == [e.kind != EXPAND for e in events]
    for seed in range(20):
        keep = drop.keep_mask(3, events, random.Random(seed))
        dropped = [e.kind for e, k in zip(events, keep, strict=True) if not k]
        assert sorted(dropped) == sorted([EXPAND] * 3 + [GENERATE] * 2)  # round(0.4 * 5) creates
    assert drop.keep_mask(4, events, random.Random(0)) == [False] * 10

    def at(level):
        one_hot = [float(i == level) for i in range(5)]
        lin = SearchformerLinearization(dropping=DualformerDropping(one_hot, create_drop_fraction=0.4))
        return lin.augment(task, HOP, lin.render(task, HOP, hand_trace())[1], random.Random(1)).split("\n")

    full = ["slow", *EXPECTED["searchformer"].split("\n")]
    assert at(0) == full
    assert at(1) == [x for x in full if not x.startswith("close")]
    assert at(2) == ["slow", "create 1", "create 2", "create 4", "create 2", "dead 2", "create 5", "goal 5",
                     "plan * 2", "plan + 3", "end"]
    level3 = at(3)
    assert [x for x in level3 if x.startswith("create")] != [] and len(level3) == len(at(2)) - 2
    assert all(not any(w.startswith("c") and w[1:].isdigit() for w in x.split()) for x in level3)
    assert at(4) == ["fast", "plan * 2", "plan + 3", "end"]
    # every level's text parses back, with the same answer
    lin = SearchformerLinearization(dropping=DualformerDropping([0.2] * 5))
    for level in range(5):
        parsed = lin.parse(task, HOP, "\n".join(at(level)))
        assert parsed.well_formed and parsed.answer == ["* 2", "+ 3"]


def test_augment_draws_levels_by_p_level_and_other_formats():
    task = HopTask()
    lin = SearchformerLinearization(dropping={"p_level": [0.5, 0, 0, 0, 0.5], "mode_token": False})
    text = lin.render(task, HOP, hand_trace())[1]
    outs = [lin.augment(task, HOP, text, random.Random(s)) for s in range(200)]
    assert set(outs) == {text, "plan * 2\nplan + 3\nend"}
    assert 60 < outs.count(text) < 140
    assert SearchformerLinearization().augment(task, HOP, text, random.Random(0)) == text  # no dropping
    for make in (SoSLinearization, MetaCoTLinearization):  # dropping works for any format
        lin = make(dropping=DualformerDropping([0, 1, 0, 0, 0]))
        out = lin.augment(task, HOP, lin.render(task, HOP, hand_trace())[1], random.Random(0))
        assert "move" not in out and "go" not in out.split() and lin.parse(task, HOP, out).well_formed
    with pytest.raises(ValueError, match="rendered by this format"):
        SearchformerLinearization(dropping=DualformerDropping()).augment(task, HOP, "garbage", random.Random(0))


@pytest.mark.parametrize("bad", [[1, 0, 0, 0], [0.5, 0.5, 0.5, 0, 0], [-0.1, 0.1, 0, 0, 1]])
def test_dropping_rejects_bad_probabilities(bad):
    with pytest.raises(ValueError, match="p_level"):
        DualformerDropping(bad)


def test_keywords_and_describe():
    dual = FORMATS["dualformer"]()
    assert {"slow", "fast", "create", "close", "plan", "c0", "c100"} <= set(dual.keywords())
    assert "slow" not in SearchformerLinearization().keywords()
    assert dual.describe()["dropping"]["p_level"] == [0.2] * 5
    assert SolutionLinearization().keywords() == ["answer", "none", "end"]
    assert math.isclose(MetaCoTLinearization().parse(HopTask(), HOP, "start 1 v3\nanswer none\nend").events[0].value, 0.35)
    assert split_lines(" a  b \n\n c ") == [(0, ["a", "b"]), (2, ["c"])]
