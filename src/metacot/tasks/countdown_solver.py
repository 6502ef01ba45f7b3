"""Exact Countdown solvers under the Stream-of-Search rules.

Rules: repeatedly replace two numbers a >= b by a + b, a - b, a * b or a / b (only when exact and
b != 0); the target is reached when a single number remains and equals it (all numbers used).

`reachable` checks a whole batch of candidate tuples at once. Rejection sampling of problems was
~90% of a naive generator's time, so instead of one recursive search per tuple it enumerates the
fixed set of combination sequences (for 4 numbers: 6 pairs x 4 ops, then 3 x 4, then the final
4 ops) over numpy arrays; the last two steps are folded into one comparison (`_reach3`). Values are float64 with NaN marking an illegal (inexact) division: NaN
propagates through every later operation and never equals the target, so no masks are needed.
Float64 is exact here because every value stays far below 2**52 (see `max_exact_value`).

`solve` is the plain recursive solver (reference for tests, optimal lengths, small inputs).
"""

from __future__ import annotations

from bisect import insort
from itertools import combinations

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
    if k and tgt.min() < 1:
        raise ValueError("reachable() needs targets >= 1")
    if chunk is None:  # widest array ~400 KB (measured: 2x faster than larger), rows 64-aligned
        chunk = max(64, 49152 // _widest(n) // 64 * 64)
    out = np.empty(k, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(0, k, chunk):
            vals = np.ascontiguousarray(nums[s : s + chunk].T)[None]  # (1, N, chunk)
            out[s : s + chunk] = _reach(vals, tgt[s : s + chunk])
    return out


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
    nxt = np.empty((m, len(pairs), 4, n - 1, k))
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
    r = np.empty((m, 4, k))
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
