"""A tiny test-only task: shortest paths on a random weighted directed graph.

Nodes sit on a small grid and every edge costs at least the Manhattan distance between its ends,
so `heuristic="manhattan"` is admissible *and* consistent; `heuristic="noisy"` scales the true
remaining cost by a random factor in [0, 1] per node, which stays admissible but is usually
inconsistent (it exercises A*'s re-opening of closed states). `brute_force` enumerates every
simple path, an answer independent of any search algorithm under test.
"""

from __future__ import annotations

import heapq
import random

from metacot.tasks.base import SPLITS, Problem, State, Successor, Task


class GraphTask(Task):
    name = "graph"

    def __init__(self, num_nodes: int = 7, edge_prob: float = 0.35, grid: int = 4,
                 heuristic: str = "manhattan", unit_costs: bool = False):
        if heuristic not in ("manhattan", "noisy", "zero"):
            raise ValueError(f"heuristic must be 'manhattan', 'noisy' or 'zero', got {heuristic!r}")
        self.num_nodes = num_nodes
        self.edge_prob = edge_prob
        self.grid = grid
        self.heuristic_mode = heuristic
        self.unit_costs = unit_costs

    # --- problems ---------------------------------------------------------------------------
    def make_problem(self, seed: int) -> Problem:
        rng = random.Random(seed)
        n = self.num_nodes
        xy = [(rng.randrange(self.grid), rng.randrange(self.grid)) for _ in range(n)]
        adj: list[list[list[int]]] = [[] for _ in range(n)]
        for u in range(n):
            for v in range(n):
                if u != v and rng.random() < self.edge_prob:
                    dist = abs(xy[u][0] - xy[v][0]) + abs(xy[u][1] - xy[v][1])
                    cost = 1 if self.unit_costs else max(1, dist) + rng.randrange(3)
                    adj[u].append([v, cost])
        start, goal = rng.randrange(n), rng.randrange(n)
        problem = {"adj": adj, "xy": [list(p) for p in xy], "start": start, "goal": goal}
        true = _dijkstra_to(problem, goal)
        if self.heuristic_mode == "manhattan" and not self.unit_costs:
            h = [abs(xy[s][0] - xy[goal][0]) + abs(xy[s][1] - xy[goal][1]) for s in range(n)]
        elif self.heuristic_mode == "noisy":
            h = [0.0 if true[s] is None else round(true[s] * rng.random(), 3) for s in range(n)]
        else:
            h = [0] * n
        problem["h"] = h
        return problem

    def sample_problems(self, split: str, n: int, seed: int) -> list[Problem]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        base = 1_000_003 * (SPLITS.index(split) + 1) + 7919 * seed
        return [self.make_problem(base + i) for i in range(n)]

    # --- rules ------------------------------------------------------------------------------
    def initial_state(self, problem: Problem) -> State:
        return problem["start"]

    def successors(self, problem: Problem, state: State) -> list[Successor]:
        return [Successor(f"go {v}", v, float(c)) for v, c in problem["adj"][state]]

    def is_goal(self, problem: Problem, state: State) -> bool:
        return state == problem["goal"]

    def heuristic(self, problem: Problem, state: State) -> float:
        return float(problem["h"][state])

    def optimal_length(self, problem: Problem) -> int | None:
        best = brute_force(self, problem)
        return None if best is None else best[0]

    # --- text -------------------------------------------------------------------------------
    def prompt_text(self, problem: Problem) -> str:
        edges = " ".join(f"{u} {v} {c}" for u, out in enumerate(problem["adj"]) for v, c in out)
        return f"from {problem['start']} to {problem['goal']} edges {edges}"

    def state_text(self, problem: Problem, state: State) -> str:
        return str(state)

    def parse_state(self, problem: Problem, text: str) -> State | None:
        text = text.strip()
        if not text.isdigit() or int(text) >= len(problem["adj"]):
            return None
        return int(text)


def _dijkstra_to(problem: Problem, goal: int) -> list[float | None]:
    """Exact remaining cost to `goal` from every node (reverse Dijkstra), None if unreachable."""
    n = len(problem["adj"])
    rev: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for u, out in enumerate(problem["adj"]):
        for v, c in out:
            rev[v].append((u, c))
    dist: list[float | None] = [None] * n
    heap = [(0, goal)]
    while heap:
        d, u = heapq.heappop(heap)
        if dist[u] is not None:
            continue
        dist[u] = d
        for w, c in rev[u]:
            if dist[w] is None:
                heapq.heappush(heap, (d + c, w))
    return dist


def brute_force(task: Task, problem: Problem, max_len: int = 12) -> tuple[int, float] | None:
    """(fewest actions, least cost) over every simple path to a goal of at most `max_len` actions,
    by exhaustive enumeration; None when no goal is reachable. Both optima are simple paths."""
    start = task.initial_state(problem)
    best_len: int | None = None
    best_cost: float | None = None
    stack = [(start, 0, 0.0, frozenset([start]))]
    while stack:
        state, length, cost, seen = stack.pop()
        if task.is_goal(problem, state):
            best_len = length if best_len is None else min(best_len, length)
            best_cost = cost if best_cost is None else min(best_cost, cost)
            continue
        if length == max_len:
            continue
        for s in task.successors(problem, state):
            if s.state not in seen:
                stack.append((s.state, length + 1, cost + s.cost, seen | {s.state}))
    return None if best_len is None else (best_len, best_cost)


def path_cost(task: Task, problem: Problem, actions: list[str]) -> float:
    """Total cost of a (valid) action sequence."""
    state, total = task.initial_state(problem), 0.0
    for a in actions:
        step = next(s for s in task.successors(problem, state) if s.action == a)
        state, total = step.state, total + step.cost
    return total
