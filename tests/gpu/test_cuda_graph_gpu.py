"""CUDA-graph decoding on the GPU (`metacot.generation.cuda_graph`), tiny and small Llamas:

- replayed graphs give the same logits as the same static step run without capture, step by step,
  across span buckets and after finished rows are dropped into a smaller bucket;
- greedy output equals the eager Sampler's (`cuda_graphs=False`) in fp32, for batch sizes that hit
  several row buckets; in bf16 (and under bf16 autocast) each token is the full forward's argmax up
  to rounding (teacher forcing);
- sampling is seeded-reproducible, stops exactly at eos, and graphs are captured once and reused.
"""

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from metacot.generation import Sampler, cuda_graph
from metacot.generation.cache import make_cache
from metacot.generation.cuda_graph import GraphDecoder, bucket, span_for
from metacot.models import LlamaFactory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PAD, EOS = 0, 2
PROMPTS = [[1, 5, 9], [1, 7], [1, 12, 30, 8, 44, 9, 3, 17, 25], [1], [1, 40, 41, 42, 43, 6], [1, 9, 9, 9]] * 3
STEPS = 40
SIZES = {  # conf/model/tiny.yaml (with grouped kv heads) and conf/model/small.yaml
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384),
    "small": dict(d_model=512, n_layers=8, n_heads=8, d_ff=1408),
}


@pytest.fixture(autouse=True)
def setup(monkeypatch):
    """Exact fp32 matmuls (no TF32) and span buckets of 16 slots so short decodes cross several."""
    monkeypatch.setattr(cuda_graph, "MIN_SPAN", 16)
    monkeypatch.setattr(cuda_graph, "CAPACITY_STEP", 16)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(precision)


def build(kind: str, dtype: torch.dtype, init_std: float = 0.2):
    """A random Llama; init_std 0.2 keeps fp32 greedy paths free of near-ties (but bf16 chaotic)."""
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaFactory(**SIZES[kind], init_std=init_std).build(tok, max_seq_len=128)
    return model.to("cuda", dtype).eval()


def pick_eos(model) -> int:
    """A token the greedy decode emits at varied steps: rows stop at different times."""
    out = Sampler(model, -1, PAD, cuda_graphs=False).generate(PROMPTS[:6], STEPS).tokens
    for eos in sorted({t for run in out for t in run}):
        if len({run.index(eos) if eos in run else STEPS for run in out}) >= 3:
            return eos
    pytest.fail("no token stops the rows at varied steps; change the seed")


@pytest.mark.parametrize("kind", list(SIZES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replays_equal_uncaptured_steps(kind, dtype):
    model = build(kind, dtype)
    n, width, steps = len(PROMPTS), max(map(len, PROMPTS)), STEPS
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS], device="cuda")
    valid = ids != PAD
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        eager_sampler = Sampler(model, EOS, PAD)
        cache = make_cache(model, width)
        logits = eager_sampler._forward(ids, eager_sampler._prefill_mask(valid), positions, cache)
        kv = [la.keys for la in cache.layers], [la.values for la in cache.layers]
        graph, eager = GraphDecoder(capture=True), GraphDecoder(capture=False)
        for dec in (graph, eager):
            dec.prepare(model, n, width + steps, dtype).prefill(*kv, valid, positions[:, -1])
        b, length = bucket(n), width
        token = torch.nn.functional.pad(logits.argmax(-1), (0, b - n))
        for step in range(steps):
            if step == steps // 2:  # drop every other row: a smaller bucket from here on
                keep = torch.arange(0, n, 2, device="cuda")
                for dec in (graph, eager):
                    dec.state.keep(keep, length)
                b = bucket(len(keep))
                token = torch.nn.functional.pad(token[keep], (0, b - len(keep)))
            outs = []
            for dec in (graph, eager):
                dec.state.token[:b].copy_(token)
                outs.append(dec.run(b, span_for(length, dec.state.capacity)).float().clone())
            scale = outs[1].abs().max() * (1e-4 if dtype == torch.float32 else 2e-2)
            torch.testing.assert_close(outs[0], outs[1], atol=scale, rtol=0)  # a wrong buffer is off by O(1)
            token = outs[1].argmax(-1)
            length += 1
        assert len(graph.graphs) >= 4 and set(graph.graphs) == set(graph.steps)


@pytest.mark.parametrize("kind", list(SIZES))
@pytest.mark.parametrize("batch_size", [None, 5, 1])
def test_greedy_equals_eager_sampler_fp32(kind, batch_size):
    model = build(kind, torch.float32)
    eos = pick_eos(model)
    sampler = Sampler(model, eos, PAD, sync_every=4)
    assert sampler.uses_cuda_graphs()  # the default on CUDA
    out = sampler.generate(PROMPTS, STEPS, batch_size=batch_size)
    eager = Sampler(model, eos, PAD, cuda_graphs=False).generate(PROMPTS, STEPS, batch_size=batch_size)
    assert out == eager
    assert any(out.finished) and not all(out.finished)
    rows = {r for r, _ in sampler.graph_decoder.steps}
    assert rows >= {None: {32}, 5: {8, 4}, 1: {1}}[batch_size]  # 18 rows; chunks 5, 5, 5, 3; chunks of 1


@pytest.mark.parametrize("kind", list(SIZES))
@pytest.mark.parametrize("mode", ["bf16", "autocast"])
def test_greedy_is_argmax_bf16(kind, mode):
    """bf16 rounds differently with and without a cache: each chosen token must be the full
    forward's argmax up to a rounding margin. `autocast`: fp32 weights under bf16 autocast (as in
    Lightning's bf16-mixed RL rollouts), decoded in bf16. The default init scale: with a large one a
    random model is chaotic in bf16 (its own full forward is then 30% off the fp32 one)."""
    model = build(kind, torch.bfloat16 if mode == "bf16" else torch.float32, init_std=0.02)
    ctx = (
        torch.autocast("cuda", torch.bfloat16)
        if mode == "autocast"
        else torch.autocast("cuda", enabled=False)
    )
    with ctx:
        sampler = Sampler(model, EOS, PAD)
        out = sampler.generate(PROMPTS, STEPS, batch_size=8, ignore_eos=True)
        assert sampler.graph_decoder.state.dtype == torch.bfloat16
        with torch.no_grad():
            for prompt, toks in zip(PROMPTS, out.tokens, strict=True):
                assert len(toks) == STEPS
                logits = model(torch.tensor([prompt + toks], device="cuda")).logits[0].float()
                logits = logits[len(prompt) - 1 : len(prompt) - 1 + STEPS]
                chosen = logits.gather(1, torch.tensor(toks, device="cuda")[:, None])[:, 0]
                gap = logits.max(dim=1).values - chosen
                assert bool((gap <= 0.05 * logits.abs().max(dim=1).values + 1e-3).all()), gap


@pytest.mark.parametrize("kind", list(SIZES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_stops_at_eos_and_is_reproducible(kind, dtype):
    """16 rows (a full bucket) and no stop check before the end (sync_every > steps): the random
    draws are those of an eos-free run, so each row must be that run cut at its first eos."""
    model = build(kind, dtype)
    prompts = PROMPTS[:4]
    kw = dict(max_new_tokens=STEPS, num_samples=4, temperature=1.0, top_p=0.9, seed=3)
    free = Sampler(model, EOS, PAD, sync_every=STEPS + 1).generate(prompts, ignore_eos=True, **kw)
    counts = torch.bincount(torch.tensor(free.tokens).flatten())
    eos = int(counts.argmax())  # the most frequent token: most rows stop early
    sampler = Sampler(model, eos, PAD, sync_every=STEPS + 1)
    out = sampler.generate(prompts, **kw)
    for toks, done, run in zip(out.tokens, out.finished, free.tokens, strict=True):
        assert done == (eos in run)
        assert toks == (run[: run.index(eos)] if done else run)
    assert any(out.finished)
    graphs = dict(sampler.graph_decoder.graphs)
    again = sampler.generate(prompts, **kw)
    assert again == out
    assert all(sampler.graph_decoder.graphs[k] is g for k, g in graphs.items())  # replayed, not recaptured
    other = Sampler(model, eos, PAD).generate(prompts, **kw | {"seed": 4})  # default stop checks
    assert other.tokens != out.tokens
    for toks, done in zip(other.tokens, other.finished, strict=True):
        assert eos not in toks and len(toks) <= STEPS and (done or len(toks) == STEPS)
        assert all(0 <= t < model.config.vocab_size for t in toks)
