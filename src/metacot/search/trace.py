"""The trace IR: how a search grew its tree, in order, independent of any text format.

Every search algorithm emits a `SearchTrace`; every linearization renders one. Keeping one IR is
what lets "MCTS traces vs A* traces in the same format" be a clean experiment.

Events are small slotted objects (not dicts) because datagen builds millions of them per minute;
the kind-and-node-only ones (EXPAND, DEAD_END) can be shared immutable objects (`shared_events`),
and a search that counts its own stats while it runs hands them over (`remember_stats`).
States are whatever the task uses: hashable scalars and tuples (JSON turns tuples into lists;
reading a trace back turns them into tuples again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

TRACE_VERSION = 1

# Event kinds. Plain strings so they survive JSON and read well in tests.
GENERATE = "generate"  # a node was created: parent, action, state, g, h and/or value
EXPAND = "expand"  # the search moved to this node to expand it (a "move to node" step)
DEAD_END = "dead_end"  # the node has no useful children (leaf without the goal, or pruned)
GOAL = "goal"  # the node satisfies the goal test
BUDGET = "budget"  # the expansion budget ran out; the search gave up
EVENT_KINDS = (GENERATE, EXPAND, DEAD_END, GOAL, BUDGET)


_FIELDS = ("kind", "node", "parent", "state", "action", "g", "h", "value")


class TraceEvent:
    """One step of a search. `node` ids are integers in creation order; the root is 0."""

    __slots__ = _FIELDS

    def __init__(
        self,
        kind: str,
        node: int,
        parent: int | None = None,
        state: Any = None,
        action: str | None = None,
        g: float | None = None,
        h: float | None = None,
        value: float | None = None,
    ):
        self.kind = kind
        self.node = node
        self.parent = parent
        self.state = state
        self.action = action
        self.g = g
        self.h = h
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "node": self.node}
        for k in ("parent", "state", "action", "g", "h", "value"):
            v = getattr(self, k)
            if v is not None:
                d[k] = _jsonable(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceEvent:
        state = d.get("state")
        return cls(
            d["kind"], d["node"], d.get("parent"), _hashable(state), d.get("action"),
            d.get("g"), d.get("h"), d.get("value"),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceEvent) and all(
            getattr(self, k) == getattr(other, k) for k in _FIELDS
        )

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in _FIELDS if getattr(self, k) is not None)
        return f"TraceEvent({inner})"


class _SharedEvent(TraceEvent):
    """An event that holds a kind and a node only (EXPAND, DEAD_END, GOAL). Immutable, so one
    object per (kind, node) serves every trace: a DFS trace is ~60% such events (`shared_events`)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"shared {self.kind} events are immutable; build a TraceEvent to change one")

    def __reduce__(self) -> tuple:
        return shared_event, (self.kind, self.node)


SHARED_NODES = 4096  # nodes 0 .. SHARED_NODES - 1 have shared events (~1 MB for all kinds)
_SHARED: dict[str, list[TraceEvent]] = {}


def shared_events(kind: str) -> list[TraceEvent]:
    """`TraceEvent(kind, node)` for node = 0 .. SHARED_NODES - 1, as shared immutable objects
    (indexing this list is ~4x cheaper than building an event)."""
    out = _SHARED.get(kind)
    if out is None:
        out = _SHARED[kind] = []
        for node in range(SHARED_NODES):
            e = object.__new__(_SharedEvent)
            for k in _FIELDS:
                object.__setattr__(e, k, None)
            object.__setattr__(e, "kind", kind)
            object.__setattr__(e, "node", node)
            out.append(e)
    return out


def shared_event(kind: str, node: int) -> TraceEvent:
    """`TraceEvent(kind, node)`, shared when the node has one."""
    return shared_events(kind)[node] if 0 <= node < SHARED_NODES else TraceEvent(kind, node)


@dataclass
class SearchTrace:
    """A complete search run on one problem.

    `solution` is the list of action strings from the initial state to the goal (None when the
    search failed); `solved` is False when the budget ran out or the space was exhausted.
    """

    task: str
    algorithm: str
    problem: dict[str, Any]
    events: list[TraceEvent]
    solution: list[str] | None
    solved: bool
    nodes_expanded: int = 0
    max_frontier: int = 0
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = TRACE_VERSION

    # --- derived statistics -------------------------------------------------------------------
    @property
    def nodes_generated(self) -> int:
        return sum(1 for e in self.events if e.kind == GENERATE)

    def stats(self) -> dict[str, Any]:
        """`search_stats(events)`, or what the search counted while running (`remember_stats`)."""
        known = self.__dict__.get("_stats")
        if known is not None and known[0] is self.events and known[1] == len(self.events):
            return dict(known[2])
        return search_stats(self.events)

    def remember_stats(self, stats: dict[str, Any]) -> None:
        """Let a search that counted `search_stats` while it ran spare `stats()` its pass over the
        events (forgotten when `events` is replaced or changes length)."""
        self._stats = (self.events, len(self.events), stats)

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "task": self.task,
            "algorithm": self.algorithm,
            "problem": self.problem,
            "events": [e.to_dict() for e in self.events],
            "solution": self.solution,
            "solved": self.solved,
            "nodes_expanded": self.nodes_expanded,
            "max_frontier": self.max_frontier,
            "seed": self.seed,
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchTrace:
        version = d.get("version")
        if version != TRACE_VERSION:
            raise ValueError(
                f"trace version {version!r} is not supported (this metacot reads version {TRACE_VERSION}); "
                "rebuild the dataset with `python train.py stage=datagen ...`"
            )
        return cls(
            task=d["task"],
            algorithm=d["algorithm"],
            problem=d["problem"],
            events=[TraceEvent.from_dict(e) for e in d["events"]],
            solution=d.get("solution"),
            solved=d["solved"],
            nodes_expanded=d.get("nodes_expanded", 0),
            max_frontier=d.get("max_frontier", 0),
            seed=d.get("seed"),
            meta=d.get("meta", {}),
        )

    @classmethod
    def from_json(cls, text: str) -> SearchTrace:
        return cls.from_dict(json.loads(text))


def search_stats(events: list[TraceEvent]) -> dict[str, Any]:
    """Nodes, expansions, backtracks and depth of a sequence of events.

    A *backtrack* is an expansion of a node that is not a child of the node expanded just before
    it (the search jumped elsewhere in the tree instead of going deeper). This definition works
    for symbolic traces and for traces parsed from model output alike.
    """
    depth: dict[int, int] = {}
    parent_of: dict[int, int | None] = {}
    generated = expansions = backtracks = 0
    last_expanded: int | None = None
    for e in events:
        kind = e.kind
        if kind == GENERATE:
            generated += 1
            node, parent = e.node, e.parent
            parent_of[node] = parent
            depth[node] = 0 if parent is None else depth.get(parent, 0) + 1
        elif kind == EXPAND:
            expansions += 1
            node = e.node
            if last_expanded is not None and parent_of.get(node) != last_expanded:
                backtracks += 1
            last_expanded = node
    return {
        "nodes": generated,
        "expansions": expansions,
        "backtracks": backtracks,
        "max_depth": max(depth.values(), default=0),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v
