"""`stage=rl`: post-train the experiment's SFT model with verifiable rewards (`algo=`, `reward=`).

Starts from `<experiment>/sft/hf` (what `stage=sft` with the same task/search/format/model
overrides wrote) or `init_from=` (an HF directory or a Lightning .ckpt). Writes
`<experiment>/rl/<algo>-<reward>-<hash8>/` — `checkpoints/last.ckpt` (resumed automatically,
`rl.resume`), `hf/` (model + tokenizer) and `metrics.json` (evaluator metrics before and after
RL, the same ones as `stage=eval`) — and TensorBoard logs in the run directory. The hash covers
everything that changes the run except its length and logging, so raising `rl.steps` continues a
finished run. The export is copied to `<experiment>/rl/hf` (the experiment's latest RL model),
which `stage=eval stage.source=rl` (and the last stage of `stage=pipeline_rl`) evaluates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from metacot.config import build, config_hash, plain
from metacot.errors import MissingInput, user_input
from metacot.eval.metrics import finite_or_none
from metacot.eval.table import format_table
from metacot.locks import exclusive
from metacot.modules.callbacks import StopAndSave
from metacot.modules.export import export_hf, publish
from metacot.modules.rl import RLModule, RLOptions
from metacot.rl.objectives import ExpertIterationObjective
from metacot.rl.rollout import RolloutCollector
from metacot.stages.base import Stage, Terminated
from metacot.stages.common import (
    eval_options,
    experiment_dir,
    new_token_budget,
    other_trainings,
    stage_logger,
    stage_run_dir,
    trace_engine,
)

log = logging.getLogger(__name__)
# Options that change how long a run is or what it logs, not what it computes (not in the run key).
RUN_LENGTH_KEYS = ("steps", "max_time_s", "eval_every", "eval_at_start", "table_every", "table_rows", "save_every",
                   "max_nan_skips", "resume")


class RLStage(Stage):
    name = "rl"

    def run(self, cfg: DictConfig) -> dict[str, Any]:
        with contextlib.ExitStack() as held:  # the run's lock (taken in `train`) is released on any exit
            return self.train(cfg, held)

    def train(self, cfg: DictConfig, held: contextlib.ExitStack) -> dict[str, Any]:
        from metacot.data.records import read_split
        from metacot.stages.datagen import ensure_dataset

        t_start = time.perf_counter()
        options: RLOptions = build(cfg.rl)
        objective = build(cfg.algo)
        task, _, lin = trace_engine(cfg)
        policy_path(cfg)  # a missing SFT model fails before the dataset is built
        dataset_dir = ensure_dataset(cfg)
        policy, tokenizer, source = load_policy(cfg, dataset_dir)
        train = read_split(dataset_dir, "train")
        eval_sets = {s: read_split(dataset_dir, s) for s in ("val", "test_unseen")}
        max_new = options.max_new_tokens or new_token_budget(tokenizer, train, int(cfg.data.max_tokens))
        reward = build(cfg.reward) if cfg.reward.get("max_length") is not None else build(cfg.reward, max_length=max_new)
        module_cls: type[RLModule] = RLModule
        if isinstance(objective, ExpertIterationObjective):  # rounds of rejection sampling + SFT
            from metacot.modules.expert_iteration import ExpertIterationModule

            module_cls, options = ExpertIterationModule, replace(options, steps=objective.rounds)

        out_dir = experiment_dir(cfg) / "rl" / run_key(cfg, options, source)
        # One job at a time per RL run (the key leaves out rl.steps and logging: a parallel sweep over
        # them shares it): the second waits, then resumes or finds it done (metacot.locks).
        held.enter_context(exclusive(out_dir / "train.lock", f"RL run {out_dir.relative_to(experiment_dir(cfg))}"))
        ckpt_dir = out_dir / "checkpoints"
        ckpt_path = resume_path(options, ckpt_dir)
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        module = module_cls(policy, tokenizer, objective, RolloutCollector(task, lin, tokenizer, reward), train,
                            options, max_new, eval_sets=eval_sets,
                            eval_options=eval_options(cfg, tokenizer, train))
        module.checkpoint_path = ckpt_dir / "last.ckpt"
        stop = StopAndSave(ckpt_dir)
        logger = stage_logger(cfg, self.name)
        factory = build(cfg.trainer)
        if hasattr(factory, "layer_classes"):  # FSDP: see fsdp_wrap and full_precision_params
            factory.wrap = fsdp_wrap(factory, policy)
            factory.full_precision_params = True
        # No Lightning progress bar: an RL run is one endless epoch to it ("Epoch 0/-2"); the module
        # logs every RL step with its reward instead.
        trainer = factory.build(policy, max_steps=-1, max_epochs=-1, callbacks=[stop], logger=logger,
                                default_root_dir=str(out_dir), log_every_n_steps=1, enable_checkpointing=False,
                                enable_progress_bar=False)
        log.info("rl: %s from %s, G=%d, %d prompts/step/rank, %d steps, max %d new tokens, reward %r%s",
                 objective, source, module.group_size, options.prompts_per_step, options.steps, max_new, reward,
                 f", resuming from {ckpt_path}" if ckpt_path else "")
        if trainer.is_global_zero:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            logger.log_hyperparams(_flatten(plain(cfg)))
        try:
            with warnings.catch_warnings():  # the frozen reference model is in eval mode on purpose
                warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
                trainer.fit(module, ckpt_path=ckpt_path)
        except SIGTERMException:
            raise Terminated(f"terminated at RL step {module.rl_step}; {ckpt_dir / 'last.ckpt'} was saved: "
                             "run the same command again to resume") from None
        if stop.interrupted:
            log.warning("stopped at RL step %d; %s was saved: run the same command again to resume",
                        module.rl_step, ckpt_dir / "last.ckpt")
            raise KeyboardInterrupt
        hf_dir = out_dir / "hf"  # this run's model, and a copy as the experiment's latest RL model
        info = {"stage": "rl", "algo": objective.name, "reward": reward.name, "run": out_dir.name}
        publish(export_hf(trainer, module, tokenizer, out_dir / ".hf-staged"), hf_dir, trainer.is_global_zero, info)
        publish(export_hf(trainer, module, tokenizer, out_dir / ".hf-latest"), out_dir.parent / "hf",
                trainer.is_global_zero, info)
        trainer.strategy.barrier("publish_hf")
        summary = summarize_run(module, out_dir, hf_dir, source, time.perf_counter() - t_start)
        summary["tensorboard_dir"] = getattr(logger, "log_dir", None)  # as sft's and eval's summaries
        if trainer.is_global_zero:
            for path in (out_dir / "metrics.json", stage_run_dir(cfg, self.name) / "metrics.json"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
            print(f"\nRL ({objective.name}, reward {reward.name}) from {source}\n{summary['table']}\n"
                  f"{format_time_split(summary['time_split'])}\n"
                  f"(model: {hf_dir}, metrics: {out_dir / 'metrics.json'})", flush=True)
        return summary


def load_policy(cfg: DictConfig, dataset_dir: Path) -> tuple[Any, Any, str]:
    """(model, tokenizer, source): `init_from` (HF dir or .ckpt) or the experiment's SFT export."""
    from metacot.stages.eval import load_model

    path = policy_path(cfg)
    with user_input(f"the model RL starts from ({path})"):
        model, tokenizer = load_model(cfg, path, dataset_dir, torch.device("cpu"))
    return model, tokenizer, str(path)


def policy_path(cfg: DictConfig) -> Path:
    """The model RL starts from, checked before any work: `init_from` or the experiment's SFT export."""
    if cfg.get("init_from"):
        path = Path(str(cfg.init_from)).expanduser()
        if not path.exists() or not (path.is_dir() or path.suffix == ".ckpt"):
            raise MissingInput(f"init_from={cfg.init_from} is not an HF model directory or a Lightning "
                               ".ckpt file (e.g. <experiment>/sft/hf or <experiment>/sft/checkpoints/best.ckpt)")
        return path
    path = experiment_dir(cfg) / "sft" / "hf"
    if not (path / "config.json").is_file():
        raise MissingInput(
            f"no SFT model for this experiment at {path}. Train it first with\n"
            f"    python train.py stage=sft {_sft_overrides()}\n"
            "or start RL from another model with init_from=/path/to/hf_dir_or.ckpt" + other_trainings(cfg))
    return path


def fsdp_wrap(factory: Any, policy: Any) -> list[str]:
    """FSDP units for RL: the decoder layers AND the whole policy (and so the reference copy).

    An RL step runs many forward/backward passes (rollout decoding, micro-batches, epochs) inside
    one Lightning training step, i.e. inside ONE forward of the FSDP root. Parameters that live in
    the root unit (embeddings, final norm) are resharded after the first backward and would not
    be gathered again; as their own unit, the policy gathers its parameters on every call.
    """
    return sorted({c.__name__ for c in factory.layer_classes(policy)} | {type(policy).__name__})


def run_key(cfg: DictConfig, options: RLOptions, source: str) -> str:
    what = {k: v for k, v in asdict(options).items() if k not in RUN_LENGTH_KEYS}
    world = {k: plain(cfg.trainer.get(k)) for k in ("devices", "num_nodes", "strategy")}
    algo = {k: v for k, v in plain(cfg.algo).items() if k != "rounds"}  # expert iteration's run length
    from metacot.modules.export import EXPORT_INFO
    from metacot.stages.eval import model_files

    # the start model by content, not only by path: a retrained SFT model starts another RL run
    # rather than resuming one that began from the old weights
    start = {k: v for k, v in model_files(Path(source)).items() if k != EXPORT_INFO}
    digest = config_hash(algo, plain(cfg.reward), what, source, start, world, int(cfg.seed), length=8)
    return f"{cfg.algo.name}-{cfg.reward.name}-{digest}"


def resume_path(options: RLOptions, ckpt_dir: Path) -> str | None:
    last = ckpt_dir / "last.ckpt"
    if options.resume and last.exists():
        return str(last)
    return None


def summarize_run(module: RLModule, out_dir: Path, hf_dir: Path, source: str, wall_s: float) -> dict[str, Any]:
    """Before/after metrics (the first and last evaluations) and a printable table."""
    history = module.eval_history
    first, last = (history[0], history[-1]) if history else ({}, {})
    columns: dict[str, dict[str, float]] = {}
    for split in last.get("metrics", {}):
        if first is not last:
            columns[f"{split} @0"] = first["metrics"][split]
        columns[f"{split} @{last['step']}"] = last["metrics"][split]
    val = last.get("metrics", {}).get("val", {})
    return {
        "steps": module.rl_step,
        "source": source,
        "before": {s: finite_or_none(m) for s, m in first.get("metrics", {}).items()},
        "after": {s: finite_or_none(m) for s, m in last.get("metrics", {}).items()},
        "history": [{"step": h["step"], "solve_rate": {s: m.get("solve_rate") for s, m in h["metrics"].items()}}
                    for h in history],
        "table": format_table(columns) if columns else "(no evaluation: rl.eval_every=0 and no eval splits)",
        "hf_dir": str(hf_dir),
        "last_ckpt": str(out_dir / "checkpoints" / "last.ckpt"),
        "wall_s": wall_s,
        "time_split": time_split(module.step_times),
        "objective": val.get("solve_rate"),
    }


def time_split(step_times: list[tuple[float, float, float]]) -> dict[str, float] | None:
    """Median seconds per RL step of rollout / log-probs / update, and each one's share of their sum."""
    if not step_times:
        return None
    med = dict(zip(("rollout", "logprob", "update"), (statistics.median(c) for c in zip(*step_times, strict=True)), strict=True))
    total = sum(med.values()) or 1.0
    return {"steps": len(step_times), **{f"{k}_s": v for k, v in med.items()},
            **{f"{k}_share": v / total for k, v in med.items()}}


def format_time_split(split: dict[str, float] | None) -> str:
    if not split:
        return "RL step time: no steps ran in this process"
    parts = [f"{label} {split[k + '_s']:.3f} s ({100 * split[k + '_share']:.1f}%)"
             for k, label in (("rollout", "rollout"), ("logprob", "log-probs"), ("update", "update"))]
    return f"RL step time (median of {split['steps']} steps): " + ", ".join(parts)


def _sft_overrides() -> str:
    """This run's overrides that shape the experiment (RL-only ones dropped), for the error text."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not under @hydra.main (tests, notebooks)
        return "<the same task/search/linearization/model/data overrides>"
    rl_only = ("stage", "algo", "reward", "rl", "init_from", "eval", "trainer", "ckpt")
    return " ".join(o for o in overrides if o.split("=")[0].lstrip("+~").split(".")[0] not in rl_only)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    from metacot.stages.sft import flatten

    return flatten(d, prefix)
