"""Exact Countdown solvers under the Stream-of-Search rules.

Rules: repeatedly replace two numbers a >= b by a + b, a - b, a * b or a / b (only when exact and
b != 0); the target is reached when a single number remains and equals it (all numbers used).

`reachable` checks a whole batch of candidate tuples at once. Rejection sampling of problems was
~90% of a naive generator's time, so instead of one recursive search per tuple it enumerates the
fixed set of combination sequences (for 4 numbers: 6 pairs x 4 ops, then 3 x 4, then the final
4 ops) over numpy arrays; the last two steps are folded into one comparison (`_reach3`). Values
are floats with NaN marking an illegal (inexact) division: NaN propagates through every later
operation and never equals the target, so no masks are needed. Float64 is exact here because every
value stays far below 2**52 (see `max_exact_value`); float32, used when every value stays below
2**24 (`_largest`: Countdown-4 with numbers up to 99), is exact too and moves half the bytes.

`solve` is the plain recursive solver (reference for tests, optimal lengths, small inputs).
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable
from functools import cache
from itertools import combinations
from operator import itemgetter

import numpy as np

# Products and sums of the inputs stay below this, so float64 arithmetic (and the "is the
# quotient an integer" test) is exact.
max_exact_value = 2**50


def value_bound(max_number: int, num_count: int) -> int:
    """An upper bound on any intermediate value: (max_number + 1) ** num_count."""
    return (max_number + 1) ** num_count


def reachable(numbers: np.ndarray, target: int | np.ndarray, chunk: int | None = None) -> np.ndarray:
    """For each row of `numbers` (K x N non-negative ints), can the rules reach `target` (a scalar,
    or one target per row; targets must be >= 1) using all N numbers? Returns K bools."""
    nums = np.asarray(numbers, dtype=np.float64)
    if nums.ndim != 2 or nums.shape[1] < 1:
        raise ValueError(f"numbers must be a K x N array with N >= 1, got shape {nums.shape}")
    k, n = nums.shape
    tgt = np.broadcast_to(np.asarray(target, dtype=np.float64), (k,))
    if k and _largest(np.abs(nums).max(), tgt.max(), n) < 2**24:  # float32 is exact then: half the traffic
        nums, tgt = nums.astype(np.float32), tgt.astype(np.float32)
    if k and tgt.min() < 1:
        raise ValueError("reachable() needs targets >= 1")
    if chunk is None:  # widest array ~400 KB (measured: 2x faster than larger), rows 64-aligned
        chunk = max(64, 393_216 // nums.itemsize // _widest(n) // 64 * 64)
    out = np.empty(k, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(0, k, chunk):
            vals = np.ascontiguousarray(nums[s : s + chunk].T)[None]  # (1, N, chunk)
            out[s : s + chunk] = _reach(vals, tgt[s : s + chunk])
    return out


def _largest(max_number: float, max_target: float, n: int) -> float:
    """A bound on every value `_reach` computes for n numbers <= max_number and targets <=
    max_target: results of up to n - 1 steps, at most max_number ** (n - 1) (or max_number ** 2
    for a last pair), and the values `_reach3` compares them with, at most target * z + z where
    z, a result of n - 3 steps, is at most max_number ** (n - 2)."""
    m = max(float(max_number), 2.0)
    return max(m ** max(n - 1, 2), float(max_target) * m ** max(n - 2, 1) + m ** max(n - 2, 1))


def _widest(n: int) -> int:
    """Elements per candidate of the widest array `_reach` builds (for chunk sizing)."""
    rows = 1
    for m in range(n, 3, -1):
        rows *= 4 * m * (m - 1) // 2
    return rows * 4 if n >= 3 else 4


def _exact(q: np.ndarray) -> np.ndarray:
    """q where it is a finite integer, NaN elsewhere (inexact division, x/0)."""
    return np.where(q - np.floor(q) == 0, q, np.nan)


def _reach(vals: np.ndarray, target: np.ndarray) -> np.ndarray:
    """vals: (M, n, K) -- M partial sequences, n numbers left, K candidates. Returns (K,) bool:
    does any of the M sequences reach the target?"""
    m, n, k = vals.shape
    if n == 1:
        return (vals[:, 0] == target).any(axis=0)
    if n == 2:
        hi = np.maximum(vals[:, 0], vals[:, 1])
        lo = np.minimum(vals[:, 0], vals[:, 1])
        return ((hi + lo == target) | (hi - lo == target) | (hi * lo == target) | (hi / lo == target)).any(0)
    if n == 3:
        return _reach3(vals, target)
    pairs = list(combinations(range(n), 2))
    nxt = np.empty((m, len(pairs), 4, n - 1, k), dtype=vals.dtype)
    for p, (i, j) in enumerate(pairs):
        rest = [r for r in range(n) if r != i and r != j]
        nxt[:, p, :, : n - 2] = vals[:, None, rest]
        _combine_into(vals[:, i], vals[:, j], nxt[:, p, :, n - 2])
    return _reach(nxt.reshape(m * len(pairs) * 4, n - 1, k), target)


def _combine_into(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """out[:, op] = x op y (larger first) for op in + - * /, NaN for an illegal division."""
    hi = np.maximum(x, y)
    lo = np.minimum(x, y)
    np.add(hi, lo, out=out[:, 0])
    np.subtract(hi, lo, out=out[:, 1])
    np.multiply(hi, lo, out=out[:, 2])
    out[:, 3] = _exact(hi / lo)


def _reach3(vals: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Three numbers left: combine a pair into r, then r with the third number z must give t.
    Instead of building the final pairs, list the (at most 6) values r that would work with z
    and compare: r + z = t, |r - z| = t, r * z = t, r / z = t, z / r = t (t >= 1)."""
    m, _, k = vals.shape
    r = np.empty((m, 4, k), dtype=vals.dtype)
    acc = np.zeros((m, 4, k), dtype=bool)
    eq = np.empty((m, 4, k), dtype=bool)
    nz = np.empty((m, k), dtype=bool)
    for i, j, c in ((0, 1, 2), (0, 2, 1), (1, 2, 0)):
        z = vals[:, c]
        _combine_into(vals[:, i], vals[:, j], r)
        np.not_equal(z, 0, out=nz)
        need = (
            t - z,  # r + z = t
            z - t,  # z - r = t
            z + t,  # r - z = t
            _exact(t / z),  # r * z = t (t / z = inf or inexact -> NaN)
            np.where(nz, t * z, np.nan),  # r / z = t
            np.where(nz, _exact(z / t), np.nan),  # z / r = t (r = 0 would be 0 / 0)
        )
        for v in need:
            np.equal(r, v[:, None], out=eq)
            acc |= eq
    return acc.reshape(-1, k).any(axis=0)


def combine(a: int, b: int) -> list[tuple[str, int]]:
    """The legal results of combining a >= b, in the fixed order + - * /."""
    out = [("+", a + b), ("-", a - b), ("*", a * b)]
    if b != 0 and a % b == 0:
        out.append(("/", a // b))
    return out


_MOVES: dict[tuple[int, int], tuple[tuple[int, str], ...]] = {}
MOVES_CACHE = 1 << 16  # pairs remembered (~25 MB at most); the cache restarts when full


def moves(a: int, b: int) -> tuple[tuple[int, str], ...]:
    """`(c, "a op b = c")` for each legal result of a >= b, in the order + - * /. Cached: the same
    pairs recur across problems (~90% of the calls in Countdown-4 datagen), and writing the action
    text was a third of the cost of scoring a node's children."""
    key = (a, b)
    out = _MOVES.get(key)
    if out is None:
        if len(_MOVES) >= MOVES_CACHE:
            _MOVES.clear()
        out = _MOVES[key] = tuple((c, f"{a} {op} {b} = {c}") for op, c in combine(a, b))
    return out


@cache
def _pairs(n: int) -> tuple[tuple[int, int, itemgetter], ...]:
    """(i, j, getter of the tuple of other numbers) for the pairs i < j of n numbers, in order."""
    out = []
    for i in range(n - 1):
        for j in range(i + 1, n):
            rest = [k for k in range(n) if k != i and k != j]
            if len(rest) > 1:
                out.append((i, j, itemgetter(*rest)))
            else:  # a slice, so that the getter still gives a tuple
                out.append((i, j, itemgetter(slice(rest[0], rest[0] + 1) if rest else slice(0, 0))))
    return tuple(out)


def scored_children(state: tuple[int, ...], target: int, max_h: float, term: Callable[[int, int], float] | None,
                    ) -> list[tuple[float, str, tuple[int, ...], float]]:
    """The children of a sorted state as `(h, action, state, 1.0)`, in successor order (pairs i < j,
    ops + - * /), leaving out those with h > max_h. `term=None` is the "sum" heuristic, the mean
    |x - target| over the child's numbers (inlined, with 2 and 3 numbers unrolled: the datagen hot
    path); otherwise h is the sum of `term(x, target)`. Both add one term per number, so a child's h
    is its pair's rest plus the new number's term. Equal pairs give equal children: the first one
    stands for all."""
    n = len(state)
    out: list = []
    append = out.append
    if term is None and n == 2:  # the most frequent call: no rest, no duplicate pairs
        b, a = state
        for c, action in _MOVES.get((a, b)) or moves(a, b):
            h = abs(c - target) / 1
            if h <= max_h:
                append((h, action, (c,), 1.0))
        return out
    pairs: set | None = set() if n > 2 and len(set(state)) < n else None
    for i, j, rest_of in _pairs(n):
        b, a = state[i], state[j]
        if pairs is not None:
            if (b, a) in pairs:
                continue
            pairs.add((b, a))
        if term is None and n == 3:  # the rest is one number r: the child is (c, r) sorted
            r = state[3 - i - j]
            base = abs(r - target)
            for c, action in _MOVES.get((a, b)) or moves(a, b):
                h = (base + abs(c - target)) / 2
                if h <= max_h:
                    append((h, action, (c, r) if c < r else (r, c), 1.0))
            continue
        rest = rest_of(state)
        if term is None:
            base = 0
            for x in rest:
                base += abs(x - target)
        else:
            base = sum(term(x, target) for x in rest)
        div = n - 1 if term is None else 1
        for c, action in moves(a, b):
            h = (base + (abs(c - target) if term is None else term(c, target))) / div
            if h <= max_h:
                if n == 4:  # insert c into the two other numbers r0 <= r1
                    r0, r1 = rest
                    child = (c, r0, r1) if c < r0 else (r0, c, r1) if c < r1 else (r0, r1, c)
                else:
                    k = bisect_right(rest, c)
                    child = rest[:k] + (c,) + rest[k:]
                append((h, action, child, 1.0))
    return out


def solve(numbers: list[int] | tuple[int, ...], target: int) -> list[str] | None:
    """A solution as action texts ("a op b = c", larger operand first), or None if unsolvable.
    Depth-first over pairs (i < j of the sorted numbers) and ops in the order + - * /."""
    failed: set[tuple[int, ...]] = set()

    def rec(state: tuple[int, ...]) -> list[str] | None:
        if len(state) == 1:
            return [] if state[0] == target else None
        if state in failed:
            return None
        for i, j in combinations(range(len(state)), 2):
            b, a = state[i], state[j]
            rest = list(state[:i] + state[i + 1 : j] + state[j + 1 :])
            for op, c in combine(a, b):
                child = rest.copy()
                insort(child, c)
                tail = rec(tuple(child))
                if tail is not None:
                    return [f"{a} {op} {b} = {c}", *tail]
        failed.add(state)
        return None

    return rec(tuple(sorted(int(x) for x in numbers)))
