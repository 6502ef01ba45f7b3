"""Breadth-first search: FIFO frontier, a visited set over states.

The goal test runs when a node is *generated*: BFS grows the tree level by level, so the first
goal generated has the fewest actions (it is optimal in number of actions, whatever the costs).
`g` in the trace is still the path cost so formats can show it.
"""

from __future__ import annotations

import random
from collections import deque

from metacot.search.base import SearchAlgorithm
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task


class BFSSearch(SearchAlgorithm):
    name = "bfs"

    def __init__(self, max_expansions: int = 10_000, shuffle: bool = False, name: str = "bfs"):
        super().__init__(max_expansions=max_expansions, shuffle=shuffle)
        self.name = name

    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        successors, is_goal, heuristic = task.successors, task.is_goal, task.heuristic
        root = task.initial_state(problem)
        states, parents, actions, gs = [root], [-1], [None], [0.0]
        events = [TraceEvent(GENERATE, 0, None, root, None, 0.0, heuristic(problem, root))]
        visited = {root}
        queue = deque([0])
        goal = 0 if is_goal(problem, root) else -1
        expanded = max_frontier = 0
        meta: dict = {}
        while goal < 0:
            if not queue:
                meta["exhausted"] = True
                break
            if expanded >= self.max_expansions:
                events.append(TraceEvent(BUDGET, -1))
                break
            max_frontier = max(max_frontier, len(queue))
            node = queue.popleft()
            events.append(TraceEvent(EXPAND, node))
            expanded += 1
            g = gs[node]
            children = successors(problem, states[node])
            if self.shuffle:
                children = list(children)  # never shuffle a list the task may have cached
                rng.shuffle(children)
            generated = False
            for s in children:
                state = s.state
                if state in visited:
                    continue
                visited.add(state)
                child = len(states)
                states.append(state)
                parents.append(node)
                actions.append(s.action)
                gs.append(g + s.cost)
                events.append(TraceEvent(GENERATE, child, node, state, s.action, g + s.cost,
                                         heuristic(problem, state)))
                generated = True
                if is_goal(problem, state):
                    goal = child
                    break
                queue.append(child)
            if not generated:
                events.append(TraceEvent(DEAD_END, node))
        return self.finish(task, problem, events, parents, actions, goal, expanded, max_frontier, meta)
