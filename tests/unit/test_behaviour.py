"""Search-behaviour comparison: expansion orders from traces, an order-aware similarity checked
against hand-computed values and a brute-force LCS table, and the comparison of a model's trace
with the reference algorithms on real mazes and Countdown problems (a rendered-and-parsed trace of
algorithm X is most similar to X, with similarity exactly 1)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.eval.behaviour import (
    compare_with_algorithms,
    expansion_order,
    generation_order,
    lcs_length,
    order_similarity,
)
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, SearchTrace, TraceEvent

CONF = Path(__file__).resolve().parents[2] / "conf"
ALGORITHMS = ("bfs", "dfs", "astar", "mcts")


def trace(events):
    return SearchTrace(task="t", algorithm="a", problem={}, events=events, solution=None, solved=False)


def build(group, option):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(CONF / group / f"{option}.yaml"), _convert_="all")


def lcs_table(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


# --- expansion orders ---------------------------------------------------------------------------

def test_expansion_order_follows_expand_events_and_keeps_revisits():
    events = [
        TraceEvent(GENERATE, 0, None, "r"),
        TraceEvent(EXPAND, 0),  # state from the node's GENERATE
        TraceEvent(GENERATE, 1, 0, "a"),
        TraceEvent(GENERATE, 2, 0, "b"),
        TraceEvent(EXPAND, 1),
        TraceEvent(DEAD_END, 1),
        TraceEvent(EXPAND, 0),  # DFS backtracks to the root: a second expansion of it
        TraceEvent(EXPAND, 2, state="b2"),  # a state written on the line wins (parsed formats)
        TraceEvent(EXPAND, 9),  # unknown node without a state: skipped
        TraceEvent(GOAL, 2),
        TraceEvent(BUDGET, -1),
    ]
    assert expansion_order(trace(events)) == ["r", "a", "r", "b2"]
    assert generation_order(trace(events)) == ["r", "a", "b"]


def test_without_expand_events_the_generation_order_stands_in():
    events = [TraceEvent(GENERATE, 0, None, "r"), TraceEvent(GENERATE, 1, 0, "a"), TraceEvent(DEAD_END, 1),
              TraceEvent(GENERATE, 2, 0, "b"), TraceEvent(GENERATE, 3, None, None)]  # a state-less line: skipped
    assert expansion_order(trace(events)) == ["r", "a", "b"]
    assert expansion_order(trace([])) == []


# --- similarity ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "expected"), [
    ([], [], 1.0),
    ([], [1], 0.0),
    ([1, 2, 3], [1, 2, 3], 1.0),
    ([1, 2, 3], [4, 5], 0.0),
    ([1, 2, 3, 4], [1, 3, 4], 3 / 4),  # one expansion skipped
    ([1, 2, 3, 4], [4, 3, 2, 1], 1 / 4),  # same states, reversed order: only one stays in order
    ([1, 2, 3], [1, 2, 3, 5, 6, 7], 3 / 6),  # a prefix of a longer search
    (["a", "b", "a", "c"], ["a", "a", "c", "b"], 3 / 4),  # repeats (DFS revisits): a a c
    ([(0, 1), (1, 1)], [(0, 1), (2, 2)], 1 / 2),  # tuple states (mazes)
])
def test_order_similarity_hand_computed(a, b, expected):
    assert order_similarity(a, b) == pytest.approx(expected)
    assert order_similarity(b, a) == pytest.approx(expected)


def test_unhashable_states_compare_by_value():
    assert order_similarity([[1, 2], [3]], [[1, 2], [4]]) == 0.5


seqs = st.lists(st.integers(0, 4), max_size=40)


@settings(max_examples=300, deadline=None)
@given(seqs, seqs)
def test_lcs_matches_the_dynamic_programming_table(a, b):
    assert lcs_length(a, b) == lcs_table(a, b)


@settings(max_examples=200, deadline=None)
@given(seqs, seqs)
def test_similarity_is_symmetric_bounded_and_one_only_for_identical(a, b):
    s = order_similarity(a, b)
    assert s == order_similarity(b, a)
    assert 0.0 <= s <= 1.0
    assert (s == 1.0) == (a == b)
    assert order_similarity(a, a) == 1.0
    if (a or b) and not set(a) & set(b):
        assert s == 0.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=200, max_size=400, unique=True), st.randoms(use_true_random=False))
def test_long_sequences(a, rng):
    """Bit vectors much wider than a machine word: dropping k elements leaves LCS len - k."""
    b = list(a)
    k = rng.randrange(len(b))
    for _ in range(k):
        b.pop(rng.randrange(len(b)))
    assert lcs_length(a, b) == len(a) - k
    assert order_similarity(a, b) == pytest.approx((len(a) - k) / len(a))


# --- comparison with the reference algorithms ---------------------------------------------------

@pytest.fixture(scope="module")
def algorithms():
    return {name: build("search", name) for name in ALGORITHMS}


@pytest.mark.parametrize(("task_name", "lin_name"), [("maze", "searchformer"), ("maze", "compact"),
                                                     ("countdown", "sos"), ("countdown", "metacot")])
def test_a_rendered_trace_is_identical_to_its_own_algorithm(algorithms, task_name, lin_name):
    """Through text and back (states parsed, node ids the format's own): similarity 1 to the
    algorithm that made the trace, and it matches the direct comparison of the two traces."""
    task, lin = build("task", task_name), build("linearization", lin_name)
    distinct = 0
    for problem in task.sample_problems("val", 6, seed=1):
        for name, algorithm in algorithms.items():
            symbolic = algorithm.run(task, problem)
            _, completion = lin.render(task, problem, symbolic)
            parsed = lin.parse(task, problem, completion).to_trace()
            sims = compare_with_algorithms(task, problem, parsed, algorithms)
            assert set(sims) == set(algorithms)
            assert sims[name] == 1.0
            assert sims == compare_with_algorithms(task, problem, symbolic, algorithms)
            for other, s in sims.items():
                assert s == order_similarity(expansion_order(symbolic),
                                             expansion_order(algorithms[other].run(task, problem)))
            distinct += any(s < 1.0 for s in sims.values())
    assert distinct > 0  # the algorithms are told apart on these problems


def test_dropped_expansions_compare_by_generation_order(algorithms):
    """A Dualformer trace without its close steps is compared by creation order on both sides:
    still exactly A*'s, and not A*'s expansion order (which it never writes)."""
    task, lin = build("task", "maze"), build("linearization", "dualformer")
    checked = 0
    for problem in task.sample_problems("val", 6, seed=2):
        symbolic = algorithms["astar"].run(task, problem)
        _, completion = lin.render(task, problem, symbolic)
        for seed in range(40):
            text = lin.augment(task, problem, completion, random.Random(seed))
            parsed = lin.parse(task, problem, text).to_trace()
            kinds = {e.kind for e in parsed.events}
            if GENERATE in kinds and EXPAND not in kinds and len(parsed.events) == len(
                    [e for e in symbolic.events if e.kind != EXPAND]):  # level 1 or 2: only the close steps dropped
                sims = compare_with_algorithms(task, problem, parsed, algorithms)
                assert sims["astar"] == 1.0
                assert sims["bfs"] == order_similarity(generation_order(symbolic),
                                                       generation_order(algorithms["bfs"].run(task, problem)))
                checked += 1
                break
    assert checked >= 3


def test_an_empty_model_trace_is_dissimilar_to_every_search(algorithms):
    task = build("task", "maze")
    problem = task.sample_problems("val", 1, seed=0)[0]
    assert compare_with_algorithms(task, problem, trace([]), algorithms) == dict.fromkeys(algorithms, 0.0)
    assert compare_with_algorithms(task, problem, trace([]), {}) == {}
