"""Rollout collection on crafted model outputs (a scripted sampler), with hand-computed rewards.

Uses the real Countdown task, the real Searchformer/solution formats, the project tokenizer and the
evaluator's scoring, so a reward here is exactly what the RL stage would give that text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metacot.data.tokenizer import make_tokenizer
from metacot.linearization.searchformer import SearchformerLinearization
from metacot.linearization.solution import SolutionLinearization
from metacot.rl.rewards import RewardFunction
from metacot.rl.rollout import RolloutCollector, step_indices, step_seed, summarize
from metacot.search.astar import AStarSearch
from metacot.tasks.countdown import CountdownTask


@dataclass
class Out:
    tokens: list[list[int]]
    finished: list[bool]


class ScriptedSampler:
    """Returns the given completions (ids, eos excluded) in order; records its calls."""

    def __init__(self, tokens, finished):
        self.tokens, self.finished, self.calls = tokens, finished, []

    def generate(self, prompts, max_new_tokens, num_samples=1, temperature=0.0, top_p=1.0, seed=None,
                 batch_size=None):
        self.calls.append(dict(prompts=prompts, max_new_tokens=max_new_tokens, num_samples=num_samples,
                               temperature=temperature, top_p=top_p, seed=seed))
        assert len(self.tokens) == len(prompts) * num_samples
        return Out(self.tokens, self.finished)


TASK = CountdownTask()
PROBLEMS = TASK.sample_problems("train", 2, 0)


def record(lin, problem):
    trace = AStarSearch().search(TASK, problem, random.Random(0))
    prompt, completion = lin.render(TASK, problem, trace)
    return {"id": 0, "prompt": prompt, "completion": completion, "problem": problem, "solved": trace.solved,
            "solution_length": len(trace.solution or []), "optimal_length": TASK.optimal_length(problem),
            "trace_tokens": 0, "stats": {}}


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_solution_format_rewards_on_crafted_outputs():
    lin = SolutionLinearization()
    tok = make_tokenizer(TASK, lin)
    rec = record(lin, PROBLEMS[0])  # target 66 numbers 2 11 12
    right = "answer\n12 / 2 = 6\n11 * 6 = 66\nend"
    wrong = "answer\n12 - 2 = 10\n11 * 10 = 110\nend"  # legal steps, misses the target
    illegal = "answer\n12 * 12 = 144\nend"  # uses a number twice
    garbage = "dead dead ) ( 7 create"
    texts = [right, wrong, illegal, garbage]
    tokens = [ids(tok, t) for t in texts]
    finished = [True, True, True, False]
    reward = RewardFunction(format_reward=0.1, length_gamma=0.5, length_scale=10.0)
    sampler = ScriptedSampler(tokens, finished)
    out = RolloutCollector(TASK, lin, tok, reward).collect(sampler, [rec], group_size=4, max_new_tokens=64,
                                                          temperature=0.7, top_p=0.9, seed=5)
    # the sampler saw `<s> prompt` once, with G = 4 and the sampling settings
    call = sampler.calls[0]
    assert call["prompts"] == [[tok.bos_token_id] + ids(tok, rec["prompt"])]
    assert (call["num_samples"], call["temperature"], call["top_p"], call["seed"]) == (4, 0.7, 0.9, 5)
    assert [o.correct for o in out.outcomes] == [True, False, False, False]
    assert [o.well_formed for o in out.outcomes] == [True, True, True, False]
    assert [o.truncated for o in out.outcomes] == [False, False, False, True]
    # eos appended to finished samples only; it counts as a generated token
    assert out.responses[0] == tokens[0] + [tok.eos_token_id] and out.responses[3] == tokens[3]
    n = [len(t) + f for t, f in zip(tokens, finished, strict=True)]
    want = [1.0 * 0.5 ** (n[0] / 10), 0.1 * 0.5 ** (n[1] / 10), 0.1 * 0.5 ** (n[2] / 10), 0.0]
    assert out.rewards == pytest.approx(want)
    assert out.components["outcome"] == pytest.approx(0.25)
    assert out.texts[0].split() == right.split()


def test_trace_fidelity_reaches_the_reward():
    lin = SearchformerLinearization()
    tok = make_tokenizer(TASK, lin)
    rec = record(lin, PROBLEMS[0])
    good = rec["completion"]
    lines = good.split("\n")
    bad = "\n".join(lines[:2] + ["create 12 13 c1 c9"] + lines[2:])  # a wrong h in a correct trace
    reward = RewardFunction(fidelity_weight=1.0)
    out = RolloutCollector(TASK, lin, tok, reward).collect(
        ScriptedSampler([ids(tok, good), ids(tok, bad)], [True, True]), [rec], group_size=2, max_new_tokens=999)
    fid_good, fid_bad = (o.fidelity for o in out.outcomes)
    assert fid_good == 1.0 and 0.0 < fid_bad < 1.0
    assert all(o.correct for o in out.outcomes)
    assert out.rewards == pytest.approx([2.0, 1.0 + fid_bad])


def test_all_invalid_batch_is_scored_not_crashed():
    lin = SolutionLinearization()
    tok = make_tokenizer(TASK, lin)
    recs = [record(lin, p) for p in PROBLEMS]
    junk = [ids(tok, "x y z"), [], ids(tok, "end end"), ids(tok, "(((")]
    out = RolloutCollector(TASK, lin, tok, RewardFunction()).collect(
        ScriptedSampler(junk, [True, True, False, False]), recs, group_size=2, max_new_tokens=3)
    assert out.rewards == [0.0] * 4
    stats = summarize(out)
    assert stats["reward/mean"] == 0.0 and stats["rollout/solve_rate"] == 0.0
    assert stats["rollout/zero_variance_frac"] == 1.0 and stats["response/truncated_frac"] == 0.5
    t = out.tensors(tok.pad_token_id)
    assert t.mask.sum(dim=1).tolist() == [len(junk[0]) + 1, 1, len(junk[2]), len(junk[3])]


def test_tensors_put_each_response_after_its_prompt():
    lin = SolutionLinearization()
    tok = make_tokenizer(TASK, lin)
    recs = [record(lin, p) for p in PROBLEMS]
    gen = [[7, 8], [9], [10, 11, 12], []]
    out = RolloutCollector(TASK, lin, tok, RewardFunction()).collect(
        ScriptedSampler(gen, [True, False, True, False]), recs, group_size=2, max_new_tokens=3)
    t = out.tensors(pad_id=0)
    for i in range(4):
        prompt = out.prompt_of(i)
        response = out.responses[i]
        r = len(response)
        assert t.input_ids[i, : len(prompt)].tolist() == prompt
        assert t.input_ids[i].gather(0, t.positions[i, :r]).tolist() == response
        assert t.mask[i].tolist() == [True] * r + [False] * (t.mask.shape[1] - r)
        assert int(t.seq_lens[i]) == len(prompt) + r
        assert t.input_ids[i, len(prompt) + r :].eq(0).all()
    part = t.rows(slice(1, 2))  # a micro-batch is cropped to its own lengths
    assert part.input_ids.shape == (1, len(out.prompt_of(1)) + 1) and part.mask.shape == (1, 1)
    md = out.table(rows=2)
    assert md.count("\n") == 3 and "\\|" not in md.split("\n", 2)[2] or True


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), per=st.integers(1, 7), world=st.integers(1, 3), seed=st.integers(0, 5))
def test_step_indices_cover_each_epoch_once(n, per, world, seed):
    steps = -(-2 * n // (per * world))  # at least two epochs of prompts
    stream = [i for s in range(steps) for r in range(world) for i in step_indices(n, per, s, r, world, seed)]
    for e in range(len(stream) // n):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))  # a permutation per epoch
    assert step_indices(n, per, 3, 1 % world, world, seed) == step_indices(n, per, 3, 1 % world, world, seed)


def test_step_seeds_are_pure_and_distinct():
    assert step_seed(0, 5, 1) == step_seed(0, 5, 1)
    seeds = {step_seed(0, s, r, k) for s in range(20) for r in range(3) for k in ("rollout", "torch")}
    assert len(seeds) == 120 and all(0 <= x < 2**31 for x in seeds)
    with pytest.raises(ValueError, match="no training records"):
        step_indices(0, 4, 0)


def test_reward_tensor_is_prompt_major():
    lin = SolutionLinearization()
    tok = make_tokenizer(TASK, lin)
    recs = [record(lin, p) for p in PROBLEMS]
    right0 = ids(tok, "answer\n" + "\n".join(TASK.solution(PROBLEMS[0])) + "\nend")
    right1 = ids(tok, "answer\n" + "\n".join(TASK.solution(PROBLEMS[1])) + "\nend")
    # prompt 0's samples come first: [right for 0, junk, junk, right for 1]
    out = RolloutCollector(TASK, lin, tok, RewardFunction()).collect(
        ScriptedSampler([right0, [5], [5], right1], [True] * 4), recs, group_size=2, max_new_tokens=40)
    assert torch.equal(out.reward_tensor(), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert out.record_of(3) is recs[1]
