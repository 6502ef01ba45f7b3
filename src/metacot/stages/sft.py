"""`stage=sft`: train the configured model on the experiment's traces, then export it.

Writes `<experiment>/sft/checkpoints/{last,best}.ckpt`, `<experiment>/sft/run_config.json` (what a
resume must match) and `<experiment>/sft/hf/` (model + tokenizer for `AutoModelForCausalLM`); TensorBoard
logs go to the run directory. `sft.resume=auto` continues from `last.ckpt` when there is one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from metacot.config import build, plain
from metacot.data.datamodule import LinearizationAugment, TraceDataModule
from metacot.errors import user_input
from metacot.linearization.base import Linearization
from metacot.locks import exclusive
from metacot.modules.callbacks import StopAndSave
from metacot.modules.export import export_hf, export_step, publish
from metacot.modules.sft import SFTConfig, SFTModule
from metacot.stages.base import Stage, Terminated
from metacot.stages.common import experiment_dir, experiment_key, new_token_budget, stage_logger, trace_engine

log = logging.getLogger(__name__)
RUN_CONFIG = "run_config.json"


class SFTStage(Stage):
    name = "sft"

    def run(self, cfg: DictConfig) -> dict[str, Any]:
        # One run at a time per experiment: the jobs of a parallel `algo=` sweep share the SFT model;
        # the first trains it, the others wait, then find it trained (metacot.locks).
        with exclusive(experiment_dir(cfg) / "sft" / "train.lock", f"experiment {experiment_key(cfg)} (SFT)"):
            return self.train(cfg)

    def train(self, cfg: DictConfig) -> dict[str, Any]:
        from metacot.data.records import content_digest, read_manifest, read_split
        from metacot.data.tokenizer import load_tokenizer
        from metacot.stages.datagen import ensure_dataset

        t_start = time.perf_counter()
        hp: SFTConfig = build(cfg.sft)
        task, _, lin = trace_engine(cfg)
        dataset_dir = ensure_dataset(cfg)
        manifest = read_manifest(dataset_dir)
        tokenizer = load_tokenizer(dataset_dir / "tokenizer")
        max_seq_len = int(cfg.data.max_tokens)
        out_dir = experiment_dir(cfg) / "sft"
        ckpt_dir = out_dir / "checkpoints"
        run_config = resume_config(cfg, hp, content_digest(dataset_dir))
        with user_input():  # sft.resume: a missing file, or a checkpoint trained otherwise
            ckpt_path = resume_path(hp, ckpt_dir, run_config)

        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        with user_input(f"model={cfg.model.name}"):  # e.g. model=pretrained with a wrong model.path
            model = build(cfg.model).build(tokenizer, max_seq_len)
        with user_input():  # e.g. no training example fits data.max_tokens
            dm = TraceDataModule(
                read_split(dataset_dir, "train"), read_split(dataset_dir, "val"), tokenizer, max_seq_len,
                batch_tokens=hp.batch_tokens, packing=hp.packing, pack_width=hp.pack_width,
                loss_on_prompt=hp.loss_on_prompt, seed=hp.seed, num_workers=hp.num_workers,
                val_examples=hp.val_examples, augment=augmenter(task, lin),
                overlong_policy=manifest.get("overlong", {}).get("policy"), manifest=manifest,
            )
        evaluate_fn = solve_rate_fn(cfg, hp, task, lin, tokenizer, dm.val_records, max_seq_len)
        module = SFTModule(model, hp, evaluate_fn, flops_per_token=_flops_per_token(model, dm.width))

        monitor, mode = ("val/solve_rate", "max") if evaluate_fn is not None else ("val/loss", "min")
        has_val = bool(dm.val_records)
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                               enable_version_counter=False, auto_insert_metric_name=False,
                               save_on_train_epoch_end=False)
        # One file, `last.ckpt`, written by this callback and by StopAndSave: without the version
        # counter off, a save that finds last.ckpt already there (StopAndSave's, or the resumed one)
        # goes to last-v1.ckpt, and a later resume reads the stale last.ckpt.
        last = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, enable_version_counter=False,
                               every_n_train_steps=hp.ckpt_every_steps)
        stop = StopAndSave(ckpt_dir)
        callbacks = [best, last, stop] if has_val else [last, stop]
        if not has_val:
            log.warning("no validation examples: no val loss, no solve rate, no best.ckpt (set data.val > 0)")
        factory = build(cfg.trainer)
        if factory.enable_progress_bar:  # refreshing it reads metrics: only at logging steps
            callbacks.append(TQDMProgressBar(refresh_rate=hp.log_every_n_steps))
        logger = stage_logger(cfg, self.name)
        trainer = factory.build(
            model, max_steps=hp.max_steps, max_epochs=-1, max_time=hp.max_time,
            accumulate_grad_batches=hp.grad_accum, val_check_interval=hp.val_every_steps * hp.grad_accum,
            check_val_every_n_epoch=None, log_every_n_steps=hp.log_every_n_steps,
            limit_val_batches=None if has_val else 0, callbacks=callbacks, logger=logger, default_root_dir=str(out_dir),
        )
        try:  # sft.attention for this device, checked before any training
            module.training_attention(trainer.strategy.root_device)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        fill = dm.fill_fraction()
        if hp.train_tokens is not None:  # equal-token comparisons: the step count follows the budget
            hp = hp.for_token_budget(fill, trainer.world_size)
            module.config = hp
            trainer.fit_loop.epoch_loop.max_steps = hp.max_steps
            log.info("sft.train_tokens=%d: %d steps of %d x %d x %d slots at fill %.3f", hp.train_tokens,
                     hp.max_steps, hp.batch_tokens, hp.grad_accum, trainer.world_size, fill)
        if len(dm.plan.batches(0)) == 1 and fill < 0.5:  # the whole split is one half-empty batch
            log.warning("the train split fills only %.0f%% of one batch of sft.batch_tokens=%d: every step is one "
                        "epoch padded with empty rows (slower, and tokens/s counts real tokens only); lower "
                        "sft.batch_tokens or raise data.train", 100 * fill, hp.batch_tokens)
        log.info("sft: %s, %d train examples (%d dropped as overlong), row width %d, fill %.2f%s",
                 dataset_dir.name, len(dm.train.records), dm.dropped["train"], dm.width, fill,
                 f", resuming from {ckpt_path}" if ckpt_path else "")
        if trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / RUN_CONFIG).write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n")
            logger.log_hyperparams(flatten(plain(cfg)))

        try:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        except SIGTERMException:
            raise Terminated(f"terminated at step {trainer.global_step}; {ckpt_dir / 'last.ckpt'} was saved: "
                             "run the same command again to resume") from None
        if module.resumed_step is not None and module.resumed_step >= hp.max_steps:
            log.warning("%s is already at step %d >= %d steps: this experiment is trained; nothing left to do "
                        "(pass sft.resume=never to train it again from scratch)", ckpt_path, module.resumed_step,
                        hp.max_steps)
        if stop.interrupted:
            log.warning("stopped at step %d; %s was saved: run the same command again to resume",
                        trainer.global_step, ckpt_dir / "last.ckpt")
            raise KeyboardInterrupt
        train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        if has_val and (trainer.global_step % hp.val_every_steps or "val/loss" not in trainer.callback_metrics):
            trainer.validate(module, datamodule=dm, verbose=False)  # the final weights' numbers
            keep_if_best(trainer, best, monitor)
        hf_dir = out_dir / "hf" if hp.export_hf else None
        if hf_dir is not None and module.resumed_step == trainer.global_step == export_step(hf_dir):
            log.info("%s already holds the model at step %d: not exported again", hf_dir, trainer.global_step)
        elif hf_dir is not None:  # staged, then renamed into place: never half an export at <experiment>/sft/hf
            publish(export_hf(trainer, module, tokenizer, out_dir / ".hf-staged"), hf_dir, trainer.is_global_zero)
            trainer.strategy.barrier("publish_hf")
        summary = {
            "steps": trainer.global_step,
            "final_train_loss": train_metrics.get("train/loss"),
            "val_loss": _metric(trainer, "val/loss"),
            "val_solve_rate": _metric(trainer, "val/solve_rate"),
            "best_" + monitor.split("/")[1]: _score(best) if has_val else None,
            "tokens_per_s": train_metrics.get("train/tokens_per_s"),
            "fill": fill,
            "train_tokens": int(round(trainer.global_step * hp.batch_tokens * hp.grad_accum * trainer.world_size * fill)),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "dropped_overlong": dict(dm.dropped),
            "dataset_dir": str(dataset_dir),
            "last_ckpt": str(ckpt_dir / "last.ckpt"),
            "best_ckpt": (best.best_model_path or None) if has_val else None,
            "hf_dir": str(hf_dir) if hf_dir else None,
            "tensorboard_dir": str(Path(logger.log_dir)),
            "wall_s": time.perf_counter() - t_start,
        }
        if summary["val_solve_rate"] is not None:
            summary["objective"] = summary["val_solve_rate"]
        log.info("sft done: %s", {k: v for k, v in summary.items() if not k.endswith(("_dir", "_ckpt"))})
        return summary


def resume_config(cfg: DictConfig, hp: SFTConfig, dataset: str | None = None) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed (max_steps, validation and
    logging may change between runs; the data order and optimizer may not; nor may the data:
    `dataset` is its `content_digest`, which changes when edited code writes other traces)."""
    d = {k: getattr(hp, k) for k in SFTConfig.RESUME_KEYS}
    d["betas"] = list(d["betas"])
    d["trainer"] = {k: plain(cfg.trainer.get(k)) for k in ("devices", "num_nodes", "strategy")}
    d["dataset"] = dataset
    return d


def resume_path(hp: SFTConfig, ckpt_dir: Path, run_config: dict[str, Any]) -> str | None:
    if hp.resume == "never":
        return None
    if hp.resume != "auto":
        path = Path(hp.resume).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"sft.resume={hp.resume} does not exist (use auto, never or a .ckpt path)")
        return str(path)
    last = ckpt_dir / "last.ckpt"
    if not last.exists():
        return None
    saved_file = ckpt_dir.parent / RUN_CONFIG
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else None
    if saved is not None and (saved.get("dataset") is None or run_config.get("dataset") is None):
        saved = {**saved, "dataset": run_config.get("dataset")}  # trained before it was recorded: unknown
    if saved is not None and saved != run_config:
        diff = {k: (saved.get(k), run_config.get(k)) for k in sorted(set(saved) | set(run_config))
                if saved.get(k) != run_config.get(k)}
        if list(diff) == ["dataset"]:
            raise ValueError(
                f"{last} was trained on other data: the dataset of this experiment was rebuilt since, with "
                "other traces or another tokenizer (the code that writes them changed). Pass sft.resume=never "
                f"to train on the current data, or evaluate the old model with ckpt={ckpt_dir.parent / 'hf'}")
        raise ValueError(
            f"{last} was trained with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
            "restore them to resume, or pass sft.resume=never to train from scratch"
        )
    return str(last)


def augmenter(task: Any, lin: Any) -> LinearizationAugment | None:
    """The format's training-time augmentation, or None when it has none (a format that
    augments through a `dropping` attribute set to None augments nothing)."""
    if type(lin).augment is Linearization.augment or getattr(lin, "dropping", True) is None:
        return None
    return LinearizationAugment(task, lin)


def solve_rate_fn(cfg: DictConfig, hp: SFTConfig, task: Any, lin: Any, tokenizer: Any,
                  records: list[dict[str, Any]], max_seq_len: int) -> Any:
    """`model -> metrics` (greedy solve rate on a few val problems), or None when disabled or
    when the evaluator / sampler are not available."""
    if hp.solve_rate_problems <= 0 or not records:
        return None
    try:
        from metacot.eval.evaluator import EvalOptions, evaluate
        from metacot.generation import Sampler  # noqa: F401 - the evaluator's default sampler
    except ImportError as e:
        log.warning("val/solve_rate disabled (%s); best.ckpt tracks val/loss", e)
        return None
    subset = records[: hp.solve_rate_problems]
    max_new = hp.solve_rate_max_new_tokens or new_token_budget(tokenizer, subset, max_seq_len)
    batch_size = int(cfg.eval.batch_size) if cfg.get("eval") is not None and "batch_size" in cfg.eval else 64
    options = EvalOptions(n_problems=len(subset), max_new_tokens=max_new, batch_size=batch_size,
                          num_samples=0, num_examples=4, shard=False)

    def run(model: torch.nn.Module) -> dict[str, Any]:
        return evaluate(model, tokenizer, task, lin, subset, options)

    return run


def _flops_per_token(model: torch.nn.Module, seq_len: int) -> float | None:
    try:
        from metacot.models import flops_per_token
    except ImportError:
        return 6.0 * sum(p.numel() for p in model.parameters())
    return flops_per_token(model, seq_len)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as `a/b/c: scalar` pairs (TensorBoard hparams take scalars only)."""
    if not isinstance(d, dict):
        return {prefix: d if isinstance(d, (int, float, str, bool)) else str(d)}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def keep_if_best(trainer: L.Trainer, best: ModelCheckpoint, monitor: str) -> None:
    """The closing validation runs after fit, where ModelCheckpoint does not look: final weights
    that beat every validation inside the loop (or that had none: sft.max_steps below
    sft.val_every_steps) become best.ckpt here, so `best` always means the best weights validated."""
    value = trainer.callback_metrics.get(monitor)
    if value is None or not torch.isfinite(value):
        return
    value = value.detach().cpu().float()
    current = best.best_model_score
    if current is not None and not (value > current if best.mode == "max" else value < current):
        return
    path = Path(best.dirpath) / f"{best.filename}{best.FILE_EXTENSION}"
    best.best_model_path, best.best_model_score = str(path), value  # before saving: the file holds them too
    best.best_k_models = {str(path): value}
    best.kth_best_model_path, best.kth_value = str(path), value
    trainer.save_checkpoint(path)


def _metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None


def _score(checkpoint: ModelCheckpoint) -> float | None:
    return float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
