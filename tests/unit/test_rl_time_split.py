"""The RL stage's step time split: medians per phase and their shares, and its printed line."""

import pytest

from metacot.stages.rl import format_time_split, time_split


def test_time_split_medians_and_shares():
    split = time_split([(1.0, 0.5, 2.0), (3.0, 0.5, 2.0), (2.0, 1.5, 2.0)])
    assert split["steps"] == 3
    assert (split["rollout_s"], split["logprob_s"], split["update_s"]) == (2.0, 0.5, 2.0)
    assert split["rollout_share"] == pytest.approx(2.0 / 4.5)
    assert split["logprob_share"] == pytest.approx(0.5 / 4.5)
    line = format_time_split(split)
    assert line.startswith("RL step time (median of 3 steps): rollout 2.000 s (44.4%)")
    assert "log-probs 0.500 s (11.1%)" in line and "update 2.000 s (44.4%)" in line


def test_time_split_without_steps():
    assert time_split([]) is None
    assert "no steps" in format_time_split(None)
