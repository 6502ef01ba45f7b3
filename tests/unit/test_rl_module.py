"""RLModule on a tiny Llama and an 8-word vocabulary: log-probs against a per-sequence reference,
gradients invariant to the micro-batch size (every objective), a real update moves the policy
toward the rewarded answer, an all-invalid batch changes nothing, the NaN guard, expert iteration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from metacot.modules.expert_iteration import ExpertIterationModule
from metacot.modules.rl import RLModule, RLOptions
from metacot.rl.objectives import (
    DAPOObjective,
    DrGRPOObjective,
    ExpertIterationObjective,
    GRPOObjective,
    PPOClipObjective,
    ReinforceObjective,
    ReinforcePPObjective,
    RLOOObjective,
)
from metacot.rl.rewards import RewardFunction
from metacot.rl.rollout import RolloutCollector
from metacot.rl.update import batch_logprobs, policy_gradient_pass, token_logprobs

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "a", "b", "c", "q"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_model(seed: int = 0, dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=True, attention_dropout=dropout)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


@dataclass
class Out:
    tokens: list[list[int]]
    finished: list[bool]


class TinySampler:
    """Plain ancestral sampling without a KV cache (a slow, obviously-correct test sampler); the G
    samples of a prompt decode together."""

    def __init__(self, model, eos_token_id=2):
        self.model, self.eos = model, eos_token_id

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, num_samples=1, temperature=1.0, top_p=1.0, seed=None,
                 batch_size=None):
        g = torch.Generator().manual_seed(seed or 0)
        tokens, finished = [], []
        for p in prompts:
            seqs = torch.tensor([p] * num_samples)
            done = torch.zeros(num_samples, dtype=torch.bool)
            outs = [[] for _ in range(num_samples)]
            for _ in range(max_new_tokens):
                logits = self.model(input_ids=seqs).logits[:, -1].float()
                nxt = torch.multinomial(torch.softmax(logits / max(temperature, 1e-6), -1), 1, generator=g)[:, 0]
                for i in range(num_samples):
                    if not done[i]:
                        if int(nxt[i]) == self.eos:
                            done[i] = True
                        else:
                            outs[i].append(int(nxt[i]))
                if done.all():
                    break
                seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            tokens += outs
            finished += done.tolist()
        return Out(tokens, finished)


class ByPrompt:
    """A sampler whose completions depend on the prompt only (not on a rank's or step's seed):
    multi-process runs (tests/slow) compare with one process on the same prompts."""

    def __init__(self, model):
        pass

    def generate(self, prompts, max_new_tokens, num_samples=1, **kwargs):
        tokens, finished = [], []
        for p in prompts:
            for j in range(num_samples):
                k = len(p) + j
                tokens.append([4 if k % 3 == 0 else 5] + [6] * (k % 2))
                finished.append(k % 4 != 0)
        return Out(tokens, finished)


@dataclass
class Result:
    correct: bool
    optimal: bool
    well_formed: bool
    valid_steps: int = 0
    total_steps: int = 0


def first_word_is_a(task, lin, record, text, tokens):
    """Fake verifier: the answer is right iff the completion starts with the word `a`."""
    words = text.split()
    ok = bool(words) and words[0] == "a"
    return Result(ok, ok, bool(words)), "correct" if ok else "wrong"


RECORDS = [{"id": i, "prompt": "q" + " q" * i, "problem": {}} for i in range(4)]


def collector(tok, score=first_word_is_a, reward=None):
    return RolloutCollector(None, None, tok, reward or RewardFunction(), score=score)


def scripted_rollout(tok, group_size=3):
    """A fixed batch of 2 prompts x G samples with mixed rewards and lengths."""
    gen = [[4, 5], [5], [4, 6, 6, 5], [6, 6], [4], [5, 5, 5]][: 2 * group_size]
    fin = [True, True, False, True, True, False][: 2 * group_size]
    prompts = [collector(tok).encode(r) for r in RECORDS[:2]]
    return collector(tok).score_samples(RECORDS[:2], prompts, group_size, gen, fin)


def test_token_logprobs_match_a_per_sequence_reference():
    tok, model = tiny_tokenizer(), tiny_model()
    rollout = scripted_rollout(tok)
    t = rollout.tensors(tok.pad_token_id)
    logp, ent = token_logprobs(model, t, temperature=0.7, entropy=True)
    for i, response in enumerate(rollout.responses):
        seq = torch.tensor([rollout.prompt_of(i) + response])
        logits = model(input_ids=seq).logits[0].float() / 0.7
        lp = torch.log_softmax(logits, -1)
        p = len(rollout.prompt_of(i))
        want = torch.stack([lp[p + j - 1, tok_id] for j, tok_id in enumerate(response)])
        assert torch.allclose(logp[i, : len(response)], want, atol=1e-5)
        want_ent = -(lp.exp() * lp).sum(-1)[p - 1 : p - 1 + len(response)]
        assert torch.allclose(ent[i, : len(response)], want_ent, atol=1e-5)
    assert torch.allclose(batch_logprobs(model, t, 2, 0.7)[t.mask], logp.detach()[t.mask], atol=1e-5)


OBJECTIVES = [
    GRPOObjective(group_size=3, kl_coef=0.1),
    DAPOObjective(group_size=3),
    DrGRPOObjective(group_size=3),
    RLOOObjective(group_size=3),
    ReinforceObjective(group_size=3, kl_coef=0.2, kl_mode="loss", kl_estimator="k2"),
    ReinforcePPObjective(group_size=3, kl_coef=0.1),
    PPOClipObjective(group_size=3, clip_eps=0.05),
]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: type(o).__name__)
def test_gradient_is_invariant_to_micro_batch_size(objective):
    tok, model, ref = tiny_tokenizer(), tiny_model(0), tiny_model(1)
    rollout = scripted_rollout(tok)
    t = rollout.tensors(tok.pad_token_id)
    old = batch_logprobs(model, t, 6) + 0.3 * torch.randn(t.mask.shape, generator=torch.Generator().manual_seed(0))
    ref_logp = batch_logprobs(ref, t, 6) if objective.kl_coef > 0 else None
    prep = objective.prepare(rollout.reward_tensor(), t.mask, old_logp=old, ref_logp=ref_logp, max_length=8)
    assert prep.advantages.abs().sum() > 0
    grads, stats = [], []
    for micro in (1, 2, 4, 6):
        model.zero_grad(set_to_none=True)
        stats.append(policy_gradient_pass(model, objective, t, prep.advantages, prep.mask, prep.norm, old,
                                          ref_logp, micro, temperature=1.0))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    for g, s in zip(grads[1:], stats[1:], strict=True):
        assert torch.allclose(g, grads[0], rtol=1e-4, atol=1e-7)
        assert s.keys() == stats[0].keys()
        for k in s:
            assert s[k] == pytest.approx(stats[0][k], rel=1e-4, abs=1e-7), k
    if isinstance(objective, PPOClipObjective):
        assert stats[0]["clip_frac_low"] > 0 and stats[0]["clip_frac_high"] > 0


def make_module(objective, options=None, score=first_word_is_a, reward=None, model=None, cls=RLModule):
    tok = tiny_tokenizer()
    model = model or tiny_model()
    opts = options or RLOptions(steps=4, prompts_per_step=4, lr=5e-2, micro_batch_size=12, eval_every=0,
                                eval_at_start=False, table_every=0)
    return cls(model, tok, objective, collector(tok, score, reward), RECORDS, opts, max_new_tokens=2,
               sampler_factory=lambda m: TinySampler(m))


def fit(module):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    return trainer


@torch.no_grad()
def prob_of_a(model) -> float:
    tok = tiny_tokenizer()
    ps = []
    for r in RECORDS:
        ids = collector(tok).encode(r)
        ps.append(torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)[4].item())
    return sum(ps) / len(ps)


@pytest.mark.parametrize("objective", [GRPOObjective(group_size=6, kl_coef=0.01), RLOOObjective(group_size=6)],
                         ids=["grpo", "rloo"])
def test_rl_update_moves_the_policy_toward_the_reward(objective):
    module = make_module(objective)
    before = prob_of_a(module.model)
    trainer = fit(module)
    after = prob_of_a(module.model)
    assert module.rl_step == 4 and trainer.global_step == 4
    assert (module.ref_model is not None) == (objective.kl_coef > 0)
    assert after > before + 0.2, (before, after)


def test_all_invalid_batch_changes_nothing_and_does_not_crash():
    def nothing_is_right(task, lin, record, text, tokens):
        return Result(False, False, False), "no answer"

    module = make_module(RLOOObjective(group_size=4), score=nothing_is_right)
    module.options.steps = 2
    start = [p.detach().clone() for p in module.model.parameters()]
    fit(module)
    assert module.rl_step == 2 and module.nan_skips == 0
    for a, b in zip(start, module.model.parameters(), strict=True):
        assert torch.equal(a, b)  # zero advantages -> zero gradient -> AdamW leaves weights alone


def test_nan_rewards_skip_the_step_then_stop_with_a_clear_error():
    class NaNReward(RewardFunction):
        def __call__(self, outcome):
            return math.nan, {"outcome": math.nan}

    module = make_module(ReinforceObjective(group_size=4, baseline=False), reward=NaNReward())
    module.options.max_nan_skips = 2
    start = [p.detach().clone() for p in module.model.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        fit(module)
    assert module.nan_skips == 3 and module.rl_step == 2  # two skipped steps went through, the third raised
    for a, b in zip(start, module.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_expert_iteration_trains_on_the_shortest_correct_sample_only():
    objective = ExpertIterationObjective(rounds=1, samples_per_problem=4, keep="shortest")
    module = make_module(objective, cls=ExpertIterationModule)
    module.options.steps = 1
    tok = module.tokenizer
    # problem 0: two correct ("a b", "a"), problem 1: none correct
    gen = [[4, 5], [4], [5], [6], [5], [6, 6], [5, 4], [6]]
    prompts = [module.collector.encode(r) for r in RECORDS[:2]]
    rollout = module.collector.score_samples(RECORDS[:2], prompts, 4, gen, [True] * 8)
    examples = module.select(rollout)
    assert [e[0] for e in examples] == [RECORDS[0]["prompt"]] and [e[1] for e in examples] == ["a"]
    module.options.sft_batch_size = 1
    module.options.lr = 1e-2

    class Fixed:
        def generate(self, *a, **k):
            return Out(gen, [True] * 8)

    module.sampler_factory = lambda m: Fixed()
    module.options.prompts_per_step = 2
    module.train_records = RECORDS[:2]
    ids = module.collector.encode(RECORDS[0])

    @torch.no_grad()
    def logp_answer():  # log p("a" </s> | prompt 0)
        seq = torch.tensor([ids + [4, 2]])
        lp = torch.log_softmax(module.model(input_ids=seq).logits[0].float(), -1)
        return float(lp[len(ids) - 1, 4] + lp[len(ids), 2])

    before = logp_answer()
    fit(module)
    assert logp_answer() > before + 0.5
    assert tok.decode([4]) == "a"


def test_time_budget_stops_after_the_step_with_a_final_eval():
    calls = []

    def fake_evaluate(model, tokenizer, task, lin, records, options, sampler=None):
        calls.append((len(records), options.n_problems, sampler is not None))
        return {"solve_rate": 0.5 if len(records) == 2 else 0.25}

    opts = RLOptions(steps=50, max_time_s=1e-6, prompts_per_step=2, micro_batch_size=12, eval_every=0,
                     table_every=0)
    module = make_module(RLOOObjective(group_size=2), options=opts)
    module.eval_sets = {"val": RECORDS[:2], "test_unseen": RECORDS[:3]}
    module.eval_options = {"n_problems": 7}
    module.evaluate_fn = fake_evaluate
    fit(module)
    assert module.rl_step == 1  # the budget ran out during the first step
    assert [h["step"] for h in module.eval_history] == [0, 1]  # before and after
    assert module.eval_history[-1]["metrics"] == {"val": {"solve_rate": 0.5}, "test_unseen": {"solve_rate": 0.25}}
    assert calls == [(2, 7, True), (3, 7, True)] * 2


def test_refill_replaces_zero_variance_groups_with_fresh_prompts():
    def odd_prompts_vary(task, lin, record, text, tokens):  # even ids: always right (no signal)
        ok = record["id"] % 2 == 0 or (bool(text.split()) and text.split()[0] == "a")
        return Result(ok, ok, True), "correct" if ok else "wrong"

    records = [{"id": i, "prompt": " ".join(["q"] * (i + 1)), "problem": {}} for i in range(12)]
    opts = RLOptions(prompts_per_step=4, eval_at_start=False)
    plain = make_module(RLOOObjective(group_size=6), options=opts, score=odd_prompts_vary)
    plain.train_records = records
    learn, sampled = plain.collect(0)
    assert learn is sampled and len(learn.records) == 4
    refill = make_module(RLOOObjective(group_size=6), options=RLOptions(prompts_per_step=4, refill_rounds=3),
                         score=odd_prompts_vary)
    refill.train_records = records
    learn, sampled = refill.collect(0)
    assert len(learn.records) == 4 and len(sampled.records) in (8, 12, 16)
    useful = learn.informative_groups()
    assert len(useful) > len(plain.collect(0)[0].informative_groups())
    assert useful == list(range(len(useful)))  # informative groups first
    assert all(r["id"] % 2 == 1 for r in learn.records[: len(useful)])
    assert learn.records[:4] == [sampled.records[i] for i in (sampled.informative_groups() + [
        i for i in range(len(sampled.records)) if i not in sampled.informative_groups()])[:4]]
    assert learn.rewards[:6] == sampled.rewards[sampled.informative_groups()[0] * 6:][:6]


def test_a_policy_loaded_in_eval_mode_trains_in_train_mode():
    """from_pretrained returns eval mode and Lightning keeps modes as it finds them: the policy must
    learn with its dropout on, while the frozen reference stays in eval mode."""
    module = make_module(GRPOObjective(group_size=4, kl_coef=0.1), model=tiny_model().eval())
    assert module.model.training and all(m.training for m in module.model.modules())
    assert module.ref_model is not None and not module.ref_model.training
