"""Beam search, Stream of Search's beam-style BFS: level by level, keep the best `width` children.

Every node of the current level is expanded in turn and all its new children are generated; the
`width` children with the lowest heuristic (ties by creation order, or random with `shuffle`)
form the next level, the others are dropped. The goal test runs when a node is *generated* (as SoS
checks each explored operation). States generated once are never generated again. Beam search is
incomplete: `meta["exhausted"]` means the beam emptied, not that no solution exists.
"""

from __future__ import annotations

import random

from metacot.search.base import SearchAlgorithm
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task


class BeamSearch(SearchAlgorithm):
    name = "beam"

    def __init__(self, max_expansions: int = 10_000, shuffle: bool = False, width: int = 3,
                 name: str = "beam"):
        super().__init__(max_expansions=max_expansions, shuffle=shuffle)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.width = width
        self.name = name

    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        successors, is_goal, heuristic = task.successors, task.is_goal, task.heuristic
        shuffle, width = self.shuffle, self.width
        root = task.initial_state(problem)
        states, parents, actions, gs = [root], [-1], [None], [0.0]
        events = [TraceEvent(GENERATE, 0, None, root, None, 0.0, heuristic(problem, root))]
        visited = {root}
        level = [0]
        goal = 0 if is_goal(problem, root) else -1
        expanded = max_frontier = 0
        meta: dict = {}
        out_of_budget = False
        while goal < 0 and not out_of_budget:
            if not level:
                meta["exhausted"] = True
                break
            candidates = []  # (h, tie, node) of the next level
            for node in level:
                if expanded >= self.max_expansions:
                    events.append(TraceEvent(BUDGET, -1))
                    out_of_budget = True
                    break
                events.append(TraceEvent(EXPAND, node))
                expanded += 1
                g = gs[node]
                succ = successors(problem, states[node])
                if shuffle:
                    succ = list(succ)  # never shuffle a list the task may have cached
                    rng.shuffle(succ)
                generated = False
                for s in succ:
                    st = s.state
                    if st in visited:
                        continue
                    visited.add(st)
                    child = len(states)
                    states.append(st)
                    parents.append(node)
                    actions.append(s.action)
                    gs.append(g + s.cost)
                    h = heuristic(problem, st)
                    events.append(TraceEvent(GENERATE, child, node, st, s.action, g + s.cost, h))
                    generated = True
                    if is_goal(problem, st):
                        goal = child
                        break
                    candidates.append((h, rng.random() if shuffle else child, child))
                if goal >= 0:
                    break
                if not generated:
                    events.append(TraceEvent(DEAD_END, node))
            max_frontier = max(max_frontier, len(candidates))
            candidates.sort()
            level = [c[2] for c in candidates[:width]]
        return self.finish(task, problem, events, parents, actions, goal, expanded, max_frontier, meta)
