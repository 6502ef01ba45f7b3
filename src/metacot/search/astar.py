"""A* / weighted A* / greedy best-first search (Searchformer's "create" = GENERATE, "close" = EXPAND).

Nodes are ordered by f = g + weight * h (`greedy=True`: by h alone, i.e. weight -> infinity), ties
by h then creation order (random with `shuffle`, Searchformer's non-deterministic A*). The goal test
runs when a node is *expanded* (closed): with weight 1 and an admissible h the first goal closed is
optimal in cost.

Duplicates: a successor whose state is already known with a cost-so-far <= its own is not
generated. A state reached by a strictly cheaper path is generated again (and re-opened if it was
closed, which only an inconsistent h needs); the superseded entry is dropped silently when popped.
Greedy search generates each state at most once.
"""

from __future__ import annotations

import random
from heapq import heappop, heappush

from metacot.search.base import SearchAlgorithm
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task


class AStarSearch(SearchAlgorithm):
    name = "astar"

    def __init__(
        self,
        max_expansions: int = 10_000,
        shuffle: bool = False,
        weight: float = 1.0,
        greedy: bool = False,
        name: str = "astar",
    ):
        super().__init__(max_expansions=max_expansions, shuffle=shuffle)
        if weight < 0:
            raise ValueError(f"weight must be >= 0 (1.0 = A*, 0 = uniform cost), got {weight}")
        self.weight = weight
        self.greedy = greedy
        self.name = name

    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        successors, is_goal, heuristic = task.successors, task.is_goal, task.heuristic
        weight, greedy, shuffle = self.weight, self.greedy, self.shuffle
        h_cache: dict = {}
        root = task.initial_state(problem)
        h0 = h_cache[root] = heuristic(problem, root)
        states, parents, actions, gs = [root], [-1], [None], [0.0]
        events = [TraceEvent(GENERATE, 0, None, root, None, 0.0, h0)]
        best_g = {root: 0.0}  # cheapest known cost-so-far of each state
        open_node = {root: 0}  # the open (generated, not yet closed) node of each state
        heap = [(h0 if greedy else weight * h0, h0, 0, 0)]
        goal = -1
        expanded = 0
        max_frontier = live = 1
        meta: dict = {}
        while True:
            if not heap:
                meta["exhausted"] = True
                break
            _, _, _, node = heappop(heap)
            state = states[node]
            if open_node.get(state) != node:
                continue  # superseded by a cheaper path to the same state
            if expanded >= self.max_expansions:
                events.append(TraceEvent(BUDGET, -1))
                break
            del open_node[state]
            live -= 1
            events.append(TraceEvent(EXPAND, node))
            expanded += 1
            if is_goal(problem, state):
                goal = node
                break
            g = gs[node]
            succ = successors(problem, state)
            if shuffle:
                succ = list(succ)  # never shuffle a list the task may have cached
                rng.shuffle(succ)
            generated = False
            for s in succ:
                st = s.state
                cg = g + s.cost
                old = best_g.get(st)
                if old is not None and (greedy or old <= cg):
                    continue
                best_g[st] = cg
                h = h_cache.get(st)
                if h is None:
                    h = h_cache[st] = heuristic(problem, st)
                child = len(states)
                states.append(st)
                parents.append(node)
                actions.append(s.action)
                gs.append(cg)
                events.append(TraceEvent(GENERATE, child, node, st, s.action, cg, h))
                generated = True
                if st in open_node:
                    live -= 1  # the old entry is now stale
                open_node[st] = child
                live += 1
                f = h if greedy else cg + weight * h
                heappush(heap, (f, h, rng.random() if shuffle else child, child))
            if not generated:
                events.append(TraceEvent(DEAD_END, node))
            if live > max_frontier:
                max_frontier = live
        return self.finish(task, problem, events, parents, actions, goal, expanded, max_frontier, meta)
