"""Depth-first search in the style of Stream of Search (Gandhi et al. 2024).

At each node the children are sorted by heuristic (ascending; ties keep successor order, or are
random with `shuffle`), children whose heuristic exceeds `prune_threshold` are dropped (never
generated), and the search dives into each remaining child in turn. The goal test runs when a
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
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, GOAL, SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task

_first = itemgetter(0)


class DFSSearch(SearchAlgorithm):
    name = "dfs"

    def __init__(
        self,
        max_expansions: int = 10_000,
        shuffle: bool = False,
        prune_threshold: float | None = None,
        max_depth: int | None = None,
        closed_set: bool = False,
        name: str = "dfs",
    ):
        super().__init__(max_expansions=max_expansions, shuffle=shuffle)
        if max_depth is not None and max_depth < 0:
            raise ValueError(f"max_depth must be >= 0 or null, got {max_depth}")
        self.prune_threshold = prune_threshold
        self.max_depth = max_depth
        self.closed_set = closed_set
        self.name = name

    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        successors, is_goal, heuristic = task.successors, task.is_goal, task.heuristic
        shuffle, closed = self.shuffle, self.closed_set
        threshold = math.inf if self.prune_threshold is None else self.prune_threshold
        max_depth = math.inf if self.max_depth is None else self.max_depth
        seen: set = set()  # states on the current path (with closed_set: ever generated)

        def children(state, depth):
            """The children worth trying, best heuristic first, as (h, Successor) pairs."""
            if depth >= max_depth:
                return ()
            succ = successors(problem, state)
            if not succ:
                return ()
            if shuffle:
                succ = list(succ)  # never shuffle a list the task may have cached
                rng.shuffle(succ)
            kids = []
            for s in succ:
                if s.state not in seen:
                    h = heuristic(problem, s.state)
                    if h <= threshold:
                        kids.append((h, s))
            kids.sort(key=_first)  # stable: ties keep successor (or shuffled) order
            return kids

        root = task.initial_state(problem)
        events = [TraceEvent(GENERATE, 0, None, root, None, 0.0, heuristic(problem, root))]
        num_nodes, expanded, max_frontier, pending = 1, 0, 0, 0
        stack: list = []  # the current path: (node, state, g, depth, untried kids, action)
        solution = None
        meta: dict = {}
        if is_goal(problem, root):
            solution = []
            events.append(TraceEvent(GOAL, 0))
        else:
            seen.add(root)
            kids = children(root, 0)
            if kids:
                events.append(TraceEvent(EXPAND, 0))
                expanded = 1
                stack.append((0, root, 0.0, 0, iter(kids), None))
                pending = max_frontier = len(kids)
            else:
                events.append(TraceEvent(DEAD_END, 0))
        last = 0  # the node the search stands on
        while stack:
            node, _, g, depth, untried, _ = frame = stack[-1]
            kid = next(untried, None)
            if kid is None:  # every child of this node failed
                stack.pop()
                if not closed:
                    seen.discard(frame[1])
                continue
            pending -= 1
            h, s = kid
            state = s.state
            if closed:
                if state in seen:  # generated meanwhile in a sibling's subtree
                    continue
                seen.add(state)
            if last != node:  # a subtree failed: move back to this node first
                events.append(TraceEvent(EXPAND, node))
                last = node
            child = num_nodes
            num_nodes += 1
            cg = g + s.cost
            events.append(TraceEvent(GENERATE, child, node, state, s.action, cg, h))
            if is_goal(problem, state):
                solution = [f[5] for f in stack[1:]]
                solution.append(s.action)
                events.append(TraceEvent(GOAL, child))
                break
            if not closed:
                seen.add(state)
            grandkids = children(state, depth + 1)
            if not grandkids:
                if not closed:
                    seen.discard(state)
                events.append(TraceEvent(DEAD_END, child))
                continue
            if expanded >= self.max_expansions:
                events.append(TraceEvent(BUDGET, -1))
                break
            events.append(TraceEvent(EXPAND, child))
            expanded += 1
            last = child
            stack.append((child, state, cg, depth + 1, iter(grandkids), s.action))
            pending += len(grandkids)
            if pending > max_frontier:
                max_frontier = pending
        else:
            if solution is None:
                meta["exhausted"] = True
        return SearchTrace(
            task=task.name, algorithm=self.name, problem=problem, events=events,
            solution=solution, solved=solution is not None,
            nodes_expanded=expanded, max_frontier=max_frontier, meta=meta,
        )
