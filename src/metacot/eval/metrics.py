"""Evaluation metrics as torchmetrics objects.

Every state is a sum (`dist_reduce_fx="sum"`), so a validation loop under DDP can let each rank
evaluate its own shard of problems and `compute()` returns the global value. An empty metric
(nothing counted) computes to NaN: an undefined mean is not a zero.

Definitions (REFERENCE.md "Metrics"):
- solve rate: the answer replays to the goal; optimal rate: correct and of optimal length.
- SWC (Searchformer): mean over problems of c·l*/max(l, l*), over problems with a known l*.
- ILR (Searchformer): mean over solved problems of t*/t, t = the model's generated tokens and
  t* = the reference algorithm's trace tokens (problems the algorithm solved only).
- tokens per problem: mean generated tokens; tokens per solve: all generated tokens divided by
  the number of solves (what one solve costs).
- fidelity: valid / claimed search steps over all completions (`linearization.fidelity.replay`).
- order similarity to a reference algorithm (`eval.behaviour`): mean over problems whose model
  trace parsed to at least one event (`None` = left out).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchmetrics import Metric

from metacot.eval.passk import pass_at_k

STAT_KEYS = ("nodes", "expansions", "backtracks", "max_depth")
NAN = float("nan")


def _t(x: Any, device: torch.device) -> torch.Tensor:
    """Floats (float64: counts stay exact); None becomes NaN (= "unknown")."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float64).flatten()
    vals = [NAN if v is None else float(v) for v in x]
    return torch.tensor(vals, dtype=torch.float64, device=device)


class _MeanMetric(Metric):
    """Sum of values / count of values."""

    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, values: torch.Tensor, count: torch.Tensor | float | None = None) -> None:
        self.total += values.sum()
        self.count += values.numel() if count is None else count

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(NAN, dtype=torch.float64)
        return self.total / self.count


class SolveRate(_MeanMetric):
    higher_is_better = True

    def update(self, correct: Sequence[bool] | torch.Tensor) -> None:
        self._add(_t(correct, self.device))


class OptimalRate(_MeanMetric):
    higher_is_better = True

    def update(self, optimal: Sequence[bool] | torch.Tensor) -> None:
        self._add(_t(optimal, self.device))


class InvalidFormatRate(_MeanMetric):
    """Fraction of completions that are not well-formed (parse errors or no final section)."""

    higher_is_better = False

    def update(self, well_formed: Sequence[bool] | torch.Tensor) -> None:
        self._add(1.0 - _t(well_formed, self.device))


class StepFidelity(_MeanMetric):
    """Valid steps / claimed steps, summed over problems. Weighing by steps (not a mean of
    per-problem fractions) keeps a completion that claims no step at all (garbage, or a
    solution-only format) from counting as perfectly faithful; no steps anywhere gives NaN."""

    higher_is_better = True

    def update(self, valid_steps: Sequence[int] | torch.Tensor, total_steps: Sequence[int] | torch.Tensor) -> None:
        self._add(_t(valid_steps, self.device), count=_t(total_steps, self.device).sum())


class SWC(_MeanMetric):
    """Success weighted by cost: c·l*/max(l, l*); problems with unknown l* are left out."""

    higher_is_better = True

    def update(self, correct: Sequence[bool] | torch.Tensor, length: Sequence[int] | torch.Tensor,
               optimal_length: Sequence[int | None] | torch.Tensor) -> None:
        c, ln, best = (_t(x, self.device) for x in (correct, length, optimal_length))
        known = ~torch.isnan(best)
        c, ln, best = c[known], ln[known], best[known]
        denom = torch.maximum(ln, best)
        # l* = 0 (start is the goal): a correct empty answer scores 1, not 0/0.
        score = torch.where(denom > 0, c * best / denom.clamp(min=1e-12), c)
        self._add(score)


class ILR(_MeanMetric):
    """Improved length ratio t*/t over solved problems that have a reference trace."""

    higher_is_better = True

    def update(self, correct: Sequence[bool] | torch.Tensor, tokens: Sequence[int] | torch.Tensor,
               reference_tokens: Sequence[int | None] | torch.Tensor) -> None:
        c, t, ref = (_t(x, self.device) for x in (correct, tokens, reference_tokens))
        keep = (c > 0) & ~torch.isnan(ref) & (ref > 0)
        self._add(ref[keep] / t[keep].clamp(min=1.0))


class TokensPerProblem(_MeanMetric):
    higher_is_better = False

    def update(self, tokens: Sequence[int] | torch.Tensor) -> None:
        self._add(_t(tokens, self.device))


class TokensPerSolve(_MeanMetric):
    """All generated tokens / number of solves (NaN with no solve)."""

    higher_is_better = False

    def update(self, tokens: Sequence[int] | torch.Tensor, correct: Sequence[bool] | torch.Tensor) -> None:
        self._add(_t(tokens, self.device), count=_t(correct, self.device).sum())


class OrderSimilarity(_MeanMetric):
    """Mean similarity of the model's expansion order to one reference algorithm's; None values
    (no trace to compare) are left out."""

    higher_is_better = True

    def update(self, values: Sequence[float | None]) -> None:
        self._add(_t([v for v in values if v is not None], self.device))


class ProblemCount(Metric):
    """How many problems were counted (over all ranks)."""

    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, n: int) -> None:
        self.count += n

    def compute(self) -> torch.Tensor:
        return self.count


class SearchStats(Metric):
    """Mean nodes / expansions / backtracks / max depth per problem; `compute` gives a dict."""

    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(len(STAT_KEYS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, stats: Sequence[dict[str, Any]]) -> None:
        rows = [[float(s.get(k) or 0) for k in STAT_KEYS] for s in stats]
        if rows:
            self.total += torch.tensor(rows, dtype=torch.float64, device=self.device).sum(0)
            self.count += len(rows)

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.total / self.count if self.count > 0 else torch.full_like(self.total, NAN)
        return {k: mean[i] for i, k in enumerate(STAT_KEYS)}


class PassAtK(Metric):
    """Mean unbiased pass@k for a fixed list of ks; per-problem values are summed, so it syncs."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.ks = [int(k) for k in ks]
        self.add_state("total", torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, num_samples: int | Sequence[int], num_correct: Sequence[int]) -> None:
        if len(num_correct) == 0:
            return
        sums = [float(pass_at_k(num_samples, num_correct, k).sum()) for k in self.ks]
        self.total += torch.tensor(sums, dtype=torch.float64, device=self.device)
        self.count += len(num_correct)

    def compute(self) -> dict[int, torch.Tensor]:
        mean = self.total / self.count if self.count > 0 else torch.full_like(self.total, NAN)
        return {k: mean[i] for i, k in enumerate(self.ks)}


@dataclass
class ProblemResult:
    """Everything the metrics need about one problem: the model's greedy attempt and the symbolic
    algorithm's record for the same problem."""

    correct: bool
    optimal: bool
    length: int  # actions in the model's answer that replayed
    optimal_length: int | None
    tokens: int  # tokens the model generated
    valid_steps: int  # search steps of the completion that replay as legal ...
    total_steps: int  # ... out of the steps it claims
    well_formed: bool
    model_stats: dict[str, Any] = field(default_factory=dict)
    symbolic_solved: bool = False
    symbolic_optimal: bool = False
    symbolic_tokens: int | None = None  # the reference trace's length in tokens
    symbolic_stats: dict[str, Any] = field(default_factory=dict)
    # reference algorithm -> similarity of the expansion orders (None: no model trace to compare)
    order_similarity: dict[str, float | None] = field(default_factory=dict)


class EvalMetrics:
    """The greedy-pass metric set (plus pass@k when `ks` is given), updated with `ProblemResult`s.

    `sync_on_compute=True` (the torchmetrics default) sums the states over DDP ranks; pass False
    when only one rank evaluates. `references` names the algorithms whose `order_similarity/<name>`
    is reported (every rank must pass the same names).
    """

    def __init__(self, ks: Sequence[int] = (), sync_on_compute: bool = True, references: Sequence[str] = ()):
        kw = {"sync_on_compute": sync_on_compute}
        self.solve, self.optimal = SolveRate(**kw), OptimalRate(**kw)
        self.swc, self.ilr = SWC(**kw), ILR(**kw)
        self.tokens, self.tokens_per_solve = TokensPerProblem(**kw), TokensPerSolve(**kw)
        self.fidelity, self.invalid = StepFidelity(**kw), InvalidFormatRate(**kw)
        self.model_stats, self.symbolic_stats = SearchStats(**kw), SearchStats(**kw)
        self.symbolic_solve, self.symbolic_optimal = SolveRate(**kw), OptimalRate(**kw)
        self.symbolic_tokens = TokensPerProblem(**kw)
        self.passk = PassAtK(ks, **kw) if ks else None
        self.count = ProblemCount(**kw)
        self.order = {name: OrderSimilarity(**kw) for name in references}

    def metrics(self) -> list[Metric]:
        ms = [self.solve, self.optimal, self.swc, self.ilr, self.tokens, self.tokens_per_solve,
              self.fidelity, self.invalid, self.model_stats, self.symbolic_stats, self.symbolic_solve,
              self.symbolic_optimal, self.symbolic_tokens, self.count]
        return ms + ([self.passk] if self.passk is not None else []) + list(self.order.values())

    def to(self, device: torch.device | str) -> EvalMetrics:
        for m in self.metrics():
            m.to(device)
        return self

    def reset(self) -> None:
        for m in self.metrics():
            m.reset()

    def update(self, results: Sequence[ProblemResult]) -> None:
        if not results:
            return
        col = lambda name: [getattr(r, name) for r in results]  # noqa: E731
        self.count.update(len(results))
        correct = col("correct")
        self.solve.update(correct)
        self.optimal.update(col("optimal"))
        self.swc.update(correct, col("length"), col("optimal_length"))
        ref = [t if s else None for t, s in zip(col("symbolic_tokens"), col("symbolic_solved"), strict=True)]
        self.ilr.update(correct, col("tokens"), ref)
        self.tokens.update(col("tokens"))
        self.tokens_per_solve.update(col("tokens"), correct)
        self.fidelity.update(col("valid_steps"), col("total_steps"))
        self.invalid.update(col("well_formed"))
        self.model_stats.update(col("model_stats"))
        self.symbolic_stats.update(col("symbolic_stats"))
        self.symbolic_solve.update(col("symbolic_solved"))
        self.symbolic_optimal.update(col("symbolic_optimal"))
        self.symbolic_tokens.update([t for t in col("symbolic_tokens") if t is not None])
        for name, metric in self.order.items():
            metric.update([r.order_similarity.get(name) for r in results])

    def update_passk(self, num_samples: int, num_correct: Sequence[int]) -> None:
        if self.passk is None:
            raise ValueError("this EvalMetrics was built without pass@k ks")
        self.passk.update(num_samples, num_correct)

    def compute(self) -> dict[str, float]:
        """Flat floats keyed as the evaluator reports them."""
        with warnings.catch_warnings():  # an empty metric is NaN by design; no need to warn
            warnings.filterwarnings("ignore", message=".*was called before the ``update``")
            return self._compute()

    def _compute(self) -> dict[str, float]:
        out = {
            "solve_rate": self.solve.compute(),
            "optimal_rate": self.optimal.compute(),
            "swc": self.swc.compute(),
            "ilr": self.ilr.compute(),
            "tokens_per_problem": self.tokens.compute(),
            "tokens_per_solve": self.tokens_per_solve.compute(),
            "fidelity": self.fidelity.compute(),
            "invalid_format_rate": self.invalid.compute(),
            "symbolic_solve_rate": self.symbolic_solve.compute(),
            "symbolic_optimal_rate": self.symbolic_optimal.compute(),
            "symbolic_tokens": self.symbolic_tokens.compute(),
            "num_problems": self.count.compute(),
        }
        for prefix, stats in (("model", self.model_stats), ("symbolic", self.symbolic_stats)):
            for k, v in stats.compute().items():
                out[f"{prefix}_{'depth' if k == 'max_depth' else k}"] = v
        if self.passk is not None:
            for k, v in self.passk.compute().items():
                out[f"pass@{k}"] = v
        for name, metric in self.order.items():
            out[f"order_similarity/{name}"] = metric.compute()
        return {k: float(v) for k, v in out.items()}


def finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN/inf -> None, for strict JSON files."""
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}
