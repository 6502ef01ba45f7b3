"""The SearchAlgorithm interface: solve one problem of a task and record how.

Algorithms are plain classes built from `conf/search/<name>.yaml`; their constructor arguments are
their config. Each one emits the same trace IR (`metacot.search.trace`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any

from metacot.search.trace import GOAL, SearchTrace, TraceEvent
from metacot.tasks.base import Problem, Task


class SearchAlgorithm(ABC):
    """Common knobs: an expansion budget, and optional randomised tie-breaking / child shuffling
    (`shuffle=True`) so that one problem can yield several distinct traces (as Searchformer's
    non-deterministic A* does). With `shuffle=False` the trace depends on the problem alone."""

    name: str = "search"

    def __init__(self, max_expansions: int = 10_000, shuffle: bool = False):
        if max_expansions < 1:
            raise ValueError(f"max_expansions must be >= 1, got {max_expansions}")
        self.max_expansions = max_expansions
        self.shuffle = shuffle

    @abstractmethod
    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        """Run the search; the returned trace records failure (`solved=False`, a BUDGET event when
        the budget ran out) instead of raising."""

    def run(self, task: Task, problem: Problem, seed: int = 0) -> SearchTrace:
        """Convenience: search with a fresh RNG seeded by `seed` (same seed => identical trace)."""
        trace = self.search(task, problem, LazyRandom(seed))  # type: ignore[arg-type]
        trace.seed = seed
        return trace

    def describe(self) -> dict[str, Any]:
        """Parameters that shape the traces (enter the dataset cache key)."""
        d = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        d["name"] = self.name
        return d

    def finish(self, task: Task, problem: Problem, events: list[TraceEvent], parents: list[int],
               actions: list, goal: int, expanded: int, max_frontier: int,
               meta: dict[str, Any]) -> SearchTrace:
        """Close a search whose nodes are kept as parallel `parents`/`actions` lists (node ids are
        list indices, the root is 0): record GOAL when `goal >= 0` and build the trace."""
        solved = goal >= 0
        if solved:
            events.append(TraceEvent(GOAL, goal))
        return SearchTrace(
            task=task.name, algorithm=self.name, problem=problem, events=events,
            solution=path_to(parents, actions, goal) if solved else None, solved=solved,
            nodes_expanded=expanded, max_frontier=max_frontier, meta=meta,
        )


def path_to(parents: list[int], actions: list, node: int) -> list[str]:
    """Actions from the root (node 0) to `node`."""
    path = []
    while node > 0:
        path.append(actions[node])
        node = parents[node]
    path.reverse()
    return path


class LazyRandom:
    """`random.Random(seed)`, built on first use: seeding costs ~6 us, several percent of a small
    search's datagen time, and searches without `shuffle` never draw. Behaves as the Random it
    stands for through its public methods (looked up on it once, then kept here)."""

    def __init__(self, seed: int):
        self._seed = seed

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # private and special names: not part of Random's interface
            raise AttributeError(name)
        rng = self.__dict__.get("_rng")
        if rng is None:
            rng = self.__dict__["_rng"] = random.Random(self._seed)
        value = getattr(rng, name)
        if callable(value):
            self.__dict__[name] = value
        return value
