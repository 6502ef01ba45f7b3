"""MazeTask: Searchformer rules, vectorised sampling, hash splits, text round trips."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.tasks.maze import MazeTask, flood_distances

FUZZ = settings(max_examples=200, deadline=None)

# 3x3, walls at (1,0) and (1,1): from (0,0) to (2,0) one must go around through row y=2.
#   y=0: S # G
#   y=1: . # .
#   y=2: . . .
HAND = {"size": 3, "walls": [[1, 0], [1, 1]], "start": [0, 0], "goal": [2, 0]}
HAND_PLAN = ["0,1", "0,2", "1,2", "2,2", "2,1", "2,0"]


@pytest.fixture(scope="module")
def task() -> MazeTask:
    return MazeTask(size=5)


def _bfs(size, walls, start, goal):
    """Independent reference: BFS over a plain grid."""
    walls = {tuple(w) for w in walls}
    dist = {tuple(start): 0}
    q = deque([tuple(start)])
    while q:
        x, y = q.popleft()
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if 0 <= nx < size and 0 <= ny < size and (nx, ny) not in walls and (nx, ny) not in dist:
                dist[(nx, ny)] = dist[(x, y)] + 1
                q.append((nx, ny))
    return dist.get(tuple(goal))


# --- rules -----------------------------------------------------------------------------------
def test_successors_respect_walls_and_bounds():
    t = MazeTask(size=3)
    assert [(s.action, s.state) for s in t.successors(HAND, (0, 0))] == [("0,1", (0, 1))]
    assert [s.action for s in t.successors(HAND, (1, 2))] == ["2,2", "0,2"]  # (1,1) is a wall
    assert [s.action for s in t.successors(HAND, (0, 1))] == ["0,2", "0,0"]


def test_apply_rules():
    t = MazeTask(size=3)
    assert t.apply(HAND, (0, 0), "0,1") == (0, 1)
    assert t.apply(HAND, (0, 0), " 0,1 ") == (0, 1)
    for bad in ["1,0", "0,2", "1,1", "0,-1", "-1,0", "3,0", "0,0", "0, 1", "0,1 0,2", "01,1", "", "x", "0;1",
                "０,1"]:
        assert t.apply(HAND, (0, 0), bad) is None, bad
    assert t.apply(HAND, (2, 1), "2,0") == (2, 0)


def test_goal_verify_and_optimal_length():
    t = MazeTask(size=3)
    assert t.optimal_length(HAND) == 6 == _bfs(3, HAND["walls"], HAND["start"], HAND["goal"])
    assert t.is_goal(HAND, (2, 0)) and not t.is_goal(HAND, (2, 1))
    v = t.verify(HAND, HAND_PLAN)
    assert v.correct and v.optimal and v.length == 6
    v = t.verify(HAND, ["0,1", "0,0"] + HAND_PLAN)  # a detour: correct, not optimal
    assert v.correct and not v.optimal
    v = t.verify(HAND, HAND_PLAN[:-1])
    assert not v.correct and "goal" in v.error
    v = t.verify(HAND, ["1,0"])  # into a wall
    assert not v.correct and v.length == 0
    blocked = dict(HAND, walls=[[1, 0], [1, 1], [1, 2]])
    assert t.optimal_length(blocked) is None


def test_heuristic_is_manhattan_and_admissible(task):
    assert MazeTask(size=3).heuristic(HAND, (0, 2)) == 4.0
    for p in task.sample_problems("train", 30, seed=2):
        for x in range(5):
            for y in range(5):
                if [x, y] in p["walls"]:
                    continue
                d = _bfs(5, p["walls"], [x, y], p["goal"])
                if d is not None:
                    assert task.heuristic(p, (x, y)) <= d


def test_flood_distances_match_bfs():
    rng = np.random.default_rng(0)
    k, n = 300, 6
    wall = rng.random((k, n, n)) < 0.35
    start, goal = rng.integers(0, n * n, size=k), rng.integers(0, n * n, size=k)
    wall.reshape(k, -1)[np.arange(k), start] = False
    wall.reshape(k, -1)[np.arange(k), goal] = False
    got = flood_distances(~wall, start, goal)
    for i in range(k):
        ref = _bfs(n, np.argwhere(wall[i]).tolist(), divmod(int(start[i]), n), divmod(int(goal[i]), n))
        assert got[i] == (-1 if ref is None else ref)
    assert (got == -1).any() and (got > 3).any()


# --- sampling and splits ---------------------------------------------------------------------
@pytest.mark.parametrize("size", [5, 7, 10])
def test_sampled_mazes_are_valid(size):
    t = MazeTask(size=size)
    probs = t.sample_problems("train", 40, seed=0)
    assert len(probs) == 40
    for p in probs:
        assert p["size"] == size
        walls = [tuple(w) for w in p["walls"]]
        assert walls == sorted(set(walls))
        assert all(0 <= x < size and 0 <= y < size for x, y in walls)
        density = len(walls) / size**2
        assert 0.3 - 0.5 / size**2 <= density <= 0.5 + 0.5 / size**2
        assert p["start"] != p["goal"] and tuple(p["start"]) not in walls and tuple(p["goal"]) not in walls
        opt = t.optimal_length(p)
        assert opt == _bfs(size, p["walls"], p["start"], p["goal"]) and opt >= size


def test_min_plan_length_is_honoured():
    t = MazeTask(size=5, min_plan_length=9)
    assert all(t.optimal_length(p) >= 9 for p in t.sample_problems("val", 20, seed=1))
    assert MazeTask(size=6).min_plan_length == 6


def test_splits_disjoint_and_distinct(task):
    samples = {s: task.sample_problems(s, 150, seed=0) for s in ("train", "val", "test_unseen")}
    ids = {s: {task.problem_id(p) for p in ps} for s, ps in samples.items()}
    for s, ps in samples.items():
        assert len(ids[s]) == len(ps) == 150
        assert all(task.split_of(p) == s for p in ps)
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test_unseen"]
    assert not ids["val"] & ids["test_unseen"]
    more = {task.problem_id(p) for p in task.sample_problems("train", 2000, seed=9)}
    assert not more & (ids["val"] | ids["test_unseen"])


def test_seed_determinism_and_prefix(task):
    a = task.sample_problems("train", 30, seed=5)
    assert a == MazeTask(size=5).sample_problems("train", 30, seed=5)
    assert a != task.sample_problems("train", 30, seed=6)
    assert task.sample_problems("train", 10, seed=5) == a[:10]


def test_small_space_exhausts_and_infeasible_config_fails():
    t = MazeTask(size=2, wall_density_min=0.0, wall_density_max=0.0, min_plan_length=2)
    got = t.sample_problems("train", 100, seed=0) + t.sample_problems("val", 100, seed=0)
    got += t.sample_problems("test_unseen", 100, seed=0)
    assert len(got) == 4  # the 2 diagonal pairs, both directions, spread over the splits
    with pytest.raises(ValueError, match="min_plan_length"):
        MazeTask(size=3, min_plan_length=9).sample_problems("train", 5, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        MazeTask(test_fraction=0.0).sample_problems("test_unseen", 5, seed=0)
    with pytest.raises(ValueError, match="size"):
        MazeTask(size=1)


# --- text ------------------------------------------------------------------------------------
def test_text_forms():
    t = MazeTask(size=3)
    assert t.prompt_text(HAND) == "start 0,0 goal 2,0 walls 1,0 1,1"
    assert t.state_text(HAND, (2, 1)) == "2,1" and t.parse_state(HAND, "2,1") == (2, 1)
    for junk in ["3,1", "1", "1,1,1", "a,b", "1 ,1", "", "1,1 2,2", "-0,1"]:
        assert t.parse_state(HAND, junk) is None, junk
    words = set(t.alphabet())
    assert len(words) == 9 + 3 and {"start", "goal", "walls", "2,2"} <= words
    assert set(t.prompt_text(HAND).split()) <= words


@FUZZ
@given(st.integers(0, 29), st.integers(0, 29))
def test_state_text_round_trip(x, y):
    t = MazeTask(size=30)
    p = {"size": 30, "walls": [], "start": [0, 0], "goal": [1, 1]}
    assert t.parse_state(p, t.state_text(p, (x, y))) == (x, y)


@FUZZ
@given(st.text(max_size=20))
def test_parse_state_never_raises(text):
    s = MazeTask(size=3).parse_state(HAND, text)
    assert s is None or (0 <= s[0] < 3 and 0 <= s[1] < 3)


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=10), st.from_regex(r"-?\d{1,2},-?\d{1,2}", fullmatch=True)), max_size=8))
def test_verify_never_raises(actions):
    v = MazeTask(size=3).verify(HAND, actions)
    assert v.length <= len(actions)
    assert v.correct == (v.error is None)
