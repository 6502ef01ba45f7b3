"""The CPU Llama decode step (`llama_decode.LlamaDecoder`): token-for-token equal to `model.generate`
and to a no-cache reference over ragged prompts, batch sizes and lengths that cross many cache
blocks (BLOCK is shrunk to 4 for most tests), with eos stops and dropped rows; seeded sampling
reproducible; the real-valued RoPE (dtypes without complex numbers) equal to the complex one."""

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from metacot.generation import Sampler, llama_decode
from metacot.generation.llama_decode import LlamaDecoder, LlamaWeights
from metacot.models import LlamaFactory
from tests.unit.test_sampler import reference_greedy

PAD, EOS = 0, 2
PROMPTS = [
    [1, 5, 9],
    [1, 7],
    [1, 12, 30, 8, 44, 9, 3, 17, 25],
    [1],
    [1, 40, 41, 42, 43, 6],
    [1, 9, 9, 9, 9, 9, 9],
]
STEPS = 22


def tokenizer(n_words: int = 60) -> PreTrainedTokenizerFast:
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def llama(n_kv_heads: int = 2, tie: bool = True, dtype=torch.float32) -> LlamaForCausalLM:
    """A random tiny Llama; the large init scale keeps greedy paths varied (no near-ties)."""
    torch.manual_seed(0)
    fac = LlamaFactory(
        d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=64, init_std=0.3, tie_embeddings=tie
    )
    return fac.build(tokenizer(), max_seq_len=128).to(dtype).eval()


MODELS = {"gqa": llama(), "mha_untied": llama(n_kv_heads=4, tie=False)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_blocks(monkeypatch):
    """Cache blocks of 4 slots, so short decodes cross many block boundaries."""
    monkeypatch.setattr(llama_decode, "BLOCK", 4)


def hf_generate(model, prompts, steps):
    """`model.generate`, greedy, left-padded: (tokens cut before the first eos, stopped at eos) per prompt."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=(ids != PAD).long(),
            max_new_tokens=steps,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    rows = [
        row + [PAD] * (steps - len(row)) for row in out[:, width:].tolist()
    ]  # generate stops when all rows did
    return [(row[: row.index(EOS)], True) if EOS in row else (row, False) for row in rows]


def fast_sampler(model, monkeypatch, **kwargs) -> tuple[Sampler, list]:
    """A Sampler on the fast path, and a list that records every decode step it takes."""
    steps, step = [], LlamaDecoder.step
    monkeypatch.setattr(LlamaDecoder, "step", lambda self, *a: steps.append(1) or step(self, *a))
    sampler = Sampler(model, EOS, PAD, **kwargs)
    assert sampler.uses_fast_path()
    return sampler, steps


@pytest.mark.parametrize("variant", list(MODELS))
@pytest.mark.parametrize("batch_size", [1, 4, None])
def test_greedy_equals_generate(variant, batch_size, small_blocks, monkeypatch):
    model = MODELS[variant]
    sampler, steps = fast_sampler(model, monkeypatch)
    out = sampler.generate(PROMPTS, max_new_tokens=STEPS, batch_size=batch_size)
    assert steps, "the fast path did not run"
    expected = hf_generate(model, PROMPTS, STEPS)
    assert out.tokens == [t for t, _ in expected]
    assert out.finished == [d for _, d in expected]
    assert max(len(t) for t in out.tokens) == STEPS  # some rows run through every block


def test_greedy_equals_generate_with_full_blocks(monkeypatch):
    """The real block size, a 33-row batch of ragged prompts up to 35 tokens, 40 new tokens: 3 blocks."""
    model = MODELS["gqa"]
    gen = torch.Generator().manual_seed(1)
    prompts = [
        [1] + torch.randint(4, 64, (int(n),), generator=gen).tolist()
        for n in torch.randint(0, 35, (33,), generator=gen)
    ]
    sampler, steps = fast_sampler(model, monkeypatch)
    out = sampler.generate(prompts, max_new_tokens=40)
    expected = hf_generate(model, prompts, 40)
    assert out.tokens == [t for t, _ in expected]
    assert out.finished == [d for _, d in expected]
    assert len(steps) == 39  # some rows run to the end


def pick_eos(model, prompts, steps):
    """An "eos" id the model emits mid-way for some prompts but not others: varied stop lengths."""
    runs = [reference_greedy(model, p, steps, eos=-1)[0] for p in prompts]
    for run in runs:
        for cand in run[2:]:
            lengths = {r.index(cand) if cand in r else steps for r in runs}
            if len(lengths) >= 4:
                return cand
    pytest.fail("no token gives varied stop lengths; change the seed")


@pytest.mark.parametrize("compact_fraction", [0.01, 0.5])
def test_eos_stops_and_dropped_rows_across_blocks(compact_fraction, small_blocks, monkeypatch):
    model = MODELS["mha_untied"]
    prompts = PROMPTS * 2
    eos = pick_eos(model, prompts, STEPS)
    expected = [reference_greedy(model, p, STEPS, eos) for p in prompts]
    selects, select = [], LlamaDecoder.select
    monkeypatch.setattr(
        LlamaDecoder, "select", lambda self, keep: selects.append(len(keep)) or select(self, keep)
    )
    sampler = Sampler(model, eos, PAD, compact_fraction=compact_fraction)
    out = sampler.generate(prompts, max_new_tokens=STEPS)
    assert selects, "no finished rows were dropped"
    assert out.tokens == [t for t, _ in expected]
    assert out.finished == [d for _, d in expected]


def test_seeded_sampling_is_reproducible_and_equals_generic(small_blocks):
    model = MODELS["gqa"]
    kwargs = dict(max_new_tokens=STEPS, num_samples=3, temperature=1.0, top_p=0.9, batch_size=5)
    fast = Sampler(model, EOS, PAD)
    first, again = fast.generate(PROMPTS, seed=3, **kwargs), fast.generate(PROMPTS, seed=3, **kwargs)
    assert first == again
    assert fast.generate(PROMPTS, seed=4, **kwargs).tokens != first.tokens
    assert Sampler(model, EOS, PAD, fast_path=False).generate(PROMPTS, seed=3, **kwargs) == first
    assert [len(t) for t in first.tokens] != [STEPS] * len(first.tokens)  # eos stops happen


def decode_logits(model, prompts, steps, poison: bool = False):
    """(fast-step logits, full-forward logits) per step for greedy continuations of left-padded `prompts`;
    `poison` fills the cache blocks not yet reached with NaN (they must never be read unmasked)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    valid = ids != PAD
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    got, want = [], []
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=valid.long(), position_ids=positions, use_cache=True)
        cache = out.past_key_values
        dec = LlamaDecoder(
            LlamaWeights(model, width + steps),
            [la.keys for la in cache.layers],
            [la.values for la in cache.layers],
            valid,
            width + steps,
        )
        if poison:
            dec.keys[:, dec.zeroed :] = float("nan")
            dec.values[:, dec.zeroed :] = float("nan")
        seqs, logits, position = [list(p) for p in prompts], out.logits[:, -1], positions[:, -1]
        for _ in range(steps):
            token = logits.argmax(-1)
            for s, t in zip(seqs, token.tolist(), strict=True):
                s.append(t)
            position = position + 1
            logits = dec.step(token, position)
            got.append(logits)
            want.append(torch.stack([model(torch.tensor([s])).logits[0, -1] for s in seqs]))
    return torch.stack(got), torch.stack(want)


PAD_PROMPTS = [[1, 5, 9, 11, 3], [1, 7], [1, 30, 8]]


@pytest.mark.parametrize("poison", [False, True])
def test_step_logits_equal_full_forward(poison, small_blocks):
    got, want = decode_logits(MODELS["gqa"], PAD_PROMPTS, 10, poison=poison)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_real_rope_equals_complex_rope(small_blocks, monkeypatch):
    """The rotation for dtypes without complex numbers (bf16, fp16), checked in float32."""
    monkeypatch.setattr(llama_decode, "COMPLEX_ROPE", ())
    got, want = decode_logits(MODELS["mha_untied"], PAD_PROMPTS, 8)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.bfloat16, 0.15)])
def test_other_dtypes(dtype, tol, small_blocks):
    """float64 takes the complex rotation (complex128); bfloat16 the real one, in bf16 throughout."""
    got, want = decode_logits(llama(dtype=dtype), PAD_PROMPTS, 6)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


def test_step_ignores_autocast(small_blocks):
    """Under CPU autocast (Lightning's bf16-mixed) the step still computes in the weights' dtype."""
    model = MODELS["gqa"]
    ids = torch.tensor([[PAD] * (5 - len(p)) + p for p in PAD_PROMPTS])
    valid = ids != PAD
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        cache = model(
            input_ids=ids, attention_mask=valid.long(), position_ids=positions, use_cache=True
        ).past_key_values
        keys, values = [la.keys for la in cache.layers], [la.values for la in cache.layers]
        plain, mixed = (LlamaDecoder(LlamaWeights(model, 12), keys, values, valid, 12) for _ in range(2))
        token, position = torch.tensor([5, 6, 7]), positions[:, -1]
        for _ in range(6):
            position = position + 1
            want = plain.step(token, position)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = mixed.step(token, position)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=0, rtol=0)
            token = want.argmax(-1)
