"""CountdownTask and its solvers: SoS rules, vectorised solvability, splits, text round trips."""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.tasks.base import Task
from metacot.tasks.countdown import CountdownTask, mult_heuristic, sum_heuristic
from metacot.tasks.countdown_solver import reachable, solve

FUZZ = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def task() -> CountdownTask:
    return CountdownTask()


@pytest.fixture(scope="module")
def sos() -> CountdownTask:
    return CountdownTask(num_count=4, max_number=99)


def P(target, numbers):
    return {"target": target, "numbers": list(numbers)}


# --- rules -----------------------------------------------------------------------------------
def test_successors_hand_built(task):
    succ = task.successors(P(24, [6, 2, 3]), (2, 3, 6))
    assert [(s.action, s.state) for s in succ] == [
        ("3 + 2 = 5", (5, 6)), ("3 - 2 = 1", (1, 6)), ("3 * 2 = 6", (6, 6)),  # no 3 / 2
        ("6 + 2 = 8", (3, 8)), ("6 - 2 = 4", (3, 4)), ("6 * 2 = 12", (3, 12)), ("6 / 2 = 3", (3, 3)),
        ("6 + 3 = 9", (2, 9)), ("6 - 3 = 3", (2, 3)), ("6 * 3 = 18", (2, 18)), ("6 / 3 = 2", (2, 2)),
    ]
    assert all(s.cost == 1.0 for s in succ)


def test_successors_dedupe_identical_pairs(task):
    acts = [s.action for s in task.successors(P(10, [3, 3, 5]), (3, 3, 5))]
    assert acts == ["3 + 3 = 6", "3 - 3 = 0", "3 * 3 = 9", "3 / 3 = 1", "5 + 3 = 8", "5 - 3 = 2", "5 * 3 = 15"]
    assert task.successors(P(10, [4]), (4,)) == []


def test_apply_legal_and_illegal(task):
    prob, s = P(24, [6, 2, 3]), (2, 3, 6)
    assert task.apply(prob, s, "6 / 2 = 3") == (3, 3)
    assert task.apply(prob, s, "  6  -   3 =  3 ") == (2, 3)
    assert task.apply(prob, s, "2 + 3 = 5") == (5, 6)  # + and * commute
    assert task.apply(prob, s, "2 * 6 = 12") == (3, 12)
    for bad in [
        "2 - 6 = 4",  # smaller - larger
        "2 - 6 = -4",
        "2 / 6 = 0",  # smaller / larger
        "6 / 4 = 1",  # 4 is not there, and inexact
        "3 / 2 = 1",  # inexact division
        "3 + 2 = 6",  # wrong result
        "3 + 3 = 6",  # only one 3
        "7 + 2 = 9",  # 7 not in state
        "6 / 0 = 0",
        "6 + 2 = 08",  # non-canonical number
        "6 ^ 2 = 36", "6 + 2 8", "6 + 2 = 8 = 8", "", "abc", "6 + 2 = x", "６ + 2 = 8",
    ]:
        assert task.apply(prob, s, bad) is None, bad
    assert task.apply(prob, (4,), "4 + 4 = 8") is None


def test_goal_requires_all_numbers(task):
    prob = P(6, [2, 3, 1])
    assert not task.is_goal(prob, (1, 6))  # target reached with a number left
    assert task.is_goal(prob, (6,))
    assert task.is_dead_end(prob, (5,)) and not task.is_dead_end(prob, (1, 6))
    v = task.verify(prob, ["3 * 2 = 6"])
    assert not v.correct and v.length == 1
    v = task.verify(prob, ["3 * 2 = 6", "6 * 1 = 6"])
    assert v.correct and v.optimal and v.length == 2
    v = task.verify(prob, ["3 * 2 = 6", "6 * 2 = 12"])
    assert not v.correct and v.length == 1 and "step 2" in v.error


@pytest.mark.parametrize("heuristic", ["sum", "mult"])
@settings(max_examples=150, deadline=None)
@given(numbers=st.lists(st.integers(0, 120), min_size=1, max_size=5), target=st.integers(1, 150),
       max_h=st.sampled_from([0.0, 2.5, 7.0, 40.0, 1e9]))
def test_scored_successors_is_successors_with_their_heuristic(heuristic, numbers, target, max_h):
    """The fused override agrees with the base class (successors + heuristic, same order), and
    leaves out exactly the children over max_h."""
    task = CountdownTask(num_count=5, max_number=30, heuristic=heuristic)
    problem, state = P(target, numbers), tuple(sorted(numbers))
    reference = Task.scored_successors(task, problem, state)
    assert reference == [(task.heuristic(problem, s.state), s.action, s.state, s.cost)
                         for s in task.successors(problem, state)]
    assert task.scored_successors(problem, state) == reference
    assert task.scored_successors(problem, state, max_h) == [r for r in reference if r[0] <= max_h]


def test_scored_successors_by_hand():
    task = CountdownTask()
    # (2, 5) with target 10: + 7 (h 3), - 3 (h 7), * 10 (h 0); 5 / 2 is inexact
    assert task.scored_successors(P(10, [5, 2]), (2, 5)) == [
        (3.0, "5 + 2 = 7", (7,), 1.0), (7.0, "5 - 2 = 3", (3,), 1.0), (0.0, "5 * 2 = 10", (10,), 1.0)]
    assert task.scored_successors(P(10, [5, 2]), (2, 5), max_h=3.0) == [
        (3.0, "5 + 2 = 7", (7,), 1.0), (0.0, "5 * 2 = 10", (10,), 1.0)]
    assert task.scored_successors(P(10, [4]), (4,)) == []


def test_optimal_lengths_batch_agrees_with_one_at_a_time(sos):
    rng = np.random.default_rng(5)
    problems = [P(int(t), rng.integers(0, 30, size=n).tolist()) for n in (1, 2, 3, 4) for t in rng.integers(1, 90, 40)]
    problems += [P(0, [3, 3]), P(5, [])]  # outside the vectorised check: the recursive solver answers
    lengths = sos.optimal_lengths(problems)
    assert lengths == [sos.optimal_length(p) for p in problems]
    assert None in lengths and 3 in lengths and sos.optimal_lengths([]) == []


def test_optimal_length_and_solution(sos):
    assert sos.optimal_length(P(24, [3, 5, 7, 9])) == 3
    assert sos.optimal_length(P(99, [1, 1, 1, 1])) is None
    sol = sos.solution(P(24, [3, 5, 7, 9]))
    assert sos.verify(P(24, [3, 5, 7, 9]), sol).correct


def test_heuristics_hand_computed():
    assert sum_heuristic((3, 5), 10) == 6.0
    assert sum_heuristic((10,), 10) == 0.0
    assert mult_heuristic((5, 13), 12) == 2.0  # factors 2 3 4 6 12: |5-4|, |13-12|
    assert mult_heuristic((12,), 12) == 0.0
    for target in (1, 2, 7, 12, 97, 100):  # nearest factor by bisection = by brute force
        factors = [d for d in range(2, target + 1) if target % d == 0] or [target]
        for x in range(0, 250, 7):
            assert mult_heuristic((x,), target) == min(abs(x - f) for f in factors)
    t = CountdownTask(heuristic="mult")
    assert t.heuristic(P(12, [5, 13]), (5, 13)) == 2.0
    assert t.describe()["heuristic"] == "mult"
    with pytest.raises(ValueError, match="heuristic"):
        CountdownTask(heuristic="max")


# --- solvers ---------------------------------------------------------------------------------
def _random_tuples(rng, n, count, lo, hi, tmax):
    nums = rng.integers(lo, hi + 1, size=(count, n))
    return nums, rng.integers(1, tmax + 1, size=count)


@pytest.mark.parametrize("n,lo,hi,tmax,count", [(2, 0, 12, 40, 800), (3, 1, 12, 60, 1500),
                                                (3, 0, 8, 30, 800), (4, 1, 15, 100, 1200), (4, 0, 6, 40, 600)])
def test_vectorised_matches_recursive(n, lo, hi, tmax, count):
    nums, tgts = _random_tuples(np.random.default_rng(n * 100 + hi), n, count, lo, hi, tmax)
    fast = reachable(nums, tgts, chunk=128)  # several chunks
    slow = np.array([solve(x.tolist(), int(t)) is not None for x, t in zip(nums, tgts, strict=True)])
    assert slow.any() and not slow.all()
    assert (fast == slow).all()
    assert (reachable(nums, tgts) == fast).all()  # default chunking agrees


@FUZZ
@given(st.lists(st.integers(0, 30), min_size=1, max_size=4), st.integers(1, 200))
def test_vectorised_matches_recursive_fuzz(numbers, target):
    assert reachable(np.array([numbers]), target)[0] == (solve(numbers, target) is not None)


def test_solve_returns_valid_solutions(sos):
    rng = np.random.default_rng(3)
    for _ in range(200):
        nums = rng.integers(1, 30, size=4).tolist()
        t = int(rng.integers(10, 101))
        sol = solve(nums, t)
        if sol is not None:
            v = sos.verify(P(t, nums), sol)
            assert v.correct and v.length == 3


# --- sampling and splits ---------------------------------------------------------------------
def test_sampled_problems_are_solvable_with_declared_length(sos):
    for split in ("train", "val", "test_unseen"):
        probs = sos.sample_problems(split, 60, seed=1)
        assert len(probs) == 60
        for p in probs:
            assert len(p["numbers"]) == 4 and all(1 <= x <= 99 for x in p["numbers"])
            assert p["target"] in sos.split_targets(split)
            assert sos.optimal_length(p) == 3
            assert sos.verify(p, sos.solution(p)).correct
            assert sos.split_of(p) == split


def test_splits_disjoint_and_targets_held_out(task):
    seen, held = task.split_targets("train"), task.split_targets("test_unseen")
    assert len(held) == 9 and not set(seen) & set(held) and sorted(seen + held) == list(range(10, 101))
    assert task.split_targets("val") == seen
    samples = {s: task.sample_problems(s, 300, seed=0) for s in ("train", "val", "test_unseen")}
    ids = {s: {task.problem_id(p) for p in ps} for s, ps in samples.items()}
    for s, ps in samples.items():
        assert len(ids[s]) == len(ps) == 300  # distinct within the split
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test_unseen"]
    assert not ids["val"] & ids["test_unseen"]
    assert {p["target"] for p in samples["test_unseen"]} <= set(held)
    assert {p["target"] for p in samples["train"] + samples["val"]} <= set(seen)
    # val is a hash partition: the same problem drawn by another seed still lands in val only
    more_train = {task.problem_id(p) for p in task.sample_problems("train", 1000, seed=7)}
    assert not more_train & ids["val"]


def test_split_seed_changes_heldout_targets():
    assert CountdownTask(split_seed=1).split_targets("test_unseen") != CountdownTask().split_targets("test_unseen")


def test_seed_determinism_and_prefix(task):
    a = task.sample_problems("train", 50, seed=3)
    assert a == CountdownTask().sample_problems("train", 50, seed=3)
    assert a != task.sample_problems("train", 50, seed=4)
    assert task.sample_problems("train", 20, seed=3) == a[:20]


def test_exhausted_space_returns_all_of_it():
    t = CountdownTask(num_count=2, min_number=1, max_number=4, min_target=1, max_target=8,
                      holdout_fraction=0.25, val_fraction=0.3)
    for split in ("train", "val", "test_unseen"):
        got = {t.problem_id(p) for p in t.sample_problems(split, 1000, seed=0)}
        space = {
            t.problem_id(P(tg, nums))
            for tg in t.split_targets(split)
            for nums in combinations_with_replacement(range(1, 5), 2)
            if solve(nums, tg) is not None and t.split_of(P(tg, nums)) == split
        }
        assert got == space and space


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="holdout_fraction"):
        CountdownTask(holdout_fraction=0).sample_problems("test_unseen", 5, 0)
    assert CountdownTask(holdout_fraction=0).sample_problems("test_unseen", 0, 0) == []
    with pytest.raises(ValueError, match="max_target"):
        CountdownTask(num_count=2, max_number=2, min_target=50, max_target=60).sample_problems("train", 3, 0)
    with pytest.raises(ValueError, match="split"):
        CountdownTask().sample_problems("test", 3, 0)
    with pytest.raises(ValueError, match="num_count"):
        CountdownTask(num_count=7)


# --- text ------------------------------------------------------------------------------------
def test_text_forms(sos):
    p = P(24, [9, 3, 7, 5])
    assert sos.prompt_text(p) == "target 24 numbers 9 3 7 5"
    assert sos.state_text(p, (3, 7, 12)) == "3 7 12"
    assert sos.parse_state(p, " 12 3  7 ") == (3, 7, 12)
    for junk in ["", "3 x", "-3 4", "1 2 3 4 5", "3.5", "07"]:
        assert sos.parse_state(p, junk) is None


def test_alphabet_covers_what_the_task_writes(task, sos):
    words = set(task.alphabet())
    assert {"target", "numbers", "+", "-", "*", "/", "="} <= words
    assert "625" in words and "626" not in words  # max(100, 25 ** 2)
    assert "9801" in sos.alphabet() and "9802" not in sos.alphabet()  # 99 ** 2
    assert str(10_000) in CountdownTask(max_number=200).alphabet()
    assert str(10_001) not in CountdownTask(max_number=200).alphabet()
    for p in task.sample_problems("train", 20, seed=0):
        s = task.initial_state(p)
        assert set(task.prompt_text(p).split()) <= words
        for succ in task.successors(p, s):
            assert set(succ.action.split()) <= words


@FUZZ
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=3))
def test_state_text_round_trip(numbers):
    t = CountdownTask()
    s = tuple(sorted(numbers))
    assert t.parse_state({}, t.state_text({}, s)) == s


@FUZZ
@given(st.text(max_size=40))
def test_parse_state_never_raises(text):
    s = CountdownTask().parse_state({}, text)
    assert s is None or (isinstance(s, tuple) and all(isinstance(x, int) for x in s))


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=20), st.from_regex(r"\d{1,3} [-+*/x] \d{1,3} = \d{1,4}")), max_size=4))
def test_verify_never_raises(actions):
    t = CountdownTask()
    v = t.verify(P(24, [4, 6, 1]), actions)
    assert v.length <= len(actions)


@FUZZ
@given(st.lists(st.integers(0, 12), min_size=2, max_size=4), st.integers(0, 12), st.sampled_from("+-*/"),
       st.integers(0, 12), st.integers(0, 150))
def test_fast_apply_agrees_with_successor_lookup(numbers, a, op, b, c):
    t = CountdownTask(num_count=4)
    state = tuple(sorted(numbers))
    text = f"{max(a, b)} {op} {min(a, b)} = {c}"  # canonical order: the base lookup applies
    assert t.apply({}, state, text) == Task.apply(t, {}, state, text)
    for s in t.successors({}, state):
        assert t.apply({}, state, s.action) == s.state
