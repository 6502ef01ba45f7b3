"""Every evaluation metric on hand-built cases with exact numbers."""

import math

import pytest
import torch

from metacot.eval.metrics import (
    ILR,
    SWC,
    EvalMetrics,
    InvalidFormatRate,
    OptimalRate,
    PassAtK,
    ProblemResult,
    SearchStats,
    SolveRate,
    StepFidelity,
    TokensPerProblem,
    TokensPerSolve,
    finite_or_none,
)


def value(metric):
    return float(metric.compute())


def test_solve_and_optimal_rate():
    m = SolveRate()
    m.update([True, False, True])
    m.update(torch.tensor([False]))
    assert value(m) == 0.5
    o = OptimalRate()
    o.update([True, False, False, False, False])
    assert value(o) == pytest.approx(0.2)


@pytest.mark.filterwarnings("ignore:The ..compute.. method")
def test_empty_metric_is_nan_not_zero():
    assert math.isnan(value(SolveRate()))
    m = ILR()
    m.update([False], [10], [5])  # nothing solved: no ILR term
    assert math.isnan(value(m))


def test_swc_searchformer_definition():
    m = SWC()
    # correct & optimal -> 1; correct, 6 vs l*=4 -> 4/6; wrong -> 0; l* unknown -> left out;
    # correct but shorter than the stated l* (never for a true optimum) -> l*/l* capped at 1.
    m.update([True, True, False, True, True], [4, 6, 2, 3, 2], [4, 4, 4, None, 3])
    assert value(m) == pytest.approx((1 + 4 / 6 + 0 + 1) / 4)


def test_swc_start_is_goal():
    m = SWC()
    m.update([True, False], [0, 0], [0, 0])
    assert value(m) == 0.5


def test_ilr_over_solved_problems_with_a_reference():
    m = ILR()
    # solved 50 vs ref 100 -> 2; solved 200 vs 100 -> 0.5; unsolved -> out; no reference -> out.
    m.update([True, True, False, True], [50, 200, 10, 70], [100, 100, 100, None])
    assert value(m) == pytest.approx((2 + 0.5) / 2)


def test_tokens_per_problem_and_per_solve():
    t = TokensPerProblem()
    t.update([10, 20, 30, 40])
    assert value(t) == 25
    s = TokensPerSolve()
    s.update([10, 20, 30, 40], [True, False, False, True])
    assert value(s) == 50  # 100 tokens spent, 2 solves
    none = TokensPerSolve()
    none.update([10], [False])
    assert math.isnan(value(none))


def test_fidelity_and_invalid_format_rate():
    f = StepFidelity()
    f.update([3, 1, 0, 0], [3, 2, 0, 4])  # the step-less completion adds nothing
    assert value(f) == pytest.approx(4 / 9)
    none = StepFidelity()
    none.update([0, 0], [0, 0])
    assert math.isnan(value(none))
    inv = InvalidFormatRate()
    inv.update([True, False, False, True, True])
    assert value(inv) == pytest.approx(0.4)


def test_search_stats_means():
    s = SearchStats()
    s.update([{"nodes": 10, "expansions": 4, "backtracks": 1, "max_depth": 3},
              {"nodes": 2, "expansions": 0, "backtracks": 0, "max_depth": 1}, {}])
    out = {k: float(v) for k, v in s.compute().items()}
    assert out == {"nodes": 4.0, "expansions": 4 / 3, "backtracks": 1 / 3, "max_depth": 4 / 3}


def test_pass_at_k_metric():
    p = PassAtK([1, 2, 4])
    p.update(4, [0, 1])
    p.update(4, [4])
    out = {k: float(v) for k, v in p.compute().items()}
    assert out[1] == pytest.approx((0 + 0.25 + 1) / 3)
    assert out[2] == pytest.approx((0 + 0.5 + 1) / 3)
    assert out[4] == pytest.approx(2 / 3)


def test_states_are_sums_so_shards_merge_exactly():
    """What DDP does (sum every state over ranks) gives the same value as one process."""
    whole, a, b = SWC(), SWC(), SWC()
    args = ([True, True, False, True], [4, 6, 2, 5], [4, 4, 4, 5])
    whole.update(*args)
    a.update(*(x[:1] for x in args))
    b.update(*(x[1:] for x in args))
    for metric in (whole, a, b):
        assert all(fx is torch.sum or getattr(fx, "__name__", "") == "dim_zero_sum"
                   for fx in metric._reductions.values())
    a.merge_state(b)
    assert value(a) == pytest.approx(value(whole))
    p1, p2, p = PassAtK([1, 2]), PassAtK([1, 2]), PassAtK([1, 2])
    p1.update(2, [1])
    p2.update(2, [2, 0])
    p.update(2, [1, 2, 0])
    p1.merge_state(p2)
    assert {k: float(v) for k, v in p1.compute().items()} == {k: float(v) for k, v in p.compute().items()}


def _result(**kw):
    base = dict(correct=False, optimal=False, length=0, optimal_length=None, tokens=0, valid_steps=0,
                total_steps=0, well_formed=False)
    base.update(kw)
    return ProblemResult(**base)


def test_eval_metrics_flat_dict():
    m = EvalMetrics(ks=[1, 2])
    m.update([
        _result(correct=True, optimal=True, length=3, optimal_length=3, tokens=40, valid_steps=6, total_steps=6, well_formed=True,
                model_stats={"nodes": 6, "expansions": 3, "backtracks": 0, "max_depth": 3},
                symbolic_solved=True, symbolic_optimal=True, symbolic_tokens=80,
                symbolic_stats={"nodes": 8, "expansions": 4, "backtracks": 1, "max_depth": 3}),
        _result(correct=True, length=5, optimal_length=4, tokens=100, valid_steps=5, total_steps=10, well_formed=True,
                model_stats={"nodes": 10, "expansions": 5, "backtracks": 2, "max_depth": 5},
                symbolic_solved=True, symbolic_tokens=50,
                symbolic_stats={"nodes": 4, "expansions": 2, "backtracks": 0, "max_depth": 4}),
        _result(tokens=60, optimal_length=2, valid_steps=1, total_steps=4, symbolic_solved=False, symbolic_tokens=300,
                symbolic_stats={"nodes": 30, "expansions": 15, "backtracks": 5, "max_depth": 2}),
    ])
    m.update_passk(2, [2, 1, 0])
    out = m.compute()
    assert out["num_problems"] == 3
    assert out["solve_rate"] == pytest.approx(2 / 3)
    assert out["optimal_rate"] == pytest.approx(1 / 3)
    assert out["swc"] == pytest.approx((1 + 4 / 5 + 0) / 3)
    assert out["ilr"] == pytest.approx((80 / 40 + 50 / 100) / 2)
    assert out["tokens_per_problem"] == pytest.approx(200 / 3)
    assert out["tokens_per_solve"] == pytest.approx(100)
    assert out["fidelity"] == pytest.approx(12 / 20)
    assert out["invalid_format_rate"] == pytest.approx(1 / 3)
    assert (out["model_nodes"], out["model_expansions"], out["model_backtracks"], out["model_depth"]) == \
        pytest.approx((16 / 3, 8 / 3, 2 / 3, 8 / 3))
    assert out["symbolic_solve_rate"] == pytest.approx(2 / 3)
    assert out["symbolic_optimal_rate"] == pytest.approx(1 / 3)
    assert out["symbolic_tokens"] == pytest.approx(430 / 3)
    assert (out["symbolic_nodes"], out["symbolic_backtracks"], out["symbolic_depth"]) == pytest.approx((14, 2, 3))
    assert out["pass@1"] == pytest.approx(0.5)
    assert out["pass@2"] == pytest.approx(2 / 3)
    assert all(isinstance(v, float) for v in out.values())
    m.reset()
    assert math.isnan(m.compute()["solve_rate"])


def test_eval_metrics_without_passk_has_no_passk_keys():
    m = EvalMetrics()
    m.update([_result(correct=True, tokens=5)])
    assert not any(k.startswith("pass@") for k in m.compute())
    with pytest.raises(ValueError, match="pass@k"):
        m.update_passk(4, [1])


def test_finite_or_none():
    assert finite_or_none({"a": 1.0, "b": float("nan"), "c": float("inf")}) == {"a": 1.0, "b": None, "c": None}


def test_table_rows_columns_and_formats():
    from metacot.eval.table import format_table

    text = format_table({
        "val (seen)": {"solve_rate": 0.5, "symbolic_solve_rate": 1.0, "ilr": float("nan"), "num_problems": 20.0,
                       "symbolic_tokens": 112.667, "pass@8": 0.7, "pass@1": 0.25, "model_nodes": 10.625},
        "test_unseen (unseen)": {"solve_rate": 0.125, "num_problems": 20.0, "symbolic_tokens": 116.0, "pass@1": 0.1},
    })
    assert text.splitlines() == [
        "metric               val (seen)  test_unseen (unseen)",
        "-------------------  ----------  --------------------",
        "solve_rate                0.500                 0.125",
        "symbolic_solve_rate       1.000                     -",
        "ilr                           -                     -",
        "symbolic_tokens           112.7                 116.0",
        "model_nodes                10.6                     -",
        "num_problems                 20                    20",
        "pass@1                    0.250                 0.100",
        "pass@8                    0.700                     -",
    ]


def test_passk_plot(tmp_path):
    from metacot.eval.plots import passk_curve, plot_passk

    curve = passk_curve({"solve_rate": 0.3, "pass@4": 0.6, "pass@1": 0.2, "pass@2": 0.4, "pass@x": 1.0})
    assert curve == {1: 0.2, 2: 0.4, 4: 0.6}
    path = plot_passk({"val": curve, "test_unseen": {1: 0.1, 2: float("nan")}, "rl/val": {}}, tmp_path / "a" / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
