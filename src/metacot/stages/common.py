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

from metacot.config import CONF_DIR, build, config_hash, plain
from metacot.errors import BadValue, user_input


def trace_engine(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """(task, search, linearization) built from their groups. Every stage calls this first, so the
    options of every stage in the config (sft, eval, algo, reward, rl) are checked here, before any
    work: a bad `rl.steps` fails a pipeline before datagen and SFT, not after them. So does an
    `eval.force_mode` the format cannot honour. So is a local model directory (`model=pretrained
    model.path=...`): its tokenizer becomes the dataset's, and a wrong path should be named as the
    model's, not as `data.tokenizer.path` (which defaults to it)."""
    lin = build(cfg.linearization)
    model = build(cfg.model) if cfg.get("model") is not None else None
    if hasattr(model, "directory"):
        with user_input():
            model.directory()
    for group in STAGE_OPTION_GROUPS:
        if cfg.get(group) is not None:
            options = build(cfg[group])
            if group == "eval":
                from metacot.eval.evaluator import check_force_mode

                with user_input():
                    check_force_mode(lin, options.force_mode)
                search_config_names(options.behaviour)
    return build(cfg.task), build(cfg.search), lin


def search_config_names(names: Iterable[str]) -> list[str]:
    """`names` (e.g. `eval.behaviour`), checked to be `conf/search/<name>.yaml` options."""
    search_dir = CONF_DIR / "search"
    available = sorted(p.stem for p in search_dir.glob("*.yaml"))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BadValue(f"eval.behaviour names unknown search algorithms {unknown}: use names of "
                       f"{search_dir}/<name>.yaml, i.e. any of {available} (or eval.behaviour=[] to turn it off)")
    return list(names)


STAGE_OPTION_GROUPS = ("sft", "eval", "algo", "reward", "rl")  # validated when built, side-effect free


VERSIONED_LOGGERS = ("TensorBoardLogger", "CSVLogger")  # loggers whose `version` is a directory name


def stage_logger(cfg: DictConfig, stage: str) -> Any:
    """The `logger=` group's logger for `stage`, under the run directory. TensorBoard (and CSV) logs
    go to `<run_dir>/tensorboard/<stage>` rather than `version_<n>`, so a pipeline's sft, eval, rl
    and eval_rl logs are told apart by name; a rerun in the same directory gets `<stage>_2`, ..."""
    target = str(cfg.logger.get("_target_", ""))
    if not target.endswith(VERSIONED_LOGGERS):
        return build(cfg.logger, save_dir=str(cfg.paths.run_dir))
    root = Path(cfg.paths.run_dir) / str(cfg.logger.get("name") or "")
    version, k = stage, 1
    while (root / version).exists():
        k += 1
        version = f"{stage}_{k}"
    return build(cfg.logger, save_dir=str(cfg.paths.run_dir), version=version)


def stage_run_dir(cfg: DictConfig, name: str) -> Path:
    """Where a stage writes its run-directory files (metrics.json, problems.json, passk.png): the run
    directory for the run's own stage (`stage=eval`, `stage=rl`) and for a pipeline's `eval` stage;
    `<run_dir>/<name>/` for the other stages of a pipeline (`pipeline_rl`'s `rl` and `eval_rl`), so no
    stage overwrites another's files."""
    run_dir = Path(cfg.paths.run_dir)
    own = cfg.get("stage") is not None and str(cfg.stage.get("name", "")) == name
    return run_dir if own or name == "eval" else run_dir / name


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
    """For a "model not found" error: the same task/search/format/model trained with other data,
    model or SFT settings or seeds (their `<artifact>/hf` exists), as text to append, or "" when none."""
    prefix = "-".join(str(n) for n in (cfg.task.name, cfg.search.name, cfg.linearization.name, cfg.model.name))
    found = sorted(p.parent for p in Path(cfg.paths.experiments_dir).glob(f"{prefix}-*/{artifact}/hf/config.json"))
    if not found:
        return ""
    lines = "\n".join(f"    {p}" for p in found[:5]) + (f"\n    ... ({len(found) - 5} more)" if len(found) > 5 else "")
    return ("\nThe same task/search/format/model was trained with other settings (the experiment key hashes "
            "the task/search/format options, the data.* options (split sizes included), the model and sft.* "
            "options and the seed, so pass the same ones, or point at one with init_from=/ckpt=):"
            f"\n{lines}")
