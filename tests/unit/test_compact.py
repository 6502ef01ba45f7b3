"""The compact format: one word per event for one-word states, one line per event otherwise."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.linearization.compact import CompactLinearization
from metacot.linearization.fidelity import replay
from metacot.search.astar import AStarSearch
from metacot.search.beam import BeamSearch
from metacot.search.bfs import BFSSearch
from metacot.search.dfs import DFSSearch
from metacot.search.mcts import MCTSSearch
from metacot.search.trace import EXPAND, GENERATE
from metacot.tasks.countdown import CountdownTask
from metacot.tasks.maze import MazeTask

LIN = CompactLinearization()
MAZE = MazeTask(size=5)
COUNTDOWN = CountdownTask(num_count=3, max_number=12)
SEARCHES = [BFSSearch(max_expansions=200), DFSSearch(max_expansions=200, closed_set=True),
            BeamSearch(width=2, max_expansions=200), AStarSearch(max_expansions=200),
            AStarSearch(greedy=True, max_expansions=200), MCTSSearch(iterations=60, max_expansions=200),
            AStarSearch(max_expansions=3)]


def test_maze_render_is_one_word_per_event():
    problem = MAZE.sample_problems("train", 1, seed=3)[0]
    trace = AStarSearch().run(MAZE, problem)
    _, text = LIN.render(MAZE, problem, trace)
    trace_line, plan_line, end = text.split("\n")
    events = [e for e in trace.events if e.kind in (GENERATE, EXPAND)]
    assert len(trace_line.split()) == len(events)
    assert trace_line.split()[:2] == ["c" + MAZE.state_text(problem, events[0].state),
                                      "x" + MAZE.state_text(problem, events[0].state)]
    assert plan_line.split() == ["plan", *trace.solution]
    assert end == "end"


@pytest.mark.parametrize("task", [MAZE, COUNTDOWN], ids=["maze", "countdown"])
@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: f"{s.name}-{s.max_expansions}")
def test_round_trip_and_full_fidelity(task, search):
    for problem in task.sample_problems("train", 4, seed=1):
        trace = search.run(task, problem, seed=2)
        _, text = LIN.render(task, problem, trace)
        parsed = LIN.parse(task, problem, text)
        assert parsed.well_formed, parsed.errors
        assert parsed.answer == trace.solution
        kept = [e for e in trace.events if e.kind in (GENERATE, EXPAND)]
        state_of = {e.node: e.state for e in kept if e.kind == GENERATE}
        assert [(e.kind, e.state) for e in parsed.events] == [(e.kind, state_of[e.node]) for e in kept]
        gen_parents = {e.node: e.parent for e in kept if e.kind == GENERATE}
        parsed_parents = {e.node: e.parent for e in parsed.events if e.kind == GENERATE}
        assert sorted(parsed_parents.values(), key=str) == sorted(gen_parents.values(), key=str)
        assert LIN.completion(task, problem, parsed.events, parsed.answer) == text
        fid = replay(task, problem, parsed)
        assert fid.fraction == 1.0
        assert fid.answer_correct == trace.solved


def test_countdown_plan_separates_multiword_actions():
    text = LIN.answer_lines(["2 + 4 = 6", "6 * 4 = 24"])
    assert text == ["plan 2 + 4 = 6 ; 6 * 4 = 24", "end"]


def test_vocabulary_has_fused_words_for_maze_only():
    words = set(LIN.task_keywords(MAZE))
    assert {"c0,0", "x4,4"} <= words
    assert all(" " not in w for w in LIN.task_keywords(COUNTDOWN))


@pytest.mark.parametrize("text, error", [
    ("c0,0 q1,1\nplan 0,1\nend", "not a search event"),
    ("c9,9\nplan\nend", "not a state"),
    ("c0,0\nplan 0,1", "expected 'end'"),
    ("c0,0\nplan 0,1\nend\nc0,0", "text after"),
])
def test_malformed_text_gives_errors(text, error):
    problem = MAZE.sample_problems("train", 1, seed=0)[0]
    parsed = LIN.parse(MAZE, problem, text)
    assert not parsed.well_formed
    assert any(error in e.message for e in parsed.errors)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.integers(0, 10_000))
def test_parser_never_raises(text, cut):
    problem = MAZE.sample_problems("train", 1, seed=0)[0]
    LIN.parse(MAZE, problem, text)
    _, good = LIN.render(MAZE, problem, AStarSearch().run(MAZE, problem))
    LIN.parse(MAZE, problem, good[: cut % (len(good) + 1)])
    words = good.split(" ")
    random.Random(cut).shuffle(words)
    replay(MAZE, problem, LIN.parse(MAZE, problem, " ".join(words)))
