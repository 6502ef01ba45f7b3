"""A weighted mixture of search strategies: each problem is solved by one component, drawn by weight.

Stream of Search (Gandhi et al. 2024) trained on traces of a *mix* of strategies (DFS and a
beam-style BFS with beam widths 1..5, under two heuristics), so the model sees many ways to search
rather than one. `MixtureSearch` draws the component for a problem from the `rng` that `search()`
receives, then hands that same rng to the component, so a seed still fixes the whole trace (and
datagen stays byte-identical for any number of workers). The trace keeps the component's own
`algorithm` name and records it in `meta["mixture_component"]`.

Components are `{"weight": w, "search": s}` entries, where `s` is a built `SearchAlgorithm` (what
Hydra's recursive instantiate gives) or a plain dict with a `_target_` class path and its
arguments (what a Python user can write without Hydra):

    MixtureSearch([{"weight": 1, "search": DFSSearch()},
                   {"weight": 3, "search": {"_target_": "metacot.search.beam.BeamSearch", "width": 2}}])

The heuristic is the task's (`task.heuristic` on Countdown), not a search option, so one mixture
mixes strategies under one heuristic.
"""

from __future__ import annotations

import importlib
import math
import random
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

from metacot.search.base import SearchAlgorithm
from metacot.search.trace import SearchTrace
from metacot.tasks.base import Problem, Task

COMPONENT_KEYS = ("weight", "search")


class MixtureSearch(SearchAlgorithm):
    name = "mixture"

    def __init__(self, components: Sequence[Any], name: str = "mixture"):
        if isinstance(components, (str, bytes, Mapping)) or not isinstance(components, Sequence):
            raise ValueError(f"search.components must be a list of {{weight, search}} entries, got {components!r}")
        if not components:
            raise ValueError("search.components is empty: give at least one {weight: <w>, search: <algorithm>}")
        weights, searches = [], []
        for i, comp in enumerate(components):
            weight, search = _component(i, comp)
            weights.append(weight)
            searches.append(search)
        total = math.fsum(weights)
        if total <= 0:
            raise ValueError(f"search.components weights sum to {total}: at least one weight must be > 0")
        names = [s.name for s in searches]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"search.components names must be distinct (traces are told apart by name), "
                             f"repeated: {dupes}; give each component its own `name:`")
        self.name = name
        self.weights = weights
        self.searches = searches
        # Cumulative weights of the components that can be drawn (a zero weight is never drawn).
        self._drawable = [i for i, w in enumerate(weights) if w > 0]
        self._cum, acc = [], 0.0
        for i in self._drawable:
            acc += weights[i]
            self._cum.append(acc)
        # Several traces of one problem can differ when a component shuffles or when more than one
        # component can be drawn (datagen's traces_per_problem > 1 checks this flag).
        self.shuffle = len(self._drawable) > 1 or any(searches[i].shuffle for i in self._drawable)

    def choose(self, rng: random.Random) -> int:
        """The index of the component drawn by weight (one `rng.random()` call)."""
        u = rng.random() * self._cum[-1]
        k = min(bisect_right(self._cum, u), len(self._cum) - 1)  # min: u rounded up to the total
        return self._drawable[k]

    def search(self, task: Task, problem: Problem, rng: random.Random) -> SearchTrace:
        search = self.searches[self.choose(rng)]
        trace = search.search(task, problem, rng)
        trace.meta["mixture_component"] = search.name
        return trace

    def describe(self) -> dict[str, Any]:
        pairs = zip(self.weights, self.searches, strict=True)
        return {"name": self.name, "components": [{"weight": w, "search": s.describe()} for w, s in pairs]}


def _component(i: int, comp: Any) -> tuple[float, SearchAlgorithm]:
    """Validate the i-th `{weight, search}` entry; build its search from a dict if needed."""
    where = f"search.components[{i}]"
    if not isinstance(comp, Mapping):
        raise ValueError(f"{where} must be a mapping {{weight: <w>, search: <algorithm>}}, got {comp!r}")
    unknown = sorted(set(comp) - set(COMPONENT_KEYS))
    missing = [k for k in COMPONENT_KEYS if k not in comp]
    if unknown or missing:
        raise ValueError(f"{where} must have exactly the keys {list(COMPONENT_KEYS)}; "
                         f"unknown: {unknown}, missing: {missing}")
    weight = comp["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{where}.weight must be a finite number >= 0, got {weight!r}")
    search = comp["search"]
    if isinstance(search, Mapping):
        search = _build(where, search)
    if not isinstance(search, SearchAlgorithm):
        raise ValueError(f"{where}.search must be a SearchAlgorithm or a dict with a `_target_` class path, "
                         f"got {search!r}")
    return float(weight), search


def _build(where: str, spec: Mapping) -> SearchAlgorithm:
    """`{"_target_": "pkg.module.Class", **kwargs}` -> Class(**kwargs), without Hydra."""
    target = spec.get("_target_")
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"{where}.search needs `_target_: <module>.<Class>` (e.g. metacot.search.dfs.DFSSearch), "
                         f"got {target!r}")
    module, _, cls_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{where}.search: cannot import {target!r} ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, SearchAlgorithm)):
        raise ValueError(f"{where}.search: {target!r} is not a SearchAlgorithm class")
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}.search: {target} does not take these arguments ({e})") from e
