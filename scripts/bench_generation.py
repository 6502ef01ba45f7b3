"""Tokens/s of metacot's Sampler vs transformers' `model.generate` on the same model, batch and lengths.

Both decode greedily from identical random prompts (eos ignored by ours, suppressed in `generate`
with min_new_tokens); the median of --repeats timed runs is reported.

CPU: the Sampler runs with its Llama fast path (`llama_decode`) and on the generic HF-forward path
(`fast_path=False`); ratios come from the same run, repeats interleaved. `--threads 1 2` repeats
the whole comparison for each CPU thread count. `--floor` also times the fast path's matmuls
alone (projections and lm head at the batch size, attention over the blocked cache at each length
of the run): their sum is what a decode step cannot go below on this CPU, so generate's step time
over it caps the speed-up any rewrite of the rest of the step could give.

CUDA (defaults: model=small and base, batch 64 and 256, bf16): the Sampler's CUDA-graph path, its
eager paths (generic HF forward; fast path) and `generate` (plain, and with the cuDNN SDPA backend
off). Host-bound paths are timed once on fewer tokens (--slow-tokens; their per-step cost barely
depends on the length, and the prefill's share makes them look slower by ~1/slow-tokens). The
profiler's sum of CUDA kernel time per decode step is the floor a decode step could reach.
Bar: CUDA graphs >= 20x `generate` for model=small at batch 64.

    python scripts/bench_generation.py --model tiny --batch 32 --device cpu --threads 1 2
    python scripts/bench_generation.py --model tiny --batch 32 --device cpu --threads 1 --floor
    python scripts/bench_generation.py --device cuda            # the GPU suite (~1 minute on an H100)
    python scripts/bench_generation.py --device cuda --quick    # a short run
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
import timeit
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, models
from torch.nn.attention import sdpa_kernel
from transformers import PreTrainedTokenizerFast

from metacot.generation import Sampler
from metacot.generation.cuda_graph import GraphDecoder
from metacot.generation.llama_decode import BLOCK, LlamaWeights
from metacot.generation.sampler import DECODE_BACKENDS

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
BAR = 20.0  # CUDA graphs vs generate, model=small, batch 64


def word_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def load_factory(option: str):
    """The `model=<option>` factory, built from its yaml without Hydra (a flat `_target_` + kwargs node)."""
    cfg = yaml.safe_load((CONF / f"{option}.yaml").read_text())
    module, cls = cfg.pop("_target_").rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**cfg)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        nargs="+",
        choices=["tiny", "small", "base", "gpt2"],
        help="default: tiny (CPU), small base (CUDA)",
    )
    ap.add_argument("--batch", nargs="+", type=int, help="default: 32 (CPU), 64 256 (CUDA)")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument(
        "--vocab", type=int, help="synthetic word vocabulary size; default 1000 (CPU), 512 (CUDA)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default float32 (CPU), bfloat16 (CUDA)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--slow-tokens", type=int, default=64, help="CUDA: new tokens of the host-bound runs (generate)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="CUDA: small only, batch 64, 64 new tokens, 1 repeat"
    )
    ap.add_argument("--json", help="CUDA: also write the table's rows to this JSON file")
    ap.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="CUDA: skip the profiler run (GPU kernel time per decode step)",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="CPU: also time the decode step's matmuls alone (its floor) and print the ratio they cap",
    )
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[None],
        help="torch.set_num_threads values (CPU), default: torch's",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.quick:
        args.model = args.model or ["small"]
        args.batch = args.batch or [64]
        args.new_tokens, args.repeats, args.slow_tokens = 64, 1, min(args.slow_tokens, 16)
    args.model = args.model or (["small", "base"] if gpu else ["tiny"])
    args.batch = args.batch or ([64, 256] if gpu else [32])
    args.vocab = args.vocab or (512 if gpu else 1000)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    rows = []
    for name in args.model:
        for batch in args.batch:
            if not gpu:
                cpu_compare(args, name, batch, device)
                continue
            try:
                rows.append(gpu_compare(args, name, batch, device))
            except Exception:  # one failing case (e.g. out of memory) must not hide the others
                traceback.print_exc()
                rows.append({"model": name, "batch": batch, "error": True})
            torch.cuda.empty_cache()
    if gpu:
        ok = summarize(rows)
        if args.json:
            meta = {
                "device": torch.cuda.get_device_name(device),
                "torch": torch.__version__,
                "dtype": args.dtype,
                "new_tokens": args.new_tokens,
                "prompt_len": args.prompt_len,
            }
            Path(args.json).write_text(json.dumps({**meta, "bar": BAR, "rows": rows}, indent=1))
        if not ok:
            raise SystemExit(1)  # a case failed or the bar was missed


def build(args, name: str, batch: int, device: torch.device):
    torch.manual_seed(0)
    tok = word_tokenizer(args.vocab - 4)
    model = load_factory(name).build(tok, args.prompt_len + args.new_tokens)
    model = model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    prompts = torch.randint(4, len(tok), (batch, args.prompt_len))
    return tok, model, prompts


def hf_generate(model, tok, input_ids, new_tokens: int, restricted: bool = False) -> list[list[int]]:
    """`model.generate`, greedy, exactly `new_tokens` tokens; `restricted`: the SDPA backends our sampler uses."""
    with torch.inference_mode(), sdpa_kernel(DECODE_BACKENDS) if restricted else nullcontext():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return out[:, input_ids.shape[1] :].tolist()


def cpu_compare(args, name: str, batch: int, device: torch.device) -> None:
    tok, model, prompts = build(args, name, batch, device)
    input_ids = prompts.to(device)
    sampler = Sampler(model, tok.eos_token_id, tok.pad_token_id)
    generic = Sampler(model, tok.eos_token_id, tok.pad_token_id, fast_path=False)
    results = {}

    def ours():
        results["ours"] = sampler.generate(
            prompts.tolist(), args.new_tokens, batch_size=batch, ignore_eos=True
        ).tokens

    def ours_generic():
        results["ours_generic"] = generic.generate(
            prompts.tolist(), args.new_tokens, batch_size=batch, ignore_eos=True
        ).tokens

    def hf():
        results["hf"] = hf_generate(model, tok, input_ids, args.new_tokens)

    runs = {"hf": hf, "ours": ours, "ours_generic": ours_generic}
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        speed = compare(args, name, batch, model, device, runs, results, sampler.uses_fast_path())
        if args.floor and sampler.uses_fast_path():
            floor = matmul_floor(model, batch, args.prompt_len, args.new_tokens)
            hf_step = 1e3 * batch / speed["hf"]
            print(
                f"floor: the step's matmuls alone take {floor['gemm']:.3f} (projections, lm head) + "
                f"{floor['attention']:.3f} (attention over the cache) = {floor['total']:.3f} ms/step; "
                f"ours {1e3 * batch / speed['ours']:.3f}, generate {hf_step:.3f} ms/step: "
                f"no decode step above those matmuls can beat generate by more than {hf_step / floor['total']:.2f}x"
            )


def compare(args, name, batch, model, device, runs, results, fast: bool) -> None:
    for fn in runs.values():  # warm-up (allocator, kernels, lazy init)
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            times[key].append(timed(fn, device))
    n_tokens = batch * args.new_tokens
    speed = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    same = sum(a == b for a, b in zip(results["ours"], results["hf"], strict=True))
    print(
        f"model={name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) device={device} "
        f"dtype={args.dtype} threads={torch.get_num_threads()} batch={batch} prompt_len={args.prompt_len} "
        f"new_tokens={args.new_tokens} repeats={args.repeats}"
    )
    print(f"transformers generate: {speed['hf']:10.0f} tok/s  runs(s)={[round(t, 3) for t in times['hf']]}")
    print(
        f"Sampler, generic path: {speed['ours_generic']:10.0f} tok/s  runs(s)={[round(t, 3) for t in times['ours_generic']]}"
    )
    print(
        f"metacot Sampler:       {speed['ours']:10.0f} tok/s  runs(s)={[round(t, 3) for t in times['ours']]}"
        f"  (fast path: {fast})"
    )
    same_generic = sum(a == b for a, b in zip(results["ours"], results["ours_generic"], strict=True))
    print(
        f"speed-up vs generate: {speed['ours'] / speed['hf']:.2f}x (generic path {speed['ours_generic'] / speed['hf']:.2f}x)"
        f"   identical greedy outputs: {same}/{batch} vs generate, {same_generic}/{batch} vs generic"
    )
    return speed


@torch.inference_mode()
def matmul_floor(model, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """ms per decode step of the fast path's matmuls alone (same weights, shapes and cache layout), averaged
    over the run's lengths: the time no Python or elementwise work is in. Best of 7 timings each."""
    w = LlamaWeights(model, prompt_len + new_tokens)
    dim, ff = w.embed.shape[1], w.step_layers[0][2].shape[1] // 2
    x, h = torch.randn(batch, dim), torch.randn(batch, ff)
    proj, gate_up = torch.empty(batch, w.step_layers[0][0].shape[1]), torch.empty(batch, 2 * ff)

    def best(fn, number: int) -> float:
        return 1e3 * min(timeit.repeat(fn, number=number, repeat=7)) / number

    def projections():
        for qkv, o, gu, down in w.step_layers:
            torch.mm(x, qkv, out=proj)
            torch.addmm(x, x, o)
            torch.mm(x, gu, out=gate_up)
            torch.addmm(x, h, down)
        x @ w.head_t

    rows, d = batch * w.n_kv, w.head_dim
    group = w.n_heads // w.n_kv
    blocks = -(-(prompt_len + new_tokens) // BLOCK)
    caches = [torch.randn(blocks, rows, BLOCK, d) for _ in range(2 * len(w.step_layers))]  # K, V per layer

    def attention(nb: int) -> float:
        q, scores = torch.randn(nb * rows, group, d), torch.empty(nb * rows, group, BLOCK)
        out = torch.empty(nb * rows, group, d)

        def run():
            for k, v in zip(caches[::2], caches[1::2], strict=True):
                torch.bmm(q, k[:nb].view(-1, BLOCK, d).transpose(1, 2), out=scores)
                torch.bmm(scores, v[:nb].view(-1, BLOCK, d), out=out)

        return best(run, 20)

    per_blocks = {nb: attention(nb) for nb in range(prompt_len // BLOCK + 1, blocks + 1)}
    lengths = range(prompt_len, prompt_len + new_tokens - 1)
    attn = sum(per_blocks[t // BLOCK + 1] for t in lengths) / len(lengths)
    gemm = best(projections, 100)
    return {"gemm": gemm, "attention": attn, "total": gemm + attn}


def gpu_compare(args, name: str, batch: int, device: torch.device) -> dict:
    """Every path on one (model, batch): tok/s, identical-output counts, per-step wall and GPU time."""
    tok, model, prompts = build(args, name, batch, device)
    input_ids, plist = prompts.to(device), prompts.tolist()
    eos, pad, new, slow = (
        tok.eos_token_id,
        tok.pad_token_id,
        args.new_tokens,
        min(args.slow_tokens, args.new_tokens),
    )
    graph = Sampler(model, eos, pad)
    assert graph.uses_cuda_graphs(), "the CUDA-graph path is not used for this model"
    eager = Sampler(model, eos, pad, cuda_graphs=False)
    fast = Sampler(model, eos, pad, cuda_graphs=False, fast_path=True)
    out = {}
    runs = {  # name: (fn, new tokens, timed runs)
        "graphs": (lambda: graph.generate(plist, new, ignore_eos=True).tokens, new, args.repeats),
        "eager": (lambda: eager.generate(plist, new, ignore_eos=True).tokens, new, 1),
        "eager_fast": (lambda: fast.generate(plist, new, ignore_eos=True).tokens, new, 1),
        "generate": (lambda: hf_generate(model, tok, input_ids, slow), slow, 1),
        "generate_no_cudnn": (lambda: hf_generate(model, tok, input_ids, slow, restricted=True), slow, 1),
    }
    speed = {}
    for key, (fn, n_new, repeats) in runs.items():
        if key.startswith("generate"):  # a short warm-up: these paths are slow
            hf_generate(model, tok, input_ids, 2, restricted=key.endswith("cudnn"))
        else:
            out[key] = fn()  # warm-up; the graphs are captured here
        times = []
        for _ in range(repeats):
            times.append(timed(lambda fn=fn, key=key: out.__setitem__(key, fn()), device))
        speed[key] = batch * n_new / statistics.median(times)
    row = {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": batch,
        "speed": speed,
        "step_ms": 1e3 * batch / speed["graphs"],  # wall time per decode step (prefill included)
        "gpu_step_ms": None,
        "same_eager": sum(a == b for a, b in zip(out["graphs"], out["eager"], strict=True)),
        "same_generate": sum(a[:slow] == b for a, b in zip(out["graphs"], out["generate"], strict=True)),
        "graphs_captured": len(graph.graph_decoder.graphs),
    }
    print(
        f"\nmodel={name} ({row['params']:.1f}M params) dtype={args.dtype} batch={batch} "
        f"prompt_len={args.prompt_len} new_tokens={new} (generate: {slow}) repeats={args.repeats} "
        f"{torch.cuda.get_device_name(device)}"
    )
    for key, label in [
        ("generate", "transformers generate"),
        ("generate_no_cudnn", "generate, no cuDNN SDPA"),
        ("eager", "Sampler, eager (HF fwd)"),
        ("eager_fast", "Sampler, eager fast path"),
        ("graphs", "Sampler, CUDA graphs"),
    ]:
        print(f"  {label:26s} {speed[key]:12,.0f} tok/s  {speed[key] / speed['generate']:8.1f}x generate")
    print(
        f"  identical greedy outputs: {row['same_eager']}/{batch} vs eager (all {new} tokens), "
        f"{row['same_generate']}/{batch} vs generate (first {slow} tokens; bf16 rounding differs between paths)",
        flush=True,
    )
    if args.profile:
        kernel_us, kernels = gpu_time(lambda: graph.generate(plist, new, ignore_eos=True))
        source = "graph replays"
        if not kernels:  # the profiler saw no kernels inside graph replays: the same kernels, uncaptured
            static = Sampler(model, eos, pad)
            static.graph_decoder = GraphDecoder(capture=False)
            kernel_us, kernels = gpu_time(lambda: static.generate(plist, new, ignore_eos=True))
            source = "the same step run without a graph"
        if kernels:
            row["gpu_step_ms"] = kernel_us / 1e3 / new
            print(
                f"  decode step: {row['step_ms']:.3f} ms wall vs {row['gpu_step_ms']:.3f} ms of GPU kernels "
                f"(the floor; {kernels / new:.0f} kernels/step, profiled on {source}), "
                f"{row['graphs_captured']} graphs captured",
                flush=True,
            )
    return row


def gpu_time(fn) -> tuple[float, int]:
    """(microseconds of GPU work, number of kernels) that `fn` runs, from torch.profiler; (0, 0) if unavailable."""
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        kernels = [e for e in events if not e.name.startswith(("Memcpy", "Memset"))]
        return float(sum(e.device_time_total for e in events)), len(kernels)
    except Exception:
        traceback.print_exc()
        return 0.0, 0


def summarize(rows: list[dict]) -> bool:
    """Print the table and the bar; False when a case failed or the bar was missed."""
    print(
        "\n| model | batch | generate tok/s | eager tok/s | graphs tok/s | graphs / generate | step ms (wall) | GPU ms/step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['model']} | {r['batch']} | failed (see the traceback above) | | | | | |")
            continue
        s = r["speed"]
        print(
            f"| {r['model']} | {r['batch']} | {s['generate']:,.0f} | {s['eager']:,.0f} | {s['graphs']:,.0f} | "
            f"{s['graphs'] / s['generate']:.1f}x | {r['step_ms']:.3f} | "
            f"{'n/a' if r['gpu_step_ms'] is None else format(r['gpu_step_ms'], '.3f')} |"
        )
    ok = not any(r.get("error") for r in rows)
    bar = [r for r in rows if r["model"] == "small" and r["batch"] == 64 and not r.get("error")]
    if bar:
        ratio = bar[0]["speed"]["graphs"] / bar[0]["speed"]["generate"]
        ok = ok and ratio >= BAR
        print(
            f"\nBAR (CUDA graphs >= {BAR:.0f}x generate, model=small, batch 64): {'PASS' if ratio >= BAR else 'FAIL'} ({ratio:.1f}x)"
        )
    elif any(r["model"] == "small" and r["batch"] == 64 for r in rows):
        print("\nBAR (model=small, batch 64): FAIL (the run failed)")
    return ok


if __name__ == "__main__":
    main()
