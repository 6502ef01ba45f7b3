"""Depth-first search in the style of Stream of Search (Gandhi et al. 2024).

At each node the children are sorted by heuristic (ascending; ties keep successor order, or are
random with `shuffle`), children whose heuristic exceeds `prune_threshold` are dropped (never
generated), and the search dives into each remaining child in turn. The threshold is a number or
the name of a problem field: the SoS generator ran `dfs(..., threshold=target)`, which is
`prune_threshold: target` here (about half the nodes of an unpruned DFS on Countdown-4; it fails
on problems whose every solution passes through a pruned child). Children come from
`Task.scored_successors` (one call per node; the task may skip building pruned children). The goal test runs when a
node is *generated* (as SoS checks each explored operation), so DFS is complete on finite spaces
but not optimal.

Trace shape: a child is GENERATEd when the search tries it; a child with no children worth
exploring (no successors, all pruned, all on the current path, or at `max_depth`) is declared a
DEAD_END right there; otherwise the search EXPANDs it ("moves to" it). When a subtree fails and
the search tries the next child of an ancestor, it first EXPANDs that ancestor again, so every
backtrack is an explicit move. States on the current path are never revisited (cycle check);
`closed_set=True` also skips states seen anywhere before (graph search, useful on mazes).
`max_expansions` counts first moves into nodes (moves back are free); `max_frontier` is the
largest number of children waiting to be tried along the current path.
"""

from __future__ import annotations

import math
import random
from operator import itemgetter

from metacot.search.base import SearchAlgorithm
from metacot.search.trace import (
    BUDGET,
    DEAD_END,
    EXPAND,
    GENERATE,
    GOAL,
    SearchTrace,
    TraceEvent,
    shared_events,
)
from metacot.tasks.base import Problem, Task

_first = itemgetter(0)


class DFSSearch(SearchAlgorithm):
    name = "dfs"

    def __init__(
        self,
        max_expansions: int = 10_000,
        shuffle: bool = False,
        prune_threshold: float | str | None = None,
        max_depth: int | None = None,
        closed_set: bool = False,
        name: str = "dfs",
    ):
        super().__init__(max_expansions=max_expansions, shuffle=shuffle)
        if max_depth is not None and max_depth < 0:
            raise ValueError(f"max_depth must be >= 0 or null, got {max_depth}")
        if isinstance(prune_threshold, bool) or not isinstance(prune_threshold, (int, float, str, type(None))):
            raise ValueError("prune_threshold must be a number, the name of a numeric problem field "
                             f"(e.g. target) or null, got {prune_threshold!r}")
        self.prune_threshold = prune_threshold
        self.max_depth = max_depth
        self.closed_set = closed_set
        self.name = name

    def threshold(self, problem: Problem) -> float:
        """The pruning threshold for this problem: the number, the named problem field, or inf."""
        t = self.prune_threshold
        if t is None:
            return math.inf
        if isinstance(t, str):
            if not isinstance(problem.get(t), (int, float)):
                raise ValueError(f"search.prune_threshold={t!r} names no numeric field of the problem "
                                 f"(fields: {sorted(problem)}); use a number or one of those fields")
            return problem[t]
        return t

    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        scored, is_goal = task.scored_successors, task.is_goal
        shuffle, closed, max_expansions = self.shuffle, self.closed_set, self.max_expansions
        threshold = self.threshold(problem)
        # The task may leave pruned children out, except when shuffling: the shuffle must see every
        # child to draw the same permutation.
        max_h = math.inf if shuffle else threshold
        max_depth = math.inf if self.max_depth is None else self.max_depth
        seen: set = set()  # states on the current path (with closed_set: ever generated)

        def children(kids):
            """The (h, action, state, cost) children worth trying, best heuristic first."""
            if shuffle:
                kids = list(kids)  # never shuffle a list the task may have cached
                rng.shuffle(kids)
            kids = [k for k in kids if k[0] <= threshold and k[2] not in seen]
            kids.sort(key=_first)  # stable: ties keep successor (or shuffled) order
            return kids

        root = task.initial_state(problem)
        moved, dead = shared_events(EXPAND), shared_events(DEAD_END)  # immutable, shared by all traces
        shared = len(moved)
        events = [TraceEvent(GENERATE, 0, None, root, None, 0.0, task.heuristic(problem, root))]
        append = events.append
        num_nodes, expanded, max_frontier, pending = 1, 0, 0, 0
        moves_back = deepest = 0  # for the stats, counted here instead of in a second pass
        stack: list = []  # the current path: (node, state, g, depth, untried kids, action)
        solution = None
        if is_goal(problem, root):
            solution = []
            append(TraceEvent(GOAL, 0))
        else:
            seen.add(root)
            kids = children(scored(problem, root, max_h)) if max_depth > 0 else ()
            if kids:
                append(TraceEvent(EXPAND, 0))
                expanded = 1
                stack.append((0, root, 0.0, 0, iter(kids), None))
                pending = max_frontier = len(kids)
            else:
                append(TraceEvent(DEAD_END, 0))
        last = 0  # the node the search stands on
        while stack:
            node, _, g, depth, untried, _ = stack[-1]
            deeper = depth + 1 < max_depth
            for h, action, state, cost in untried:  # try children until one is worth moving into
                pending -= 1
                if closed:
                    if state in seen:  # generated meanwhile in a sibling's subtree
                        continue
                    seen.add(state)
                if last != node:  # a subtree failed: move back to this node first
                    append(moved[node] if node < shared else TraceEvent(EXPAND, node))
                    moves_back += 1
                    last = node
                child = num_nodes
                num_nodes += 1
                cg = g + cost
                append(TraceEvent(GENERATE, child, node, state, action, cg, h))
                if depth >= deepest:
                    deepest = depth + 1
                if is_goal(problem, state):
                    solution = [f[5] for f in stack[1:]]
                    solution.append(action)
                    append(TraceEvent(GOAL, child))
                    stack.clear()
                    break
                grandkids = scored(problem, state, max_h) if deeper else None
                if grandkids:
                    if not closed:
                        seen.add(state)
                    grandkids = children(grandkids)
                    if not grandkids and not closed:
                        seen.discard(state)
                if not grandkids:
                    append(dead[child] if child < shared else TraceEvent(DEAD_END, child))
                    continue
                if expanded >= max_expansions:
                    append(TraceEvent(BUDGET, -1))
                    stack.clear()
                    break
                append(moved[child] if child < shared else TraceEvent(EXPAND, child))
                expanded += 1
                last = child
                stack.append((child, state, cg, depth + 1, iter(grandkids), action))
                pending += len(grandkids)
                if pending > max_frontier:
                    max_frontier = pending
                break
            else:  # every child of this node failed
                state = stack.pop()[1]
                if not closed:
                    seen.discard(state)
        meta = {} if solution is not None or events[-1].kind == BUDGET else {"exhausted": True}
        trace = SearchTrace(
            task=task.name, algorithm=self.name, problem=problem, events=events,
            solution=solution, solved=solution is not None,
            nodes_expanded=expanded, max_frontier=max_frontier, meta=meta,
        )
        # Every move back is a backtrack (the node expanded before it lies in the failed subtree).
        trace.remember_stats({"nodes": num_nodes, "expansions": expanded + moves_back,
                              "backtracks": moves_back, "max_depth": deepest})
        return trace
