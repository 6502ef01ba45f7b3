"""The default decode budget shared by RL rollouts, SFT validation and evaluation
(`stages.common.new_token_budget`, `eval_options`): twice the longest training completion plus
its eos, capped by the context left after the longest prompt."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from metacot.stages.common import eval_options, new_token_budget


class WordTokenizer:
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


RECORDS = [{"prompt": "a b", "completion": "x y z"}, {"prompt": "a b c d", "completion": "x"}]


def test_twice_the_longest_completion_plus_eos():
    assert new_token_budget(WordTokenizer(), RECORDS, context=100) == 2 * (3 + 1)


def test_capped_by_the_context_left_after_the_longest_prompt():
    assert new_token_budget(WordTokenizer(), RECORDS, context=10) == 10 - 1 - 4
    assert new_token_budget(WordTokenizer(), RECORDS, context=3) == 1  # never below one token


@pytest.mark.parametrize("given, expected", [(None, 8), (5, 5)])
def test_eval_options_resolve_null_only(given, expected):
    cfg = OmegaConf.create({"data": {"max_tokens": 100}, "eval": {
        "_target_": "metacot.eval.evaluator.EvalOptions", "max_new_tokens": given, "num_samples": 0}})
    assert eval_options(cfg, WordTokenizer(), RECORDS).max_new_tokens == expected


def test_evaluate_refuses_an_unresolved_budget():
    from metacot.eval.evaluator import EvalOptions, evaluate

    with pytest.raises(ValueError, match="max_new_tokens is None"):
        evaluate(None, None, None, None, RECORDS, EvalOptions(max_new_tokens=None))


@pytest.mark.parametrize("bad, match", [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"), ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"num_samples": -2}, "num_samples must be >= 0"), ({"n_problems": -1}, "n_problems must be >= 0"),
    ({"temperature": -1.0}, "temperature >= 0"), ({"top_p": 0.0}, "top_p"),
    ({"num_samples": 4, "temperature": 0.0}, "identical greedy samples"),
])
def test_bad_eval_options_are_refused_with_the_option_named(bad, match):
    from metacot.eval.evaluator import EvalOptions

    with pytest.raises(ValueError, match=match):
        EvalOptions(**bad)
