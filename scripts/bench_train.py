"""Training throughput: metacot's SFT LightningModule under Lightning vs a plain PyTorch loop.

Both arms train the same model (`conf/model/<option>.yaml`) from the same initial weights on the
same synthetic packed batches (random ids, a few examples per row, per-example position ids and
the collator's shifted targets), with the same loss, AdamW, warmup-cosine schedule, clipping and
precision. The Lightning arm is what `stage=sft` gives users: `SFTModule` + the `trainer=cpu|gpu`
factory + the stage's Trainer arguments and TensorBoard logger, no progress bar, no checkpoints.
The plain arm is a nanoGPT-style loop that reads its metrics every `log_every_n_steps` steps.

Each repetition fits each arm for `--warmup` + `--steps` steps and times the last `--steps`; arms
alternate (plain first, then Lightning first, ...) so load drift on a shared machine hits both;
medians and the Lightning/plain tokens/s ratio come from the same run. MFU = tokens/s x
`metacot.models.flops_per_token` / the card's dense bf16 peak.

    python scripts/bench_train.py                                   # CPU, tiny, eager (~2-3 min)
    python scripts/bench_train.py --compile on
    python scripts/bench_train.py --device cuda --model base --seq 1024 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tokenizers import Tokenizer, models
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from metacot.data.collate import collate_rows
from metacot.models import flops_per_token, num_parameters
from metacot.models.common import ATTENTION_CHOICES, attention, training_attention
from metacot.modules.optim import WarmupCosine, build_optimizer, clip_gradients
from metacot.modules.sft import SFTConfig, SFTModule, peak_bf16_flops, token_loss_sum
from metacot.modules.trainer import TrainerFactory

CONF = Path(__file__).resolve().parents[1] / "conf"
RATIO_BAR = {"cpu": 0.95, "cuda": 0.97}
MFU_BAR = 0.35  # model=base, seq 1024, bf16 on a GPU


# --- building blocks ---------------------------------------------------------------------------
def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def option(group: str, name: str) -> dict[str, Any]:
    """`conf/<group>/<name>.yaml` as a dict (flat options only: no Hydra needed)."""
    path = CONF / group / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"no option {group}={name} ({path} does not exist)")
    return yaml.safe_load(path.read_text())


def instantiate(cfg: dict[str, Any], **overrides: Any) -> Any:
    cfg = {**cfg, **overrides}
    module, cls = cfg.pop("_target_").rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**cfg)


def build_model(name: str, tokenizer: PreTrainedTokenizerFast, seq: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return instantiate(option("model", name)).build(tokenizer, seq)


def sft_config(batch_tokens: int, max_steps: int, compile: bool = False, **overrides: Any) -> SFTConfig:
    """`conf/sft/default.yaml` (what users train with), resized for the benchmark."""
    cfg = option("sft", "default")
    cfg.update(seed=0, batch_tokens=batch_tokens, max_steps=max_steps, compile=compile, solve_rate_problems=0,
               export_hf=False, **overrides)
    return instantiate(cfg)


def trainer_factory(device: str, threads: int | None = None) -> TrainerFactory:
    """`trainer=cpu` or `trainer=gpu`, without the progress bar."""
    return instantiate(option("trainer", "gpu" if device == "cuda" else "cpu"), enable_progress_bar=False,
                       torch_threads=threads)


def synthetic_batches(n_batches: int, seq: int, batch_tokens: int, vocab_size: int, pad_id: int = 0,
                      bos_id: int = 1, seed: int = 0, max_examples: int = 6) -> list[dict[str, Any]]:
    """Packed batches of `batch_tokens // seq` rows of width `seq`: each row holds 2..`max_examples`
    random examples (`<s>` + ids, a short prompt without loss) and a little padding, collated by
    the SFT collator (per-example position ids, targets shifted within each example)."""
    if batch_tokens % seq or batch_tokens < seq:
        raise SystemExit(f"--batch-tokens {batch_tokens} must be a positive multiple of --seq {seq}")
    if seq < 16 * max_examples:
        raise SystemExit(f"--seq {seq} is too short for packed rows (>= {16 * max_examples})")
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        rows = []
        for _ in range(batch_tokens // seq):
            used = seq - int(rng.integers(0, seq // 32 + 1))
            k = int(rng.integers(2, max_examples + 1))
            cuts = np.sort(rng.choice(np.arange(1, used // 8), size=k - 1, replace=False)) * 8
            lengths = np.diff(np.concatenate([[0], cuts, [used]]))
            row = []
            for n in lengths:
                ids = rng.integers(4, vocab_size, size=int(n))
                ids[0] = bos_id
                row.append((ids, int(rng.integers(1, n // 4 + 2))))  # (ids, first target index)
            rows.append(row)
        batches.append(collate_rows(rows, pad_id, width=seq))
    return batches


def loader(batches: list[dict[str, Any]], device: str) -> DataLoader:
    """What the datamodule builds: ready-made batches, pinned when training on a GPU."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=0, pin_memory=device == "cuda")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class Run:
    """One timed fit: `seconds` and real `tokens` of the timed steps, every step's loss."""

    seconds: float
    cpu_seconds: float  # process CPU time over the same steps (less sensitive to a busy machine)
    tokens: int
    losses: list[float]
    logged: list[dict[str, float]] = field(default_factory=list)


class PlainArm:
    """The reference loop: forward under autocast, backward, clip, AdamW + schedule, zero_grad."""

    def __init__(self, model: torch.nn.Module, hp: SFTConfig, device: str, precision: str):
        if precision not in ("32-true", "bf16-mixed"):
            raise SystemExit(f"precision {precision!r}: the plain loop knows 32-true and bf16-mixed only")
        self.model, self.hp, self.device = model.to(device), hp, device
        self.autocast = precision == "bf16-mixed"
        # the attention SFTModule resolves from sft.attention (FlexAttention for packed rows on a GPU)
        self.attention = training_attention(model, hp.attention, torch.device(device).type, hp.packing)
        if hp.compile:
            self.model.compile()

    def run(self, batches: list[dict[str, Any]], warmup: int) -> Run:
        hp, model, device = self.hp, self.model, self.device
        optimizer = build_optimizer(model, hp.lr, hp.weight_decay, hp.betas, hp.eps, hp.fused_adamw)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(hp.warmup_steps, hp.max_steps, hp.min_lr_ratio))
        model.train()
        losses, logged, tokens, t0, c0 = [], [], 0, time.perf_counter(), time.process_time()
        for step, batch in enumerate(loader(batches, device)):
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=self.autocast):
                with attention(model, self.attention):
                    loss = token_loss_sum(model, batch) / max(1, batch["n_targets"])
            loss.backward()
            norm = clip_gradients(model, model.parameters(), hp.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            tokens += batch["n_tokens"] if step >= warmup else 0
            if (step + 1) % hp.log_every_n_steps == 0:  # what a logger reads: one sync per window
                logged.append({"loss": loss.item(), "grad_norm": norm.item(), "lr": scheduler.get_last_lr()[0]})
            if step == warmup - 1:  # the clock starts where the Lightning arm's does
                sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
        sync(device)
        return Run(time.perf_counter() - t0, time.process_time() - c0, tokens, [float(x) for x in losses], logged)


class StepTimer(L.Callback):
    """Times Lightning from the end of step `warmup` to the end of the last step (whole loop
    iterations: data, hooks, logging), and keeps every step's loss."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device = warmup, device
        self.losses: list[torch.Tensor] = []
        self.tokens, self.t0, self.t1, self.c0, self.c1 = 0, 0.0, 0.0, 0.0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(outputs["loss"])
        if batch_idx >= self.warmup:
            self.tokens += batch["n_tokens"]
        if batch_idx == self.warmup - 1:
            sync(self.device)
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        elif batch_idx == trainer.max_steps - 1:
            sync(self.device)
            self.t1, self.c1 = time.perf_counter(), time.process_time()


class LightningArm:
    """`SFTModule` fitted by the Trainer that `stage=sft` builds (same factory and arguments)."""

    def __init__(self, model: torch.nn.Module, hp: SFTConfig, factory: TrainerFactory, log_dir: str):
        self.module = SFTModule(model, hp, flops_per_token=flops_per_token(model, hp.pack_width or 0))
        self.hp, self.factory, self.log_dir = hp, factory, log_dir

    def run(self, batches: list[dict[str, Any]], warmup: int) -> Run:
        if not 1 <= warmup < len(batches):
            raise SystemExit(f"--warmup must be in [1, {len(batches)}) (the timer starts after it)")
        hp, device = self.hp, "cuda" if self.factory.accelerator == "gpu" else "cpu"
        timer = StepTimer(warmup, device)
        logger = TensorBoardLogger(save_dir=self.log_dir, name="tensorboard", default_hp_metric=False)
        trainer = self.factory.build(
            self.module.model, max_steps=len(batches), max_epochs=-1, max_time=hp.max_time,
            accumulate_grad_batches=hp.grad_accum, val_check_interval=hp.val_every_steps * hp.grad_accum,
            check_val_every_n_epoch=None, log_every_n_steps=hp.log_every_n_steps, limit_val_batches=0,
            callbacks=[timer], logger=logger, default_root_dir=self.log_dir,
            enable_checkpointing=False, enable_model_summary=False,
        )
        trainer.fit(self.module, train_dataloaders=loader(batches, device))
        logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
        return Run(timer.t1 - timer.t0, timer.c1 - timer.c0, timer.tokens, [float(x) for x in timer.losses],
                   [logged])


# --- the benchmark -----------------------------------------------------------------------------
def measure(args: argparse.Namespace, compiled: bool, batches: list[dict[str, Any]], tok: Any,
            log_dir: str) -> dict[str, Any]:
    n_steps = args.warmup + args.steps
    hp = sft_config(args.batch_tokens, n_steps, compile=compiled, pack_width=args.seq, attention=args.attn)
    model = build_model(args.model, tok, args.seq)
    factory = trainer_factory(args.device, args.threads)
    if factory.float32_matmul_precision:  # the factory sets it for Lightning: the same for both arms
        torch.set_float32_matmul_precision(factory.float32_matmul_precision)
    if args.threads:
        torch.set_num_threads(args.threads)
    plain = PlainArm(copy.deepcopy(model), hp, args.device, factory.precision)
    light = LightningArm(model, hp, factory, log_dir)
    arms = {"plain": plain, "lightning": light}
    runs: dict[str, list[Run]] = {"plain": [], "lightning": []}
    for rep in range(args.repeats):
        for name in (("plain", "lightning") if rep % 2 == 0 else ("lightning", "plain")):
            runs[name].append(arms[name].run(batches, args.warmup))
    rate = {k: statistics.median(r.tokens / r.seconds for r in v) for k, v in runs.items()}
    pairs = list(zip(runs["plain"], runs["lightning"], strict=True))  # adjacent in time: drift cancels
    ratio = statistics.median((lr.tokens / lr.seconds) / (p.tokens / p.seconds) for p, lr in pairs)
    cpu_ratio = statistics.median(p.cpu_seconds / lr.cpu_seconds for p, lr in pairs)
    fpt = flops_per_token(model, args.seq)
    peak = peak_bf16_flops(torch.cuda.get_device_name()) if args.device == "cuda" else None
    same = max(abs(a - b) for a, b in zip(runs["plain"][0].losses, runs["lightning"][0].losses, strict=True))
    return {
        "mode": "compiled" if compiled else "eager", "precision": factory.precision,
        "plain_tok_s": rate["plain"], "lightning_tok_s": rate["lightning"],
        "ratio": ratio, "ratio_of_medians": rate["lightning"] / rate["plain"], "cpu_time_ratio": cpu_ratio,
        "plain_mfu": rate["plain"] * fpt / peak if peak else None,
        "lightning_mfu": rate["lightning"] * fpt / peak if peak else None,
        "all_plain_tok_s": [r.tokens / r.seconds for r in runs["plain"]],
        "all_lightning_tok_s": [r.tokens / r.seconds for r in runs["lightning"]],
        "first_rep_max_loss_diff": same, "flops_per_token": fpt, "peak_flops": peak,
    }


def verdicts(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    out = []
    bar = RATIO_BAR["cuda" if args.device == "cuda" else "cpu"]
    for r in rows:
        out.append(f"ratio >= {bar} ({args.device}, {r['mode']}): {r['ratio']:.3f} "
                   f"{'PASS' if r['ratio'] >= bar else 'FAIL'}")
    if args.device == "cuda" and args.model == "base" and args.seq == 1024:
        for r in rows:
            mfu = r["lightning_mfu"]
            if r["precision"] != "bf16-mixed" or mfu is None:
                out.append(f"MFU >= {MFU_BAR:.0%} ({r['mode']}): not measurable ({r['precision']}, peak unknown?)")
            else:
                out.append(f"MFU >= {MFU_BAR:.0%} (base, seq 1024, bf16, {r['mode']}, Lightning): {mfu:.1%} "
                           f"{'PASS' if mfu >= MFU_BAR else 'FAIL'}")
    else:
        out.append(f"MFU >= {MFU_BAR:.0%}: applies to --device cuda --model base --seq 1024 only")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "small", "base", "gpt2"])
    ap.add_argument("--seq", type=int, default=1024, help="packed row width (tokens)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="tokens per batch (default 4096 CPU, 65536 GPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repetition (default 8 CPU, 30 GPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 5 GPU)")
    ap.add_argument("--repeats", type=int, default=None, help="repetitions per arm (default 4 CPU, 5 GPU)")
    ap.add_argument("--compile", default="auto", choices=["auto", "off", "on", "both"],
                    help="torch.compile the model: auto = both on a GPU, off on the CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--vocab", type=int, default=512, help="vocabulary size (metacot's are a few hundred)")
    ap.add_argument("--attn", default="auto", choices=list(ATTENTION_CHOICES),
                    help="sft.attention of both arms (default auto, as stage=sft: flex_attention for packed rows "
                    "on a GPU, sdpa otherwise). Packed rows (per-example positions) make transformers build "
                    "a block-diagonal mask: SDPA then cannot use its flash kernel, flex_attention skips the "
                    "blocks between examples (GPU only: it has no CPU backward)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible (torch.cuda.is_available() is False)")
    args.batch_tokens = args.batch_tokens or (65536 if gpu else 4096)
    args.steps = args.steps or (30 if gpu else 8)
    args.warmup = args.warmup or (5 if gpu else 2)
    args.repeats = args.repeats or (5 if gpu else 4)
    modes = {"auto": [False, True] if gpu else [False], "off": [False], "on": [True], "both": [False, True]}
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for noise in ("does not have many workers", r"isinstance\(treespec", "no `val_dataloader`",
                  "smaller than the logging interval"):
        warnings.filterwarnings("ignore", message=f".*{noise}")

    tok = word_tokenizer(args.vocab)
    batches = synthetic_batches(args.warmup + args.steps, args.seq, args.batch_tokens, args.vocab)
    fill = sum(b["n_tokens"] for b in batches) / sum(b["input_ids"].numel() for b in batches)
    probe = build_model(args.model, tok, args.seq)
    n_params = num_parameters(probe)
    try:
        args.attn_used = training_attention(probe, args.attn, args.device, packed=True)
    except ValueError as e:
        raise SystemExit(f"--attn {args.attn}: {e}") from None
    name = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device={name} torch={torch.__version__} model={args.model} ({n_params / 1e6:.2f}M params) "
          f"seq={args.seq} batch_tokens={args.batch_tokens} fill={fill:.3f} steps={args.steps} "
          f"warmup={args.warmup} repeats={args.repeats} attention={args.attn_used} (--attn {args.attn})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for compiled in modes[args.compile]:
            t0 = time.perf_counter()
            rows.append(measure(args, compiled, batches, tok, log_dir))
            print(f"  {rows[-1]['mode']}: {time.perf_counter() - t0:.0f}s, tok/s plain "
                  f"{[round(x) for x in rows[-1]['all_plain_tok_s']]} lightning "
                  f"{[round(x) for x in rows[-1]['all_lightning_tok_s']]}, ratio of medians "
                  f"{rows[-1]['ratio_of_medians']:.3f}, CPU-time ratio {rows[-1]['cpu_time_ratio']:.3f}, "
                  f"first-rep max |loss diff| {rows[-1]['first_rep_max_loss_diff']:.2e}", flush=True)

    print("\n| device | model | params | seq | batch tokens | attention | mode | plain tok/s | lightning tok/s | ratio "
          "| MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['lightning_mfu']:.1%} (plain {r['plain_mfu']:.1%})" if r["lightning_mfu"] is not None else "n/a"
        print(f"| {name} | {args.model} | {n_params / 1e6:.2f}M | {args.seq} | {args.batch_tokens} | {args.attn_used} | {r['mode']} "
              f"({r['precision']}) | {r['plain_tok_s']:,.0f} | {r['lightning_tok_s']:,.0f} | {r['ratio']:.3f} | {mfu} |")
    print("ratio: median over repetitions of lightning/plain tok/s of the two adjacent runs; MFU: Lightning arm")
    for line in verdicts(args, rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "args": vars(args),
                                               "params": n_params, "fill": fill, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
