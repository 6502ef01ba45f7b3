"""Helpers the stages share: building the trace-engine objects and the artifact paths.

Artifacts of an experiment live in `${paths.experiments_dir}/<key>` where the key names the task,
search, linearization and model and hashes the options that shape the data and the trained model
(model config, SFT recipe and budget, seed) — so
`stage=rl search=astar` finds what `stage=sft search=astar` wrote, with no extra arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from metacot.config import build, config_hash, plain


def trace_engine(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """(task, search, linearization) built from their groups; bad eval options, or an
    `eval.force_mode` the format cannot honour, fail here, before any work."""
    lin = build(cfg.linearization)
    if "eval" in cfg:  # every stage checks the eval options before any work (a pipeline evaluates last)
        from metacot.eval.evaluator import check_force_mode

        check_force_mode(lin, build(cfg.eval).force_mode)
    return build(cfg.task), build(cfg.search), lin


def new_token_budget(tokenizer: Any, records: Iterable[dict[str, Any]], context: int) -> int:
    """Twice the longest training completion (+ eos), within the context left after the longest
    prompt: room to search longer than the reference, without decoding runaway loops for long.
    The default decode budget of RL rollouts, SFT validation and evaluation (first 2,000 records)."""
    sample = list(islice(records, 2000))
    prompts = tokenizer([r["prompt"] for r in sample], add_special_tokens=False)["input_ids"]
    completions = tokenizer([r["completion"] for r in sample], add_special_tokens=False)["input_ids"]
    room = context - 1 - max(len(p) for p in prompts)
    return max(1, min(room, 2 * max(len(c) + 1 for c in completions)))


def eval_options(cfg: DictConfig, tokenizer: Any, train: Iterable[dict[str, Any]]) -> Any:
    """`cfg.eval` built, its `max_new_tokens: null` resolved to `new_token_budget` of the training
    records (`train` may be a lazy iterator: it is read only then)."""
    from dataclasses import replace

    options = build(cfg.eval)
    if options.max_new_tokens is None:
        options = replace(options, max_new_tokens=new_token_budget(tokenizer, train, int(cfg.data.max_tokens)))
    return options


def data_key_parts(cfg: DictConfig) -> list[Any]:
    """What shapes a dataset: the task, search and format options and the data options."""
    return [plain(cfg.task), plain(cfg.search), plain(cfg.linearization), plain(cfg.data)]


# SFT options that shape the trained model (and so the experiment's artifacts); logging,
# validation, checkpoint cadence and resume policy do not.
SFT_KEY_OPTIONS = ("lr", "min_lr_ratio", "warmup_steps", "max_steps", "train_tokens", "batch_tokens", "grad_accum",
                   "clip_grad_norm", "weight_decay", "betas", "eps", "packing", "pack_width", "loss_on_prompt",
                   "seed")


def training_key_parts(cfg: DictConfig) -> list[Any]:
    """What shapes the SFT model beyond the data: the model, the SFT recipe and the seed (so seed
    and budget sweeps never share, or resume, each other's checkpoints)."""
    sft = plain(cfg.sft) if cfg.get("sft") is not None else {}
    return [plain(cfg.model), {k: sft.get(k) for k in SFT_KEY_OPTIONS}, int(cfg.get("seed", 0))]


def experiment_key(cfg: DictConfig) -> str:
    names = [cfg.task.name, cfg.search.name, cfg.linearization.name, cfg.model.name]
    digest = config_hash(*data_key_parts(cfg), *training_key_parts(cfg), length=8)
    return "-".join(str(n) for n in names) + "-" + digest


def experiment_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.experiments_dir) / experiment_key(cfg)


def other_trainings(cfg: DictConfig, artifact: str = "sft") -> str:
    """For a "model not found" error: the same task/search/format/model trained with other SFT
    settings or seeds (their `<artifact>/hf` exists), as text to append, or "" when none."""
    prefix = "-".join(str(n) for n in (cfg.task.name, cfg.search.name, cfg.linearization.name, cfg.model.name))
    found = sorted(p.parent for p in Path(cfg.paths.experiments_dir).glob(f"{prefix}-*/{artifact}/hf/config.json"))
    if not found:
        return ""
    lines = "\n".join(f"    {p}" for p in found[:5]) + (f"\n    ... ({len(found) - 5} more)" if len(found) > 5 else "")
    return ("\nThe same task/search/format/model was trained with other SFT settings or seed (the experiment "
            "key hashes the sft.* options and seed, so pass the same ones, or point at one with "
            f"init_from=/ckpt=):\n{lines}")
