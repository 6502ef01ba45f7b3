"""Search algorithms: optimality against brute force, validity, determinism, budgets, IR invariants,
and hand-computed traces on tiny graphs."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.search.astar import AStarSearch
from metacot.search.beam import BeamSearch
from metacot.search.bfs import BFSSearch
from metacot.search.dfs import DFSSearch
from metacot.search.mcts import MCTSSearch
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, SearchTrace
from metacot.tasks.base import Task
from metacot.tasks.countdown import CountdownTask
from metacot.tasks.maze import MazeTask
from tests.unit.toy_tasks import GraphTask, brute_force, path_cost

FUZZ = settings(max_examples=80, deadline=None)
SEEDS = st.integers(0, 10**6)

# Every algorithm in several configurations; complete ones are those that must find a solution
# whenever one is reachable (finite spaces, enough budget).
ALGORITHMS = {
    "bfs": lambda **kw: BFSSearch(**kw),
    "dfs": lambda **kw: DFSSearch(**kw),
    "dfs_closed": lambda **kw: DFSSearch(closed_set=True, **kw),
    "beam": lambda **kw: BeamSearch(width=2, **kw),
    "astar": lambda **kw: AStarSearch(**kw),
    "greedy": lambda **kw: AStarSearch(greedy=True, **kw),
    "wastar": lambda **kw: AStarSearch(weight=3.0, **kw),
    "mcts": lambda **kw: MCTSSearch(exploration=1.4, **kw),
    "mcts_random": lambda **kw: MCTSSearch(rollout="random", rollout_depth=4, **kw),
}
COMPLETE = [a for a in ALGORITHMS if a != "beam"]


def graph(adj, h, start=0, goal=None):
    """A hand-made GraphTask problem: adj[u] = [[v, cost], ...]."""
    n = len(adj)
    return {"adj": adj, "xy": [[0, 0]] * n, "start": start, "goal": n - 1 if goal is None else goal, "h": h}


def kinds(trace):
    return [(e.kind, e.node) for e in trace.events]


def expanded_states(trace):
    state = {e.node: e.state for e in trace.events if e.kind == GENERATE}
    return [state[e.node] for e in trace.events if e.kind == EXPAND]


def check_trace(task, problem, trace: SearchTrace, max_expansions=None):
    """IR invariants every algorithm must satisfy."""
    events = trace.events
    root = events[0]
    assert (root.kind, root.node, root.parent, root.action, root.g) == (GENERATE, 0, None, None, 0)
    assert root.state == task.initial_state(problem)
    state, g, parent = {}, {}, {}
    expanded = set()
    last_expanded = None
    for e in events:
        assert e.kind in (GENERATE, EXPAND, DEAD_END, GOAL, BUDGET)
        if e.kind == GENERATE:
            assert e.node == len(state), "node ids are consecutive in creation order"
            if e.node:
                assert e.parent in state, "a parent is generated before its children"
                assert e.parent == last_expanded, "a child is generated while the search stands on its parent"
                step = next(s for s in task.successors(problem, state[e.parent]) if s.action == e.action)
                assert step.state == e.state
                assert e.g == pytest.approx(g[e.parent] + step.cost)
            assert e.h == pytest.approx(task.heuristic(problem, e.state))
            state[e.node], g[e.node], parent[e.node] = e.state, e.g, e.parent
        elif e.kind == BUDGET:
            assert e.node == -1
        else:
            assert e.node in state, f"{e.kind} of a node never generated"
            if e.kind == EXPAND:
                expanded.add(e.node)
                last_expanded = e.node
    assert trace.nodes_expanded == len(expanded)
    if max_expansions is not None:
        assert trace.nodes_expanded <= max_expansions
    ends = [e.kind for e in events if e.kind in (GOAL, BUDGET)]
    if trace.solved:
        assert ends == [GOAL] and events[-1].kind == GOAL
        node, path = events[-1].node, []
        while node:
            path.append(next(e.action for e in events if e.kind == GENERATE and e.node == node))
            node = parent[node]
        assert trace.solution == path[::-1], "the solution is the path to the GOAL node"
        assert task.verify(problem, trace.solution).correct
        assert "exhausted" not in trace.meta
    else:
        assert trace.solution is None
        assert (ends == [BUDGET]) != bool(trace.meta.get("exhausted")), "exactly one reason to stop"
    again = SearchTrace.from_json(trace.to_json())
    assert again.to_json() == trace.to_json() and again.events == trace.events


# --- optimality against brute force -------------------------------------------------------------
@FUZZ
@given(seed=SEEDS, shuffle=st.booleans())
def test_bfs_finds_fewest_actions(seed, shuffle):
    task = GraphTask()
    problem = task.make_problem(seed)
    trace = BFSSearch(shuffle=shuffle).run(task, problem, seed)
    check_trace(task, problem, trace)
    best = brute_force(task, problem)
    assert trace.solved == (best is not None)
    if best:
        assert len(trace.solution) == best[0]


@FUZZ
@given(seed=SEEDS, shuffle=st.booleans(), heuristic=st.sampled_from(["manhattan", "noisy", "zero"]))
def test_astar_finds_least_cost(seed, shuffle, heuristic):
    task = GraphTask(num_nodes=8, heuristic=heuristic)
    problem = task.make_problem(seed)
    trace = AStarSearch(shuffle=shuffle).run(task, problem, seed)
    check_trace(task, problem, trace)
    best = brute_force(task, problem)
    assert trace.solved == (best is not None)
    if best:
        assert path_cost(task, problem, trace.solution) == pytest.approx(best[1])


@FUZZ
@given(seed=SEEDS)
def test_astar_closes_in_nondecreasing_f_with_consistent_h(seed):
    task = GraphTask(num_nodes=8, heuristic="manhattan")
    problem = task.make_problem(seed)
    trace = AStarSearch().run(task, problem, seed)
    f = {e.node: e.g + e.h for e in trace.events if e.kind == GENERATE}
    closed = [f[e.node] for e in trace.events if e.kind == EXPAND]
    assert closed == sorted(closed)
    closed_states = expanded_states(trace)
    assert len(closed_states) == len(set(closed_states)), "a consistent h never re-opens a state"


# --- every algorithm ---------------------------------------------------------------------------
@pytest.mark.parametrize("algo", list(ALGORITHMS))
@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, shuffle=st.booleans())
def test_solutions_valid_and_invariants_hold(algo, seed, shuffle):
    task = GraphTask(num_nodes=8, heuristic="noisy")
    problem = task.make_problem(seed)
    search = ALGORITHMS[algo](shuffle=shuffle, max_expansions=500)
    if algo.startswith("mcts"):
        search.iterations = 500
    trace = search.run(task, problem, seed)
    check_trace(task, problem, trace, max_expansions=500)
    assert trace.algorithm == search.name and trace.task == "graph" and trace.seed == seed
    if algo in COMPLETE:
        assert trace.solved == (brute_force(task, problem) is not None)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_same_seed_same_trace_and_shuffle_varies(algo):
    task = GraphTask(num_nodes=9, edge_prob=0.5, unit_costs=True, heuristic="zero")
    problems = [task.make_problem(s) for s in range(12)]
    search = ALGORITHMS[algo](shuffle=True)
    distinct = 0
    for p in problems:
        runs = [search.run(task, p, seed).to_json() for seed in (1, 1, 2, 3, 4)]
        assert runs[0] == runs[1]
        distinct += len(set(runs[1:])) > 1
    assert distinct > 0, "shuffling with different seeds should change some traces"
    fixed = ALGORITHMS[algo](shuffle=False)
    if algo != "mcts_random":  # random rollouts draw from the rng by design
        assert all(fixed.run(task, p, 1).events == fixed.run(task, p, 2).events for p in problems)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_budget_exhaustion_is_recorded(algo):
    # a chain 0 -> 1 -> ... -> 9: every algorithm needs more than 3 expansions
    adj = [[[i + 1, 1]] for i in range(9)] + [[]]
    task, problem = GraphTask(), graph(adj, [0] * 10)
    trace = ALGORITHMS[algo](max_expansions=3).run(task, problem)
    check_trace(task, problem, trace, max_expansions=3)
    assert not trace.solved and trace.events[-1].kind == BUDGET and trace.nodes_expanded == 3


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_unreachable_goal_exhausts_and_goal_at_root_is_immediate(algo):
    task = GraphTask()
    adj = [[[1, 1], [2, 1]], [[0, 1], [2, 1]], [[1, 1]], []]  # 3 cannot be reached
    trace = ALGORITHMS[algo]().run(task, graph(adj, [0] * 4))
    check_trace(task, graph(adj, [0] * 4), trace)
    assert not trace.solved and trace.meta.get("exhausted") is True
    at_root = graph(adj, [0] * 4, start=2, goal=2)
    search = ALGORITHMS[algo]()
    trace = search.run(task, at_root)
    # A* tests the goal when it closes a node, the others when they create it
    closes = [(EXPAND, 0)] if isinstance(search, AStarSearch) else []
    assert kinds(trace) == [(GENERATE, 0), *closes, (GOAL, 0)]
    assert trace.solution == [] and trace.solved


def test_bad_arguments_say_what_to_fix():
    with pytest.raises(ValueError, match="max_expansions"):
        BFSSearch(max_expansions=0)
    with pytest.raises(ValueError, match="width"):
        BeamSearch(width=0)
    with pytest.raises(ValueError, match="rollout"):
        MCTSSearch(rollout="greedy")
    with pytest.raises(ValueError, match="exploration must be >= 0"):
        MCTSSearch(exploration=-1)
    with pytest.raises(ValueError, match="weight"):
        AStarSearch(weight=-1)
    with pytest.raises(ValueError, match="max_depth"):
        DFSSearch(max_depth=-2)
    with pytest.raises(ValueError, match="prune_threshold"):
        DFSSearch(prune_threshold=[3])
    with pytest.raises(ValueError, match="names no numeric field"):
        DFSSearch(prune_threshold="tagret").run(CountdownTask(), {"target": 10, "numbers": [5, 2, 1]})


# --- hand-computed traces ----------------------------------------------------------------------
# 0 -> 1 -> 3 (dead end); 0 -> 2 -> 4 (goal). h prefers the dead branch.
SMALL = graph([[[1, 1], [2, 1]], [[3, 1]], [[4, 1]], [], []], [2, 1, 1.5, 0.5, 0])


def test_dfs_trace_by_hand():
    trace = DFSSearch().run(GraphTask(), SMALL)
    assert kinds(trace) == [
        (GENERATE, 0), (EXPAND, 0),
        (GENERATE, 1), (EXPAND, 1),  # best h first: state 1
        (GENERATE, 2), (DEAD_END, 2),  # state 3 has no successors
        (EXPAND, 0),  # explicit move back before the next child
        (GENERATE, 3), (EXPAND, 3),
        (GENERATE, 4), (GOAL, 4),
    ]
    assert [e.state for e in trace.events if e.kind == GENERATE] == [0, 1, 3, 2, 4]
    assert trace.solution == ["go 2", "go 4"] and trace.nodes_expanded == 3
    assert trace.stats() == {"nodes": 5, "expansions": 4, "backtracks": 1, "max_depth": 2}


def test_dfs_prune_threshold_and_max_depth():
    pruned = DFSSearch(prune_threshold=1.2).run(GraphTask(), SMALL)  # state 2 (h=1.5) is never generated
    assert [e.state for e in pruned.events if e.kind == GENERATE] == [0, 1, 3]
    assert not pruned.solved and pruned.meta == {"exhausted": True}
    shallow = DFSSearch(max_depth=1).run(GraphTask(), SMALL)
    assert kinds(shallow) == [(GENERATE, 0), (EXPAND, 0), (GENERATE, 1), (DEAD_END, 1),
                              (GENERATE, 2), (DEAD_END, 2)]
    assert DFSSearch(max_depth=2).run(GraphTask(), SMALL).solved


@FUZZ
@given(seed=SEEDS, threshold=st.floats(0, 8), max_depth=st.integers(1, 4), shuffle=st.booleans())
def test_dfs_children_sorted_pruned_and_bounded(seed, threshold, max_depth, shuffle):
    task = GraphTask(num_nodes=8, edge_prob=0.5, heuristic="noisy")
    problem = task.make_problem(seed)
    trace = DFSSearch(prune_threshold=threshold, max_depth=max_depth, shuffle=shuffle).run(task, problem, seed)
    check_trace(task, problem, trace)
    gen = [e for e in trace.events if e.kind == GENERATE]
    depth = {0: 0}
    by_parent: dict[int, list[float]] = {}
    for e in gen[1:]:
        depth[e.node] = depth[e.parent] + 1
        by_parent.setdefault(e.parent, []).append(e.h)
        assert e.h <= threshold and depth[e.node] <= max_depth
    assert all(hs == sorted(hs) for hs in by_parent.values()), "children are tried best-first"
    # no state repeats along any path (cycle check)
    for e in gen:
        path, node = [], e.node
        while node is not None:
            path.append(gen[node].state)
            node = gen[node].parent
        assert len(path) == len(set(path))


def test_astar_trace_by_hand():
    trace = AStarSearch().run(GraphTask(), SMALL)
    # f: node1 = 1+1, node2 = 1+1.5, node3 (state 3) = 2+0.5 -> tie with node2 at 2.5, lower h first
    assert kinds(trace) == [
        (GENERATE, 0), (EXPAND, 0), (GENERATE, 1), (GENERATE, 2),
        (EXPAND, 1), (GENERATE, 3),
        (EXPAND, 3), (DEAD_END, 3),
        (EXPAND, 2), (GENERATE, 4),
        (EXPAND, 4), (GOAL, 4),
    ]
    assert trace.max_frontier == 2


def test_astar_reopens_a_closed_state_under_an_inconsistent_heuristic():
    # 0->1->3 costs 1+5, 0->2->3 costs 1+1, 3->4 costs 5; h(2)=5 is admissible but inconsistent
    adj = [[[1, 1], [2, 1]], [[3, 5]], [[3, 1]], [[4, 5]], []]
    problem = graph(adj, [0, 0, 5, 0, 0])
    trace = AStarSearch().run(GraphTask(), problem)
    assert expanded_states(trace) == [0, 1, 3, 2, 3, 4]
    assert trace.solution == ["go 2", "go 3", "go 4"]
    greedy = AStarSearch(greedy=True).run(GraphTask(), problem)  # never regenerates a state
    assert greedy.solution == ["go 1", "go 3", "go 4"]


def test_beam_keeps_width_best_children_per_level():
    # root has four children with h 3,1,2,0.5; width 2 keeps states 4 and 2 (h 0.5, 1)
    adj = [[[1, 1], [2, 1], [3, 1], [4, 1]], [[5, 1]], [[6, 1]], [[5, 1]], [[7, 1]], [], [], []]
    problem = graph(adj, [9, 3, 1, 2, 0.5, 0, 0, 0], goal=5)
    trace = BeamSearch(width=2).run(GraphTask(), problem)
    assert expanded_states(trace) == [0, 4, 2, 7, 6]
    assert not trace.solved and trace.meta == {"exhausted": True}  # state 5 lay in the dropped branches
    assert BeamSearch(width=3).run(GraphTask(), problem).solution == ["go 3", "go 5"]


def test_mcts_values_and_selection():
    trace = MCTSSearch(exploration=0.0).run(GraphTask(), SMALL)
    gen = [e for e in trace.events if e.kind == GENERATE]
    assert all(e.value == pytest.approx(1 / (1 + e.h)) for e in gen[:-1]) and gen[-1].value == 1.0
    # c = 0 is pure exploitation: expands state 1 (value 0.5) before state 2 (0.4), backs up the
    # dead end as 0, then switches
    assert expanded_states(trace) == [0, 1, 3, 2]
    assert trace.solution == ["go 2", "go 4"] and trace.meta["iterations"] == 4
    rand = MCTSSearch(rollout="random", rollout_depth=3).run(GraphTask(), SMALL, seed=5)
    assert {e.value for e in rand.events if e.kind == GENERATE} <= {0.0, 1.0}


def test_mcts_iteration_budget():
    adj = [[[i + 1, 1]] for i in range(9)] + [[]]
    trace = MCTSSearch(iterations=4).run(GraphTask(), graph(adj, [0] * 10))
    assert trace.events[-1].kind == BUDGET and trace.meta["iterations"] == 4 and not trace.solved


def test_describe_names_every_parameter():
    assert DFSSearch(prune_threshold=3.0, name="dfs").describe() == {
        "max_expansions": 10_000, "shuffle": False, "prune_threshold": 3.0, "max_depth": None,
        "closed_set": False, "name": "dfs",
    }
    assert AStarSearch().describe()["name"] == "astar" and MCTSSearch().name == "mcts"


# --- the real tasks ----------------------------------------------------------------------------
@functools.cache
def maze_pool():
    task = MazeTask(size=6, min_plan_length=4)
    return task, task.sample_problems("train", 60, seed=0)


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, 59), shuffle=st.booleans(), algo=st.sampled_from(["bfs", "astar"]))
def test_maze_bfs_and_astar_are_optimal(index, shuffle, algo):
    task, problems = maze_pool()
    problem = problems[index]
    trace = ALGORITHMS[algo](shuffle=shuffle).run(task, problem, seed=index)
    check_trace(task, problem, trace)
    assert len(trace.solution) == task.optimal_length(problem) == _grid_distance(task, problem)
    assert task.verify(problem, trace.solution).optimal


def _grid_distance(task, problem):
    """Shortest plan by a plain flood fill over free cells, independent of the searches."""
    n, walls = problem["size"], {tuple(w) for w in problem["walls"]}
    frontier, seen, dist = [tuple(problem["start"])], {tuple(problem["start"])}, 0
    while frontier:
        if tuple(problem["goal"]) in frontier:
            return dist
        nxt = []
        for x, y in frontier:
            for c in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if 0 <= c[0] < n and 0 <= c[1] < n and c not in walls and c not in seen:
                    seen.add(c)
                    nxt.append(c)
        frontier, dist = nxt, dist + 1
    return None


@pytest.mark.parametrize("algo", [a for a in ALGORITHMS if a not in ("bfs", "astar")])
def test_maze_every_algorithm_gives_valid_traces(algo):
    task, problems = maze_pool()
    for i, problem in enumerate(problems[:15]):
        trace = ALGORITHMS[algo](shuffle=i % 2 == 1, max_expansions=3000).run(task, problem, seed=i)
        check_trace(task, problem, trace, max_expansions=3000)
        if algo in COMPLETE and algo != "dfs":  # path-only DFS may spend its budget on a 6x6 maze
            assert trace.solved


def test_maze_shuffled_astar_gives_several_traces():
    task, problems = maze_pool()
    search = AStarSearch(shuffle=True)
    distinct = [len({search.run(task, p, seed).to_json() for seed in range(4)}) for p in problems[:10]]
    assert max(distinct) > 1
    assert all(len(search.run(task, p, s).solution) == task.optimal_length(p) for p in problems[:10] for s in range(3))


@settings(max_examples=60, deadline=None)
@given(target=st.integers(1, 60), numbers=st.lists(st.integers(1, 12), min_size=3, max_size=3),
       algo=st.sampled_from(COMPLETE), shuffle=st.booleans())
def test_countdown3_complete_searches_agree_with_the_exact_solver(target, numbers, algo, shuffle):
    task = CountdownTask(num_count=3, max_number=12)
    problem = {"target": target, "numbers": numbers}
    trace = ALGORITHMS[algo](shuffle=shuffle).run(task, problem, seed=target)
    check_trace(task, problem, trace)
    assert trace.solved == (task.solution(problem) is not None)
    if trace.solved:
        assert len(trace.solution) == 2  # every number is used


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_countdown4_solutions_use_every_number(algo):
    task = CountdownTask(num_count=4, max_number=99)
    for i, problem in enumerate(task.sample_problems("train", 8, seed=3)):
        trace = ALGORITHMS[algo](shuffle=i % 2 == 0, max_expansions=2000).run(task, problem, seed=i)
        check_trace(task, problem, trace, max_expansions=2000)
        if trace.solved:
            assert len(trace.solution) == 3 and task.verify(problem, trace.solution).correct
        if algo in ("bfs", "dfs", "astar", "greedy"):
            assert trace.solved, "sampled problems are solvable and these searches are complete"


def test_countdown_dfs_prunes_at_the_target_like_sos():
    # 16 from (9, 12, 12): SoS's threshold=target tries the root's children with mean |n - 16| <= 16
    # best first (h 4.5, 7.5, 8.5, 11, 11.5) and never 12 * 9 (h 48) or 12 * 12 (h 67.5), the only
    # way to 16 (144 / 9), so it fails where the unpruned DFS succeeds.
    task, problem = CountdownTask(), {"target": 16, "numbers": [9, 12, 12]}
    trace = DFSSearch(prune_threshold="target").run(task, problem)
    tried = [e.action for e in trace.events if e.kind == GENERATE and e.parent == 0]
    assert tried == ["12 + 9 = 21", "12 + 12 = 24", "12 - 9 = 3", "12 / 12 = 1", "12 - 12 = 0"]
    assert all(e.h <= 16 for e in trace.events if e.kind == GENERATE)
    assert not trace.solved and trace.meta == {"exhausted": True}
    assert DFSSearch().run(task, problem).solution == ["12 * 12 = 144", "144 / 9 = 16"]
    assert trace == DFSSearch(prune_threshold=16).run(task, problem)  # the field's value, as a number
    assert DFSSearch(prune_threshold="target").describe()["prune_threshold"] == "target"


class DefaultScoring(CountdownTask):
    """Countdown with the base class's scored_successors (successors + heuristic, nothing fused)."""

    scored_successors = Task.scored_successors


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, shuffle=st.booleans(), threshold=st.sampled_from([None, "target", 20.0]),
       closed=st.booleans(), heuristic=st.sampled_from(["sum", "mult"]))
def test_dfs_trace_does_not_depend_on_the_fused_scoring(seed, shuffle, threshold, closed, heuristic):
    kw = {"num_count": 4, "max_number": 30, "heuristic": heuristic}
    fused, plain = CountdownTask(**kw), DefaultScoring(**kw)
    problem = fused.sample_problems("train", 1, seed)[0]
    dfs = DFSSearch(shuffle=shuffle, prune_threshold=threshold, closed_set=closed, max_expansions=300)
    assert dfs.run(fused, problem, seed).to_dict() == dfs.run(plain, problem, seed).to_dict()


def test_countdown_dfs_follows_stream_of_search():
    # children of (2, 5) by "sum" h = |c - 10|: 5 * 2 = 10 (h 0) is tried first and is the goal
    task = CountdownTask(num_count=2, max_number=12)
    trace = DFSSearch().run(task, {"target": 10, "numbers": [5, 2]})
    assert kinds(trace) == [(GENERATE, 0), (EXPAND, 0), (GENERATE, 1), (GOAL, 1)]
    assert trace.solution == ["5 * 2 = 10"]
    # target 4 from (2, 5): children 7, 3, 10 have h 3, 1, 6; threshold 0 prunes them all
    trace = DFSSearch(prune_threshold=0).run(task, {"target": 4, "numbers": [5, 2]})
    assert kinds(trace) == [(GENERATE, 0), (DEAD_END, 0)] and trace.meta == {"exhausted": True}


def test_base_apply_matches_actions_word_for_word_whatever_their_spacing():
    """A task whose successors write irregular spacing still verifies: formats write actions as
    words, so the default `Task.apply` compares them spacing aside on both sides."""
    from metacot.tasks.base import Successor

    class Spaced(GraphTask):
        def successors(self, problem, state):
            return [Successor(f"go  {s.action.split()[1]} ", s.state, s.cost) for s in super().successors(problem, state)]

    task, plain = Spaced(), GraphTask()
    solved = [(p, t.solution) for p in task.sample_problems("train", 20, seed=3)
              if (t := AStarSearch().run(plain, p, seed=0)).solved and t.solution]
    problem, solution = solved[0]
    assert task.verify(problem, solution).correct
    assert task.apply(problem, task.initial_state(problem), "go   nowhere") is None
