"""Tokens/s of metacot's Sampler vs transformers' `model.generate` on the same model, batch and lengths.

Both decode greedily for exactly --new-tokens steps (eos ignored by ours, suppressed in `generate`
with min_new_tokens), from identical random prompts; the median of --repeats timed runs is reported.
The Sampler runs twice: with its Llama fast path (`llama_decode`) and on the generic HF-forward path
(`fast_path=False`); ratios come from the same run, repeats interleaved. `--threads 1 2` repeats the
whole comparison for each CPU thread count.

    python scripts/bench_generation.py --model tiny --batch 32 --device cpu --threads 1 2
    python scripts/bench_generation.py --model small --batch 64 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, models
from torch.nn.attention import sdpa_kernel
from transformers import PreTrainedTokenizerFast

from metacot.generation import Sampler
from metacot.generation.sampler import DECODE_BACKENDS

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


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
    ap.add_argument("--model", default="tiny", choices=["tiny", "small", "base", "gpt2"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=1000, help="vocabulary size of the synthetic word tokenizer")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[None],
        help="torch.set_num_threads values (CPU), default: torch's",
    )
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    tok = word_tokenizer(args.vocab - 4)
    factory = load_factory(args.model)
    model = factory.build(tok, args.prompt_len + args.new_tokens)
    model = model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    prompts = torch.randint(4, len(tok), (args.batch, args.prompt_len))
    input_ids = prompts.to(device)
    mask = torch.ones_like(input_ids)
    sampler = Sampler(model, tok.eos_token_id, tok.pad_token_id)
    generic = Sampler(model, tok.eos_token_id, tok.pad_token_id, fast_path=False)
    results = {}

    def ours():
        results["ours"] = sampler.generate(
            prompts.tolist(), args.new_tokens, batch_size=args.batch, ignore_eos=True
        ).tokens

    def ours_generic():
        results["ours_generic"] = generic.generate(
            prompts.tolist(), args.new_tokens, batch_size=args.batch, ignore_eos=True
        ).tokens

    def generate():
        out = model.generate(
            input_ids,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        results["hf"] = out[:, args.prompt_len :].tolist()

    def hf():
        with torch.inference_mode():
            generate()

    def hf_restricted():  # generate with the SDPA backends our sampler uses on CUDA: isolates that effect
        with torch.inference_mode(), sdpa_kernel(DECODE_BACKENDS):
            generate()

    runs = {"hf": hf, "ours": ours, "ours_generic": ours_generic}
    if device.type == "cuda":
        runs["hf_restricted"] = hf_restricted
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        compare(args, model, device, runs, results, sampler.uses_fast_path())


def compare(args, model, device, runs, results, fast: bool) -> None:
    for fn in runs.values():  # warm-up (allocator, kernels, lazy init)
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    n_tokens = args.batch * args.new_tokens
    speed = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    same = sum(a == b for a, b in zip(results["ours"], results["hf"], strict=True))
    print(
        f"model={args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) device={device} "
        f"dtype={args.dtype} threads={torch.get_num_threads()} batch={args.batch} prompt_len={args.prompt_len} "
        f"new_tokens={args.new_tokens} repeats={args.repeats}"
    )
    print(f"transformers generate: {speed['hf']:10.0f} tok/s  runs(s)={[round(t, 3) for t in times['hf']]}")
    if "hf_restricted" in speed:
        print(
            f"generate, no cuDNN SDPA: {speed['hf_restricted']:8.0f} tok/s  runs(s)={[round(t, 3) for t in times['hf_restricted']]}"
        )
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
        f"   identical greedy outputs: {same}/{args.batch} vs generate, {same_generic}/{args.batch} vs generic"
    )


if __name__ == "__main__":
    main()
