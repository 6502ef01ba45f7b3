"""Search behaviour: which algorithm does the model's exploration actually follow?

A model trained on A* traces can write well-formed A* text while expanding nodes in another order
(or drift toward DFS). Solve rate and fidelity do not show that; comparing the *order* in which the
model expands states with the order each reference algorithm expands them on the same problem does.

The unit is the state (not the node id: ids are each format's own). Similarity is order-aware:
longest common subsequence / length of the longer sequence (1 iff identical, 0 with nothing in
common).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from metacot.search.trace import EXPAND, GENERATE, SearchTrace


def expansion_order(trace: SearchTrace) -> list:
    """The states in the order the search expanded them, one entry per EXPAND event (repeats kept:
    DFS expands an ancestor again when it backtracks to it). An EXPAND without a state takes the
    state its node was generated with; one that names no known node and no state is skipped.

    Fallback: a trace with no EXPAND event at all (Dualformer traces with the close steps dropped)
    gives `generation_order(trace)`; compare it only with another `generation_order`."""
    if not any(e.kind == EXPAND for e in trace.events):
        return generation_order(trace)
    return _expanded(trace)


def generation_order(trace: SearchTrace) -> list:
    """The states in the order the search generated them (one entry per GENERATE event). What is
    left of the search order when a format drops its expansion steps: formats that place a child
    under "the node expanded last" (Searchformer, compact) lose their parent links with them, but
    the order of creation still follows the order of expansion."""
    return [e.state for e in trace.events if e.kind == GENERATE and e.state is not None]


def order_similarity(a: Sequence[Any], b: Sequence[Any]) -> float:
    """LCS(a, b) / max(len(a), len(b)) in [0, 1]: 1.0 iff the sequences are identical (two empty
    sequences included), 0.0 when they share no element (one empty and one not included)."""
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return lcs_length(a, b) / longest


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of a longest common subsequence, bit-parallel (Allison-Dix / Hyyrö): one big-int
    add per element of `b`, so two 2,000-step DFS traces take milliseconds instead of the
    seconds of the O(len(a)·len(b)) table."""
    if not a or not b:
        return 0
    masks: dict[Hashable, int] = {}
    for i, x in enumerate(a):
        k = _key(x)
        masks[k] = masks.get(k, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # bit i clear <=> row i of the DP table went up by one at this column
    for y in b:
        u = v & masks.get(_key(y), 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def compare_with_algorithms(task: Any, problem: dict[str, Any], model_trace: SearchTrace,
                            algorithms: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """`name -> order_similarity` of the model's expansion order and each reference algorithm's
    on `problem` (each one run afresh with `seed`). When the model's trace has no EXPAND event,
    both sides are compared by `generation_order`, so a format without close steps is not
    penalised for steps it never writes."""
    view = _expanded if any(e.kind == EXPAND for e in model_trace.events) else generation_order
    model_order = view(model_trace)
    return {name: order_similarity(model_order, view(algorithm.run(task, problem, seed=seed)))
            for name, algorithm in algorithms.items()}


def _expanded(trace: SearchTrace) -> list:
    state_of: dict[int, Any] = {}
    order: list = []
    for e in trace.events:
        if e.kind == GENERATE:
            state_of.setdefault(e.node, e.state)
        elif e.kind == EXPAND:
            state = e.state if e.state is not None else state_of.get(e.node)
            if state is not None:
                order.append(state)
    return order


def _key(x: Any) -> Hashable:
    """States are hashable by contract; a parser bug handing back a list still compares by value."""
    try:
        hash(x)
    except TypeError:
        return ("<unhashable>", repr(x))
    return x
