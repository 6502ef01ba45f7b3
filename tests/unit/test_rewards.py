"""RewardFunction on crafted outcomes, with hand-computed numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.rl.rewards import RewardFunction, RolloutOutcome


def outcome(correct=False, optimal=False, well_formed=True, n=10, truncated=False, fidelity=None):
    return RolloutOutcome(correct, optimal, well_formed, n, truncated, fidelity)


def test_outcome_reward_tinyzero_style():
    rf = RewardFunction(format_reward=0.1)
    assert rf(outcome(correct=True))[0] == 1.0
    assert rf(outcome(correct=False, well_formed=True))[0] == 0.1  # well-formed but wrong
    assert rf(outcome(correct=False, well_formed=False))[0] == 0.0  # malformed
    assert rf(outcome(correct=True, n=100_000, truncated=True))[0] == 1.0  # no shaping by default
    total, parts = rf(outcome(correct=True, optimal=True, fidelity=0.3))
    assert total == 1.0 and parts["format"] == 0.0 and parts["optimal"] == 0.0 and parts["fidelity"] == 0.0


SHAPED = dict(
    format_reward=0.1,
    optimal_bonus=0.5,
    length_gamma=0.5,
    length_scale=100,
    fidelity_weight=0.2,
    overlong_buffer=50,
    max_length=200,
)


@pytest.mark.parametrize(
    "o, want",
    [
        # correct+optimal, 100 tokens: (1 + .5 + .2*1) * .5^1 = .85; 100 <= 150, no penalty
        (outcome(correct=True, optimal=True, n=100, fidelity=1.0), 0.85),
        # wrong but well-formed, 50 tokens: (.1 + .2*.5) * .5^.5
        (outcome(n=50, fidelity=0.5), 0.2 * math.sqrt(0.5)),
        # malformed, empty, no trace: 0
        (outcome(well_formed=False, n=0), 0.0),
        # correct, not optimal, long: 1 * .5^1.75 + (150 - 175) / 50
        (outcome(correct=True, n=175, fidelity=0.0), 0.5**1.75 - 0.5),
        # exactly at the budget without truncation: full -1 penalty on top of the discounted reward
        (outcome(correct=True, n=200), 0.25 - 1.0),
        # truncated and malformed: -1
        (outcome(well_formed=False, n=200, truncated=True), -1.0),
    ],
)
def test_shaped_reward_hand_computed(o, want):
    total, parts = RewardFunction(**SHAPED)(o)
    assert total == pytest.approx(want, abs=1e-12)
    assert parts["total"] == total
    base = parts["outcome"] + parts["format"] + parts["optimal"] + parts["fidelity"]
    assert total == pytest.approx(base * parts["length_factor"] + parts["overlong"], abs=1e-12)


def test_overlong_penalty_scale_and_ramp():
    rf = RewardFunction(overlong_buffer=10, overlong_penalty=0.5, max_length=100)
    assert rf.overlong(90, False) == 0.0
    assert rf.overlong(95, False) == -0.5
    assert rf.overlong(20, True) == -1.0  # truncated
    assert rf(outcome(correct=True, n=95))[0] == pytest.approx(1.0 - 0.25)


def test_batch_totals_and_component_means():
    rf = RewardFunction(format_reward=0.1)
    totals, means = rf.batch([outcome(correct=True), outcome(), outcome(well_formed=False)])
    assert totals == [1.0, 0.1, 0.0]
    assert means["outcome"] == pytest.approx(1 / 3) and means["format"] == pytest.approx(0.1 / 3)
    assert means["total"] == pytest.approx(1.1 / 3)
    assert rf.batch([]) == ([], {})


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="max_length"):
        RewardFunction(overlong_buffer=10)(outcome())
    with pytest.raises(ValueError, match="length_gamma"):
        RewardFunction(length_gamma=1.5)
    with pytest.raises(ValueError, match="exceed"):
        RewardFunction(overlong_buffer=300, max_length=200)
    with pytest.raises(ValueError, match="fidelity"):
        RewardFunction()(outcome(fidelity=1.5))


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 400),
    st.booleans(),
    st.one_of(st.none(), st.floats(0, 1)),
)
def test_shaped_reward_bounds_and_monotone_in_length(correct, optimal, well_formed, n, truncated, fidelity):
    rf = RewardFunction(**SHAPED)
    o = RolloutOutcome(correct, optimal, well_formed, n, truncated, fidelity)
    total, parts = rf(o)
    assert -1.0 <= total <= 1.0 + 0.5 + 0.2
    if correct:  # a correct answer always beats the same answer being wrong
        assert total > rf(RolloutOutcome(False, False, well_formed, n, truncated, fidelity))[0] - 1e-12
    if not truncated:  # shorter is never worse
        shorter = RolloutOutcome(correct, optimal, well_formed, max(n - 7, 0), truncated, fidelity)
        assert rf(shorter)[0] >= total - 1e-12
