"""Monte Carlo tree search with UCT, for single-agent puzzles.

One iteration: *select* from the root, picking the child with the highest
W/N + exploration * sqrt(ln N_parent / N_child), down to a node not yet expanded; *expand* it
(EXPAND, then GENERATE every child whose state was never created before); *evaluate* each new
child once (that evaluation is its first visit, recorded as the GENERATE's `value`); *back up*
the best new child's value along the selected path (the player of a puzzle picks its best move).

Values in [0, 1]: `rollout="heuristic"` uses 1 / (1 + h) (cheap, deterministic);
`rollout="random"` walks up to `rollout_depth` uniformly random steps and scores 1 if it meets a
goal, else 0 (it draws from the rng whatever `shuffle` says, so the trace depends on the seed).
A goal is recognised when its node is *created* (GENERATE then GOAL); the search stops there.
A node without new children is a DEAD_END: it backs up 0 and, once every child of a node is
dead, that node is dead too and selection never enters it again; a dead root means the space is
exhausted. Budgets: `iterations` selection passes and `max_expansions` expansions, whichever
runs out first (BUDGET). The trace holds node creations with their values and the expansion
order, not the repeated selection passes (see DESIGN.md).
"""

from __future__ import annotations

import math
import random

from metacot.search.base import SearchAlgorithm
from metacot.search.trace import BUDGET, DEAD_END, EXPAND, GENERATE, SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task

ROLLOUTS = ("heuristic", "random")


class MCTSSearch(SearchAlgorithm):
    name = "mcts"

    def __init__(
        self,
        max_expansions: int = 10_000,
        shuffle: bool = False,
        iterations: int = 1_000,
        exploration: float = 1.0,
        rollout: str = "heuristic",
        rollout_depth: int = 10,
        name: str = "mcts",
    ):
        super().__init__(max_expansions=max_expansions, shuffle=shuffle)
        if rollout not in ROLLOUTS:
            raise ValueError(f"rollout must be one of {ROLLOUTS}, got {rollout!r}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if rollout_depth < 0:
            raise ValueError(f"rollout_depth must be >= 0, got {rollout_depth}")
        self.iterations = iterations
        if not exploration >= 0:
            raise ValueError(f"exploration must be >= 0 (UCT's c; 0 = greedy on mean value), got {exploration}")
        self.exploration = exploration
        self.rollout = rollout
        self.rollout_depth = rollout_depth
        self.name = name

    def _value(self, task: Task, problem: Problem, state, h: float, rng: random.Random) -> float:
        if self.rollout == "heuristic":
            return 1.0 / (1.0 + h)
        for _ in range(self.rollout_depth):
            succ = task.successors(problem, state)
            if not succ:
                return 0.0
            state = rng.choice(succ).state
            if task.is_goal(problem, state):
                return 1.0
        return 0.0

    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        successors, is_goal, heuristic = task.successors, task.is_goal, task.heuristic
        c, shuffle = self.exploration, self.shuffle
        root = task.initial_state(problem)
        h0 = heuristic(problem, root)
        root_is_goal = is_goal(problem, root)
        v0 = 1.0 if root_is_goal else self._value(task, problem, root, h0, rng)
        states, parents, actions, gs = [root], [-1], [None], [0.0]
        visits, totals = [1], [v0]  # N and W of every node
        kids: list[list[int] | None] = [None]  # None: not expanded yet
        dead = [False]
        events = [TraceEvent(GENERATE, 0, None, root, None, 0.0, h0, v0)]
        created = {root}
        goal = 0 if root_is_goal else -1
        expanded = iteration = 0
        frontier = max_frontier = 1  # created, not yet expanded
        meta: dict = {}
        while goal < 0:
            if dead[0]:
                meta["exhausted"] = True
                break
            if iteration >= self.iterations or expanded >= self.max_expansions:
                events.append(TraceEvent(BUDGET, -1))
                break
            iteration += 1
            # selection
            node = 0
            while kids[node] is not None:
                log_n = math.log(visits[node])
                best, best_score, ties = -1, -math.inf, 0
                for k in kids[node]:
                    if dead[k]:
                        continue
                    score = totals[k] / visits[k] + c * math.sqrt(log_n / visits[k])
                    if score > best_score:
                        best, best_score, ties = k, score, 1
                    elif shuffle and score == best_score:
                        ties += 1
                        if rng.random() * ties < 1.0:  # uniform among equal scores
                            best = k
                node = best
            # expansion and evaluation
            events.append(TraceEvent(EXPAND, node))
            expanded += 1
            frontier -= 1
            g = gs[node]
            succ = successors(problem, states[node])
            if shuffle:
                succ = list(succ)  # never shuffle a list the task may have cached
                rng.shuffle(succ)
            new = []
            for s in succ:
                st = s.state
                if st in created:
                    continue
                created.add(st)
                child = len(states)
                h = heuristic(problem, st)
                found = is_goal(problem, st)
                v = 1.0 if found else self._value(task, problem, st, h, rng)
                states.append(st)
                parents.append(node)
                actions.append(s.action)
                gs.append(g + s.cost)
                visits.append(1)
                totals.append(v)
                kids.append(None)
                dead.append(False)
                events.append(TraceEvent(GENERATE, child, node, st, s.action, g + s.cost, h, v))
                if found:
                    goal = child
                    break
                new.append(child)
            kids[node] = new
            if goal >= 0:
                break
            frontier += len(new)
            max_frontier = max(max_frontier, frontier)
            if new:
                value = max(totals[k] for k in new)
            else:
                events.append(TraceEvent(DEAD_END, node))
                value = 0.0
                dead[node] = True
                up = parents[node]
                while up >= 0 and all(dead[k] for k in kids[up]):
                    dead[up] = True
                    up = parents[up]
            # backup along the selected path
            while node >= 0:
                visits[node] += 1
                totals[node] += value
                node = parents[node]
        meta["iterations"] = iteration
        return self.finish(task, problem, events, parents, actions, goal, expanded, max_frontier, meta)
