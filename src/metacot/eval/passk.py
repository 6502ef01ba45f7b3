"""Unbiased pass@k (Chen et al. 2021): draw n ≥ k samples per problem, count the c correct ones,

    pass@k = 1 − C(n−c, k) / C(n, k),

the probability that a random k-subset of the n samples holds at least one correct sample.
Binomials of n = 1024 overflow floats, so we use the product form
C(n−c, k) / C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i), summed in log space and vectorised over problems
with a cumulative sum (one pass over i = 1..n serves every problem).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def default_ks(n: int) -> list[int]:
    """1, 2, 4, … up to n, plus n itself (the curve the exploration-boundary plots use)."""
    if n < 1:
        return []
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k(num_samples: int | Sequence[int] | np.ndarray, num_correct: Sequence[int] | np.ndarray,
              k: int) -> np.ndarray:
    """Per-problem unbiased pass@k. `num_samples` is n (one int for all problems, or one per
    problem), `num_correct` the c of each problem. Returns a float64 array, one value per problem."""
    c = np.atleast_1d(np.asarray(num_correct, dtype=np.int64))
    n = np.broadcast_to(np.asarray(num_samples, dtype=np.int64), c.shape)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("every problem needs 0 <= num_correct <= num_samples")
    if np.any(n < k):
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={int(n.min())}")
    if c.size == 0:
        return np.zeros(0)
    # log_terms[i] = log(1 − k/i) for i > k (zero below: those i never enter a product we use).
    top = int(n.max())
    i = np.arange(1, top + 1, dtype=np.float64)
    log_terms = np.zeros(top + 1)
    log_terms[1:] = np.where(i > k, np.log1p(-k / np.maximum(i, k + 1)), 0.0)
    cum = np.cumsum(log_terms)  # cum[m] = Σ_{i<=m} log_terms[i]
    fail = np.exp(cum[n] - cum[n - c])  # Π_{i=n−c+1}^{n} (1 − k/i)
    # Fewer than k wrong samples: every k-subset holds a correct one.
    return np.where(n - c < k, 1.0, 1.0 - fail)


def pass_at_k_curve(num_samples: int | Sequence[int] | np.ndarray, num_correct: Sequence[int] | np.ndarray,
                    ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over problems for each k (default: `default_ks` of the smallest n); NaN for each
    given k when there are no problems (an undefined mean, not a zero). With no problems and no `ks`
    there is no n to choose ks from: the curve is empty."""
    c = np.atleast_1d(np.asarray(num_correct, dtype=np.int64))
    n = np.broadcast_to(np.asarray(num_samples, dtype=np.int64), c.shape)
    if ks is None:
        ks = default_ks(int(n.min())) if n.size else []
    if c.size == 0:
        return {int(k): float("nan") for k in ks}
    return {int(k): float(pass_at_k(n, c, int(k)).mean()) for k in ks}
