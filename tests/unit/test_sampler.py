"""Sampler: token-for-token equal to a slow no-cache greedy decode, eos handling, sampling laws,
and the Llama fast path (`llama_decode`) equal to the generic HF-forward path."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from metacot.generation import Sampler, pick_tokens, top_p_filter
from metacot.generation.llama_decode import LlamaDecoder, LlamaWeights, fast_path_problem
from metacot.models import GPT2Factory, LlamaFactory

PAD, EOS = 0, 2


def make_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build(kind: str, n_words: int = 60, **llama):
    """Random tiny models; a large init scale keeps greedy paths varied, dropout makes train mode visible."""
    torch.manual_seed(0)
    tok = make_tokenizer(n_words)
    if kind == "llama":
        fac = LlamaFactory(
            **{"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "dropout": 0.3}
            | {"init_std": 0.3}
            | llama
        )
    else:
        fac = GPT2Factory(d_model=32, n_layers=2, n_heads=4, dropout=0.3, init_std=0.3)
    return fac.build(tok, max_seq_len=64).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spinning makes
    them many times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return build(request.param)


def reference_greedy(model, prompt, max_new_tokens, eos):
    """The obviously-correct decoder: one full forward over the whole sequence per new token."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == eos:
                return seq[len(prompt) :], True
            seq.append(nxt)
    return seq[len(prompt) :], False


PROMPTS = [[1, 5, 9], [1, 7], [1, 12, 30, 8, 44, 9, 3, 17, 25], [1], [1, 40, 41, 42, 43, 6], [1, 9, 9, 9]]


def pick_eos(model, prompts, steps):
    """An "eos" id the model emits mid-way for some prompts but not others: varied stop lengths by construction."""
    runs = [reference_greedy(model, p, steps, eos=-1)[0] for p in prompts]
    for cand in (runs[0][steps // 2], runs[2][1], runs[4][3]):
        lengths = {run.index(cand) if cand in run else steps for run in runs}
        if len(lengths) >= 3:
            return cand
    pytest.fail("no token gives varied stop lengths; change the seed")


STEPS = 14


@pytest.fixture(scope="module")
def case(model):
    """(eos, expected): an eos by construction and the reference decode of PROMPTS under it."""
    eos = pick_eos(model, PROMPTS, STEPS)
    expected = [reference_greedy(model, p, STEPS, eos) for p in PROMPTS]
    assert any(done for _, done in expected) and not all(done for _, done in expected)
    return eos, expected


@pytest.mark.parametrize(
    "batch_size, compact_fraction, sync_every",
    [(1, 0.25, None), (4, 0.25, None), (None, 0.25, None), (4, 0.01, None), (None, 1.0, None), (4, 0.01, 3)],
)
def test_greedy_equals_reference(model, case, batch_size, compact_fraction, sync_every):
    eos, expected = case
    sampler = Sampler(
        model, eos_token_id=eos, pad_token_id=PAD, compact_fraction=compact_fraction, sync_every=sync_every
    )
    out = sampler.generate(PROMPTS, max_new_tokens=STEPS, batch_size=batch_size)
    assert out.tokens == [t for t, _ in expected]
    assert out.finished == [d for _, d in expected]
    assert all(eos not in t for t in out.tokens)


@settings(max_examples=8, deadline=None)
@given(
    prompts=st.lists(st.lists(st.integers(1, 63), min_size=1, max_size=10), min_size=1, max_size=5),
    steps=st.integers(0, 8),
    batch_size=st.integers(1, 6),
)
def test_greedy_equals_reference_fuzz(prompts, steps, batch_size):
    model = FUZZ_MODEL
    expected = [reference_greedy(model, p, steps, EOS) for p in prompts]
    out = Sampler(model, EOS, PAD).generate(prompts, max_new_tokens=steps, batch_size=batch_size)
    assert out.tokens == [t for t, _ in expected]
    assert out.finished == [d for _, d in expected]


FUZZ_MODEL = build("llama")


def test_train_mode_is_switched_off_and_restored(model):
    expected = [reference_greedy(model, p, 10, EOS)[0] for p in PROMPTS]
    model.train()
    try:
        out = Sampler(model, EOS, PAD).generate(PROMPTS, max_new_tokens=10)
        assert model.training
    finally:
        model.eval()
    assert out.tokens == expected


def test_num_samples_are_prompt_major(model):
    prompts = PROMPTS[:3]
    greedy = [reference_greedy(model, p, 6, EOS)[0] for p in prompts]
    sampler = Sampler(model, EOS, PAD)
    out = sampler.generate(prompts, max_new_tokens=6, num_samples=3)
    assert out.tokens == [g for g in greedy for _ in range(3)]
    # Sampling with a vanishing nucleus keeps only the argmax: the sampling path, same answers.
    out = sampler.generate(
        prompts, max_new_tokens=6, num_samples=3, temperature=1.0, top_p=1e-6, seed=3, batch_size=2
    )
    assert out.tokens == [g for g in greedy for _ in range(3)]
    assert len(out.finished) == 9


def test_seed_determinism(model):
    sampler = Sampler(model, EOS, PAD)
    kwargs = dict(max_new_tokens=12, num_samples=4, temperature=1.5, top_p=0.95, batch_size=5)
    a = sampler.generate(PROMPTS, seed=7, **kwargs)
    b = sampler.generate(PROMPTS, seed=7, **kwargs)
    c = sampler.generate(PROMPTS, seed=8, **kwargs)
    assert a == b
    assert a.tokens != c.tokens
    assert len({tuple(t) for t in a.tokens[:4]}) > 1  # samples of one prompt differ


def test_ignore_eos_runs_every_step(model):
    out = Sampler(model, EOS, PAD).generate(PROMPTS, max_new_tokens=9, ignore_eos=True)
    assert all(len(t) == 9 for t in out.tokens) and not any(out.finished)
    ref = [reference_greedy(model, p, 9, eos=-1)[0] for p in PROMPTS]
    assert out.tokens == ref


def test_uniform_model_samples_uniformly():
    """Zero final-norm weights make every logit 0: first tokens must be uniform over the vocabulary."""
    model = build("llama", n_words=6)  # V = 10
    with torch.no_grad():
        model.model.norm.weight.zero_()
    n = 4000
    out = Sampler(model, EOS, PAD).generate(
        [[1, 4]], max_new_tokens=1, num_samples=n, temperature=1.0, seed=0
    )
    counts = torch.zeros(10)
    for toks, done in zip(out.tokens, out.finished, strict=True):
        counts[EOS if done else toks[0]] += 1
    assert torch.all((counts / n - 0.1).abs() < 0.02), counts  # ~4.2 standard deviations


def test_pick_tokens_distribution():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p.log().expand(40000, 4)
    g = torch.Generator().manual_seed(0)

    def freq(**kw):
        return torch.bincount(pick_tokens(logits, generator=g, **kw), minlength=4).float() / 40000

    torch.testing.assert_close(freq(temperature=1.0), p, atol=0.012, rtol=0)
    hot = p.sqrt() / p.sqrt().sum()  # temperature 2 flattens: p^(1/2)
    torch.testing.assert_close(freq(temperature=2.0), hot, atol=0.012, rtol=0)
    nucleus = torch.tensor([0.625, 0.375, 0.0, 0.0])  # 0.5 + 0.3 >= 0.7: two tokens, renormalised
    torch.testing.assert_close(freq(temperature=1.0, top_p=0.7), nucleus, atol=0.012, rtol=0)
    assert torch.equal(pick_tokens(logits[:3]), torch.zeros(3, dtype=torch.long))


def test_top_p_filter_by_hand():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])
    kept = top_p_filter(probs, 0.6)
    assert torch.equal(kept, torch.tensor([[0.0, 0.6, 0.0], [0.25, 0.0, 0.5]]))
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_bad_arguments(model):
    sampler = Sampler(model, EOS, PAD)
    with pytest.raises(ValueError, match="at least one token"):
        sampler.generate([[1], []], max_new_tokens=3)
    with pytest.raises(ValueError, match="top_p"):
        sampler.generate([[1]], max_new_tokens=3, temperature=1.0, top_p=0.0)
    assert sampler.generate([], max_new_tokens=3).tokens == []
    assert sampler.generate([[1, 2]], max_new_tokens=0).tokens == [[]]


def test_learned_positions_limit_is_a_clear_error():
    model = build("gpt2")
    with pytest.raises(ValueError, match="64 positions"):
        Sampler(model, EOS, PAD).generate([[1] * 60], max_new_tokens=5)


# --- the Llama fast path -------------------------------------------------------------------------


def llama_with(**config):
    """A tiny random Llama built from a config with `config` overrides (what a checkpoint on disk could hold)."""
    torch.manual_seed(0)
    fac = LlamaFactory(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.3)
    cfg = fac.config(make_tokenizer(60), max_seq_len=64)
    for key, value in config.items():
        setattr(cfg, key, value)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


VARIANTS = {  # tiny Llamas the fast path must reproduce exactly
    "gqa": {},
    "mha_untied": {"num_key_value_heads": 4, "tie_word_embeddings": False},
    "linear_rope": {"rope_parameters": {"rope_type": "linear", "rope_theta": 100.0, "factor": 2.0}},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_path_equals_reference_and_generic(variant, monkeypatch):
    model = llama_with(**VARIANTS[variant])
    steps = []
    step = LlamaDecoder.step
    monkeypatch.setattr(LlamaDecoder, "step", lambda self, *a: steps.append(1) or step(self, *a))
    expected = [reference_greedy(model, p, 12, EOS) for p in PROMPTS]
    fast = Sampler(model, EOS, PAD).generate(PROMPTS, max_new_tokens=12, batch_size=4)
    assert steps, "the fast path did not run"
    assert fast.tokens == [t for t, _ in expected]
    assert fast.finished == [d for _, d in expected]
    n_steps = len(steps)
    generic = Sampler(model, EOS, PAD, fast_path=False).generate(PROMPTS, max_new_tokens=12, batch_size=4)
    assert len(steps) == n_steps  # fast_path=False never touches it
    assert generic == fast


def test_fast_step_logits_match_full_forward():
    """Each decode step's logits equal a full no-cache forward over the whole (left-padded) sequence."""
    model = llama_with(**VARIANTS["mha_untied"])
    prompts = [[1, 5, 9, 11, 3], [1, 7], [1, 30, 8]]
    width, steps = 5, 6
    input_ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    valid = input_ids != PAD
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=valid.long(), position_ids=positions, use_cache=True)
        cache = out.past_key_values
        weights = LlamaWeights(model, width + steps)
        dec = LlamaDecoder(
            weights,
            [la.keys for la in cache.layers],
            [la.values for la in cache.layers],
            valid,
            width + steps,
        )
        seqs = [list(p) for p in prompts]
        logits, position = out.logits[:, -1], positions[:, -1]
        for _ in range(steps):
            token = logits.argmax(-1)
            for s, t in zip(seqs, token.tolist(), strict=True):
                s.append(t)
            position = position + 1
            logits = dec.step(token, position)
            for i, s in enumerate(seqs):
                full = model(torch.tensor([s])).logits[0, -1]
                torch.testing.assert_close(logits[i], full, atol=1e-4, rtol=1e-4)


@settings(max_examples=8, deadline=None)
@given(
    prompts=st.lists(st.lists(st.integers(1, 63), min_size=1, max_size=10), min_size=1, max_size=6),
    steps=st.integers(1, 10),
    batch_size=st.integers(1, 6),
    num_samples=st.integers(1, 3),
    compact_fraction=st.sampled_from([0.01, 0.5, 1.0]),
)
def test_fast_equals_generic_fuzz(prompts, steps, batch_size, num_samples, compact_fraction):
    """Greedy and seeded sampling: same tokens on both paths (same logits up to rounding, same random draws)."""
    kwargs = dict(max_new_tokens=steps, batch_size=batch_size, num_samples=num_samples)
    outs = []
    for fast_path in (True, False):
        sampler = Sampler(FUZZ_MODEL, EOS, PAD, compact_fraction=compact_fraction, fast_path=fast_path)
        outs.append(
            (
                sampler.generate(prompts, **kwargs),
                sampler.generate(prompts, temperature=1.0, seed=5, **kwargs),
            )
        )
    assert outs[0] == outs[1]


UNSUPPORTED = {
    "dynamic_rope": {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}},
    "attention_bias": {"attention_bias": True},
    "mlp_bias": {"mlp_bias": True},
    "gelu": {"hidden_act": "gelu"},
}


@pytest.mark.parametrize("variant", list(UNSUPPORTED))
def test_unsupported_llama_configs_fall_back(variant, monkeypatch):
    model = llama_with(**UNSUPPORTED[variant])
    assert fast_path_problem(model) is not None
    assert not Sampler(model, EOS, PAD).uses_fast_path()
    monkeypatch.setattr(LlamaDecoder, "step", lambda *a: pytest.fail("fast path used"))
    out = Sampler(model, EOS, PAD).generate(PROMPTS, max_new_tokens=6, batch_size=4)
    assert out.tokens == [reference_greedy(model, p, 6, EOS)[0] for p in PROMPTS]


def test_fast_path_only_for_llama(model, monkeypatch):
    monkeypatch.setattr(LlamaDecoder, "step", lambda *a: pytest.fail("fast path used"))
    is_llama = type(model).__name__ == "LlamaForCausalLM"
    assert Sampler(model, EOS, PAD).uses_fast_path() == is_llama
    assert not Sampler(model, EOS, PAD, fast_path=False).uses_fast_path()
    out = Sampler(model, EOS, PAD, fast_path=False).generate(PROMPTS, max_new_tokens=5)
    assert out.tokens == [reference_greedy(model, p, 5, EOS)[0] for p in PROMPTS]
    if not is_llama:  # GPT-2 falls back to the generic path even when the fast path is asked for
        assert Sampler(model, EOS, PAD).generate(PROMPTS, max_new_tokens=5) == out


def test_buffer_layer_crop_matches_dynamic_layer():
    from transformers.cache_utils import DynamicLayer

    from metacot.generation.cache import BufferLayer

    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    ours, ref = BufferLayer(capacity=8), DynamicLayer()
    for layer in (ours, ref):
        layer.update(k, v)
        layer.crop(-2)
    assert ours.get_seq_length() == 3 and torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)
    ours.update(k[:, :, :1], v[:, :, :1])  # appends after the cropped length
    assert torch.equal(ours.keys[:, :, 3], k[:, :, 0])
    with pytest.raises(ValueError, match="negative"):
        ours.crop(2)
