"""The CUDA-graph decode path without the graphs (CPU): `StaticLlama` steps equal a full forward,
and `GraphDecoder`'s loop (buckets, span buckets, stop checks every `sync_every` steps, dropping
finished rows into smaller buckets, weight refresh between calls) gives exactly the eager
Sampler's tokens, greedy and seeded sampling alike."""

from collections import Counter

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from metacot.generation import Sampler, cuda_graph
from metacot.generation.cache import make_cache
from metacot.generation.cuda_graph import GraphDecoder, bucket, compute_dtype, span_for
from metacot.generation.static_decode import StaticLlama
from metacot.models import GPT2Factory, LlamaFactory
from tests.unit.test_sampler import reference_greedy

PAD, EOS = 0, 2
PROMPTS = [[1, 5, 9], [1, 7], [1, 12, 30, 8, 44, 9, 3, 17, 25], [1], [1, 40, 41, 42, 43, 6], [1, 9, 9, 9]] * 3
STEPS = 20


def tokenizer(n_words: int = 60) -> PreTrainedTokenizerFast:
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    """A random tiny Llama; the large init scale keeps greedy paths varied (no near-ties)."""
    torch.manual_seed(seed)
    args = {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "init_std": 0.3} | kw
    return LlamaFactory(**args).build(tokenizer(), max_seq_len=128).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def small_buckets(monkeypatch):
    """Span buckets of 8 slots (not 128) so these short decodes cross several of them."""
    monkeypatch.setattr(cuda_graph, "MIN_SPAN", 8)
    monkeypatch.setattr(cuda_graph, "CAPACITY_STEP", 8)


@pytest.fixture(scope="module")
def model():
    return llama()


@pytest.fixture(scope="module")
def case(model):
    """(eos, expected): an eos id the model emits at varied steps, and the reference decode under it."""
    free = [reference_greedy(model, p, STEPS, eos=-1)[0] for p in PROMPTS[:6]]
    for eos in sorted({t for run in free for t in run}):
        stops = {run.index(eos) if eos in run else STEPS for run in free}
        if len(stops) >= 4 and STEPS in stops:
            return eos, [reference_greedy(model, p, STEPS, eos) for p in PROMPTS]
    pytest.fail("no token stops the rows at varied steps; change the seed")


def graph_sampler(model, eos, **kw) -> Sampler:
    return Sampler(model, eos, PAD, cuda_graphs=True, **kw)


def test_buckets_by_hand():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65, 256)] == [1, 2, 4, 4, 8, 8, 16, 64, 128, 256]
    cuda_graph.MIN_SPAN = 128
    assert span_for(0, 512) == 128 and span_for(127, 512) == 128  # writes slot `length`: needs length + 1
    assert span_for(128, 512) == 256 and span_for(300, 512) == 512 and span_for(300, 384) == 384


def test_auto_is_off_on_cpu_and_for_other_architectures(model, monkeypatch):
    assert not Sampler(model, EOS, PAD).uses_cuda_graphs()  # CPU default: unchanged (fast path)
    assert Sampler(model, EOS, PAD).uses_fast_path()
    assert graph_sampler(model, EOS).uses_cuda_graphs()
    torch.manual_seed(0)
    gpt2 = GPT2Factory(d_model=32, n_layers=2, n_heads=4, init_std=0.3).build(tokenizer(), 64).eval()
    monkeypatch.setattr(GraphDecoder, "decode", lambda *a: pytest.fail("graph path used for GPT-2"))
    sampler = graph_sampler(gpt2, EOS)
    assert not sampler.uses_cuda_graphs()
    assert sampler.generate(PROMPTS[:6], 5).tokens == [
        reference_greedy(gpt2, p, 5, EOS)[0] for p in PROMPTS[:6]
    ]


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_steps_equal_full_forward(kv_heads):
    """Each step's logits equal a no-cache forward of the whole sequence, for every real row, while
    the span grows (8, 16) and rows 3..3 are a scratch row of the 4-row bucket."""
    model = llama(n_kv_heads=kv_heads)
    prompts = [[1, 5, 9, 11, 3], [1, 7], [1, 30, 8]]
    width, steps = 5, 9
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    valid = ids != PAD
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        cache = make_cache(model, width)
        eager = Sampler(model, EOS, PAD)
        prefill = eager._forward(ids, eager._prefill_mask(valid), positions, cache)
        state = StaticLlama(model, 4, 16, torch.float32)
        state.prefill(
            [la.keys for la in cache.layers], [la.values for la in cache.layers], valid, positions[:, -1]
        )
        seqs, logits = [list(p) for p in prompts], prefill
        for step in range(steps):
            token = logits.argmax(-1)
            for s, t in zip(seqs, token.tolist(), strict=True):
                s.append(t)
            state.token[:3] = token
            logits = state.advance(4, span_for(width + step, 16))[:3]
            for i, s in enumerate(seqs):
                torch.testing.assert_close(
                    logits[i], model(torch.tensor([s])).logits[0, -1], atol=1e-4, rtol=1e-4
                )
        assert int(state.length) == width + steps


@pytest.mark.parametrize("batch_size", [None, 5, 1])
@pytest.mark.parametrize("sync_every", [1, 3, 16])
def test_greedy_equals_reference_and_eager_sampler(model, case, batch_size, sync_every):
    eos, expected = case
    sampler = graph_sampler(model, eos, sync_every=sync_every)
    out = sampler.generate(PROMPTS, STEPS, batch_size=batch_size)
    assert out.tokens == [t for t, _ in expected]
    assert out.finished == [d for _, d in expected]
    assert out == Sampler(model, eos, PAD).generate(PROMPTS, STEPS, batch_size=batch_size)
    spans = {span for _, span in sampler.graph_decoder.steps}
    assert spans >= {16, 32}  # prompts up to 9 tokens + 20 new: 32 slots
    if batch_size is None and sync_every < STEPS:  # 18 rows: a 32-row bucket, then smaller ones
        assert len({rows for rows, _ in sampler.graph_decoder.steps}) >= 2


def test_finished_rows_move_to_smaller_buckets(model, case):
    """Stop checks every step: after each check the batch is the smallest power of two holding the
    unfinished rows, and the loop ends once every row has finished."""
    eos, expected = case
    sampler = graph_sampler(model, eos, sync_every=1)
    sampler.generate(PROMPTS, STEPS)
    stop = [len(t) if done else STEPS for t, done in expected]  # the step that samples a row's eos
    want = Counter()
    for step in range(STEPS - 1):  # each step but the last: check, then decode the next token
        active = sum(s > step for s in stop)
        if active == 0:
            break
        want[bucket(active)] += 1
    got = Counter()
    for (rows, _), n in sampler.graph_decoder.steps.items():
        got[rows] += n
    assert got == want and len(want) >= 2


def test_stops_early_only_at_checks(model, case):
    """All rows finished: the loop notices at the next check, not before, and the tokens do not change."""
    eos, expected = case
    stopping = [i for i, (t, done) in enumerate(expected) if done and len(t) < STEPS // 2]
    assert len({len(expected[i][0]) for i in stopping}) >= 2
    prompts = [PROMPTS[i] for i in stopping]
    last = max(len(expected[i][0]) for i in stopping)  # the step that samples the last eos
    for sync_every in (1, 4, 7, 64):
        sampler = graph_sampler(model, eos, sync_every=sync_every)
        out = sampler.generate(prompts, STEPS)
        assert out.tokens == [expected[i][0] for i in stopping] and all(out.finished)
        check = -(-(last + 1) // sync_every) * sync_every - 1  # the first check at or after that step
        assert sum(sampler.graph_decoder.steps.values()) == min(check, STEPS - 1)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_seeded_sampling_equals_eager_sampler(model, top_p):
    """8 rows (a full bucket) and eos ignored (no row dropped): the same random draws on both paths."""
    prompts = PROMPTS[:4]
    kw = dict(max_new_tokens=STEPS, num_samples=2, temperature=1.3, top_p=top_p, seed=7, ignore_eos=True)
    graph = graph_sampler(model, EOS).generate(prompts, **kw)
    assert graph == Sampler(model, EOS, PAD).generate(prompts, **kw)
    assert graph.tokens != graph_sampler(model, EOS).generate(prompts, **kw | {"seed": 8}).tokens


def test_tiny_top_p_is_greedy(model, case):
    eos, expected = case
    out = graph_sampler(model, eos).generate(
        PROMPTS, STEPS, num_samples=2, temperature=1.0, top_p=1e-6, seed=1
    )
    assert out.tokens == [t for t, _ in expected for _ in range(2)]


def test_state_is_reused_grown_and_refreshed_with_new_weights(case):
    """One sampler, several calls: the static state is kept while calls fit, grows when they do not,
    and every call decodes with the model's current weights (RL updates them in place)."""
    eos, _ = case
    model = llama()
    sampler = graph_sampler(model, eos)
    sampler.generate(PROMPTS[:4], 6)
    first = sampler.graph_decoder.state
    assert (first.rows, first.capacity) == (4, 16)
    sampler.generate(PROMPTS[:2], 4)
    assert sampler.graph_decoder.state is first
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    out = sampler.generate(PROMPTS, STEPS)
    assert sampler.graph_decoder.state is not first and sampler.graph_decoder.state.rows == 32
    assert out.tokens == [reference_greedy(model, p, STEPS, eos)[0] for p in PROMPTS]
    sampler.generate(PROMPTS[:3], 4)  # smaller again: kept
    assert sampler.graph_decoder.state.rows == 32


def test_compute_dtype_follows_the_model_on_cpu(model):
    assert compute_dtype(model, torch.device("cpu")) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # only CUDA autocast is followed
        assert compute_dtype(model, torch.device("cpu")) == torch.float32
