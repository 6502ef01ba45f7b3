"""`stage=eval`: evaluate a model on seen (`val`) and unseen (`test_unseen`) problems.

The model is `ckpt=` (a Hugging Face directory or a Lightning `.ckpt`) or, by default, this
experiment's SFT export (`source: rl` picks its RL export). Writes `metrics.json`, `problems.json`
(one row per problem and split) and `passk.png` to the run directory — and, for the experiment's
own model, to `<experiment>/eval/` (SFT) or `<experiment>/eval/<source>/` — logs scalars to
TensorBoard and prints a compact table with the symbolic algorithm's numbers on the same problems
next to the model's. `eval.behaviour` names the `conf/search/` algorithms whose expansion order the
model's is compared with (`order_similarity/<name>`).

The experiment's own model is evaluated once per (model weights, dataset, eval options, splits,
device): an identical later eval — every job of an `algo=` sweep evaluates the same SFT export —
reuses `<experiment>/eval/` (`eval_fingerprint`, `saved_results`); `eval.reuse=false` recomputes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from metacot.atomic import finite, write_json
from metacot.config import CONF_DIR, build, plain
from metacot.errors import BadValue, MissingInput, user_input
from metacot.eval.evaluator import EvalOptions, evaluate
from metacot.eval.metrics import finite_or_none
from metacot.eval.plots import passk_curve, plot_passk
from metacot.eval.table import format_table
from metacot.stages.base import Stage
from metacot.stages.common import (
    eval_options,
    experiment_dir,
    experiment_key,
    other_trainings,
    search_config_names,
    stage_logger,
    stage_run_dir,
    trace_engine,
)
from metacot.stages.datagen import ensure_dataset

log = logging.getLogger(__name__)

SPLIT_LABELS = {"val": "val (seen)", "test_unseen": "test_unseen (unseen)"}
SOURCES = ("sft", "rl")  # stage.source: <experiment>/<source>/hf


class EvalStage(Stage):
    name = "eval"

    def __init__(self, name: str | None = None, splits: list[str] | tuple[str, ...] = ("val", "test_unseen"),
                 device: str = "auto", source: str = "sft"):
        from metacot.data.records import SPLITS

        super().__init__(name)
        self.splits = list(splits)
        self.device = device
        self.source = source  # which export of the experiment to evaluate without ckpt=: <exp>/<source>/hf
        self.produced: Path | None = None  # in a pipeline: the export its `source` stage just wrote
        if source not in SOURCES:
            raise ValueError(f"stage.source must be one of {SOURCES} (the experiment's SFT or RL export), "
                             f"got {source!r}; evaluate any other model with ckpt=<hf dir or .ckpt>")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"stage.splits names unknown splits {unknown}: use any of {list(SPLITS)}")

    def use_earlier(self, results: dict[str, Any]) -> None:
        """After an `rl` stage in the same pipeline, evaluate the model that run exported
        (`<experiment>/rl/<run>/hf`), not `<experiment>/rl/hf`, the latest RL export of any run: jobs
        of a parallel sweep (`algo=grpo,rloo` on several workers) would evaluate each other's model."""
        hf_dir = (results.get(self.source) or {}).get("hf_dir")
        if hf_dir and (Path(hf_dir) / "config.json").is_file():
            self.produced = Path(hf_dir)

    def run(self, cfg: DictConfig) -> dict[str, Any]:
        task, search, lin = trace_engine(cfg)
        references = reference_searches(build(cfg.eval).behaviour)
        path = self.produced if self.produced is not None and not cfg.get("ckpt") else model_path(cfg, self.source)
        dataset_dir = ensure_dataset(cfg)  # built if absent, like every stage that needs one
        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if self.device == "auto" else self.device))
        with user_input():  # the model to evaluate: ckpt=..., or model=pretrained model.path=...
            model, tokenizer = load_model(cfg, path, dataset_dir, device)
        source = str(path)
        model_info = provenance(path, "ckpt" if cfg.get("ckpt") else self.source)
        from metacot.data.records import iter_split, read_split

        options: EvalOptions = eval_options(cfg, tokenizer, iter_split(dataset_dir, "train"))
        log.info("eval: %s on %s (%s), up to %d new tokens", source, dataset_dir.name, device, options.max_new_tokens)

        own = not cfg.get("ckpt")  # the experiment's own model: its results are kept with it (and reused)
        mode = cfg.eval.get("force_mode")  # a forced Dualformer mode: beside the default eval, not over it
        keep_dir = (experiment_dir(cfg) / "eval" / ("" if self.source == "sft" else self.source)
                    / (f"force_mode-{mode}" if mode else "")) if own else None
        fingerprint = eval_fingerprint(path, dataset_dir, options, self.splits, device) if own else None
        saved = saved_results(keep_dir, fingerprint) if own and options.reuse else None
        if saved is not None:
            results, examples, problems = saved
            log.info("eval: reusing %s (same model files, dataset, eval options and device; eval.reuse=false "
                     "recomputes)", keep_dir / "metrics.json")
        else:
            results, examples, problems = {}, {}, {}
            for split in self.splits:
                t0 = time.perf_counter()
                out = evaluate(model, tokenizer, task, lin, read_split(dataset_dir, split), options,
                               reference_searches=references)
                results[split], examples[split], problems[split] = dict(out), out.examples, out.problems
                log.info("eval %s: solve rate %.3f (symbolic %.3f) on %d problems in %.1fs", split,
                         out["solve_rate"], out["symbolic_solve_rate"], int(out["num_problems"]),
                         time.perf_counter() - t0)

        summary = {
            "splits": {s: finite_or_none(m) for s, m in results.items()},
            "model_info": model_info,
            "examples": examples,
            "config": {
                "experiment": experiment_key(cfg), "model": "ckpt" if cfg.get("ckpt") else self.source,
                "model_source": source, "dataset": str(dataset_dir),
                "task": plain(cfg.task), "search": plain(cfg.search), "linearization": plain(cfg.linearization),
                "model_config": plain(cfg.model),
                "eval": {**plain(cfg.eval), "max_new_tokens": options.max_new_tokens}, "seed": cfg.seed, "device": str(device),
            },
        }
        run_dir = stage_run_dir(cfg, self.name)  # pipeline_rl's eval_rl: <run_dir>/eval_rl
        for out_dir in [run_dir] + ([keep_dir] if own else []):
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "problems.json", problems)  # first: metrics.json vouches for it (see saved_results)
            digest = hashlib.sha256((out_dir / "problems.json").read_bytes()).hexdigest()
            write_json(out_dir / "metrics.json", {**summary, "fingerprint": fingerprint, "problems_sha256": digest})
            plot_passk({s: passk_curve(m) for s, m in results.items()}, out_dir / "passk.png",
                       title=f"pass@k — {experiment_key(cfg)}")
        tb_dir = _log_tensorboard(cfg, self.name, results, examples)
        labelled = {SPLIT_LABELS.get(s, s): m for s, m in results.items()}
        table = format_table(labelled)
        behaviour = sorted({k for m in results.values() for k in m if k.startswith("order_similarity/")})
        if behaviour:  # which algorithm the model's expansion order is closest to
            table += "\n\n" + format_table(labelled, rows=behaviour)
        print(f"\neval of {source}{describe_provenance(model_info)}\n{table}\n(metrics: {run_dir / 'metrics.json'})", flush=True)

        first = self.splits[0] if self.splits else None
        objective = results[first]["solve_rate"] if first else None
        return {"metrics": results, "metrics_path": str(run_dir / "metrics.json"), "tensorboard_dir": tb_dir,
                "objective": objective, "problems": problems, "model_source": source, "model_info": model_info}


def provenance(path: Path, source: str) -> dict[str, Any]:
    """Where the evaluated model came from: `source` (sft, rl or ckpt), its path, and what its export
    recorded (training step; for RL, the objective and reward that trained it) — so a report labels
    the model by its own history, not by this eval run's config."""
    from metacot.modules.export import export_info

    return {"source": source, "path": str(path), **(export_info(path) if path.is_dir() else {})}


def describe_provenance(info: dict[str, Any]) -> str:
    parts = [f"{k} {info[k]}" for k in ("algo", "reward") if info.get(k)]
    if info.get("global_step") is not None:
        parts.append(f"step {info['global_step']}")
    return f" ({', '.join(parts)})" if parts else ""


def model_files(path: Path) -> dict[str, str]:
    """sha256 of each file of a model: an HF directory's files (all of them: weights, config and
    tokenizer shape its outputs), or a Lightning .ckpt file."""
    from metacot.data.records import file_sha256

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {p.name: file_sha256(p) for p in files}


def eval_fingerprint(model_dir: Path, dataset_dir: Path, options: EvalOptions, splits: list[str],
                     device: torch.device) -> dict[str, Any]:
    """What an evaluation's numbers depend on: the model directory's files (content hashes: the same
    weights match however and whenever they were written), the dataset (its manifest's hash),
    the eval options (resolved; `reuse` aside), the splits, the device type and metacot's own code (a
    fix to a parser or metric must not be hidden behind old numbers)."""
    from metacot.data.records import read_manifest

    files = model_files(model_dir)
    evaluation = {k: v for k, v in asdict(options).items() if k != "reuse"}
    return {"model_dir": str(model_dir), "model_files": files, "dataset": str(dataset_dir),
            "dataset_hash": read_manifest(dataset_dir).get("config_hash"), "eval": evaluation,
            "splits": list(splits), "device": device.type, "code": code_digest()}


@functools.cache
def code_digest() -> str:
    """A hash of every metacot source file (what scores a model: sampler, parsers, tasks, metrics)."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def saved_results(keep_dir: Path, fingerprint: dict[str, Any]) -> tuple[dict, dict, dict] | None:
    """(metrics, examples, problems) an earlier identical evaluation saved in `keep_dir`, or None when
    there is none, its fingerprint differs, or its problems.json is not the one its metrics.json vouches for."""
    try:
        summary = json.loads((keep_dir / "metrics.json").read_text())
        problems_bytes = (keep_dir / "problems.json").read_bytes()
    except (OSError, ValueError):
        return None
    if summary.get("fingerprint") != json.loads(json.dumps(finite(fingerprint), default=str)):
        return None
    if summary.get("problems_sha256") != hashlib.sha256(problems_bytes).hexdigest():
        return None
    nan = float("nan")
    order = list(fingerprint.get("splits") or [])  # the file's keys are sorted: back to stage.splits order

    def ordered(d: dict[str, Any]) -> dict[str, Any]:
        return {s: d[s] for s in sorted(d, key=lambda s: (order.index(s) if s in order else len(order), s))}

    metrics = {s: {k: nan if v is None else v for k, v in m.items()} for s, m in summary["splits"].items()}
    return ordered(metrics), ordered(summary.get("examples", {})), ordered(json.loads(problems_bytes))


def reference_searches(names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`name -> SearchAlgorithm` built from `conf/search/<name>.yaml` with its default options (the
    references of `eval.behaviour`, independent of this experiment's own `search=` overrides)."""
    if not names:
        return {}
    return {n: build(OmegaConf.load(CONF_DIR / "search" / f"{n}.yaml")) for n in search_config_names(names)}


def model_path(cfg: DictConfig, source: str = "sft") -> Path:
    """What to evaluate: `cfg.ckpt` (an HF directory or a Lightning .ckpt) or the experiment's
    `<source>/hf` export. Checked before anything is built, so a missing model fails fast."""
    if cfg.get("ckpt"):
        path = Path(str(cfg.ckpt)).expanduser()
        if not path.exists():
            raise MissingInput(f"ckpt={cfg.ckpt} does not exist: pass an HF model directory "
                                    "(config.json + weights) or a Lightning .ckpt file")
        if not path.is_dir() and path.suffix != ".ckpt":
            raise BadValue(f"ckpt={cfg.ckpt} is neither a directory nor a .ckpt file: pass an HF model "
                           "directory or a Lightning checkpoint (e.g. <experiment>/sft/checkpoints/best.ckpt)")
        if path.is_dir() and not (path / "config.json").is_file():
            raise MissingInput(f"ckpt={cfg.ckpt} has no config.json: it is not a Hugging Face model directory "
                               "(pass the folder save_pretrained wrote, e.g. <experiment>/sft/hf, or a .ckpt)")
        return path
    path = experiment_dir(cfg) / source / "hf"
    if not (path / "config.json").is_file():
        raise MissingInput(
            f"no {source.upper()} model for this experiment at {path}. Train it first with\n"
            f"    python train.py stage={source} {_overrides_without_stage()}\n"
            "or evaluate another model with ckpt=/path/to/hf_dir_or.ckpt" + other_trainings(cfg, source)
        )
    return path


def load_model(cfg: DictConfig, path: Path, dataset_dir: Path, device: torch.device) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF directory (its own tokenizer if saved, else the dataset's) or
    a Lightning .ckpt (the model rebuilt from `cfg.model`, the dataset's tokenizer)."""
    from metacot.data.tokenizer import load_tokenizer

    if path.is_dir():
        model, tokenizer = _load_hf(path, dataset_dir)
    else:
        tokenizer = load_tokenizer(dataset_dir / "tokenizer")
        model = _load_lightning(cfg, path, tokenizer)
    model.to(device)
    return model, tokenizer


def _load_hf(path: Path, dataset_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from metacot.data.tokenizer import load_tokenizer

    if not (path / "config.json").is_file():
        raise MissingInput(f"{path} has no config.json: it is not a Hugging Face model directory "
                           "(pass the folder save_pretrained wrote, e.g. <experiment>/sft/hf)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:  # an unreadable config.json or weights
        raise BadValue(f"{path} cannot be loaded as a Hugging Face causal LM ({type(e).__name__}: {e}); "
                       "pass a directory written by save_pretrained, e.g. <experiment>/sft/hf") from e
    tok_dir = path if (path / "tokenizer.json").is_file() else dataset_dir / "tokenizer"
    return model, load_tokenizer(tok_dir)


def _load_lightning(cfg: DictConfig, path: Path, tokenizer: Any) -> Any:
    """Rebuild the model from `cfg.model` and load the LightningModule's `model.*` weights."""
    model = build(cfg.model).build(tokenizer, max_seq_len=int(cfg.data.max_tokens))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file: torch raises many kinds
        raise BadValue(f"{path} is not a checkpoint torch can read ({type(e).__name__}: {e}); pass a Lightning "
                       ".ckpt of stage=sft or stage=rl, or an HF model directory") from e
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    prefix = "model."
    weights = {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise BadValue(f"{path} holds no `model.*` weights: is it a checkpoint of stage=sft or stage=rl?")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes differ: another model size, or another task's vocabulary
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:300])
        raise BadValue(f"{path} does not fit model={cfg.model.name} with this dataset's tokenizer ({first}): "
                       "evaluate it with the model=... and task/data overrides it was trained with") from e
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise BadValue(
            f"{path} does not fit model={cfg.model.name} (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "evaluate it with the same model=... overrides it was trained with"
        )
    return model


def _tied_keys(model: Any) -> set[str]:
    """Weights that share storage with another one (tied embeddings): absent from a state dict saved
    without duplicates, and safe to skip."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied


def _overrides_without_stage() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not under @hydra.main (tests, notebooks)
        return "<the same overrides>"
    return " ".join(o for o in overrides if o.split("=")[0].lstrip("+~") != "stage")


def _log_tensorboard(cfg: DictConfig, stage: str, results: dict[str, dict[str, float]],
                     examples: dict[str, list[dict[str, str]]]) -> str | None:
    """Scalars `eval/<split>/<metric>` and an examples table per split, through the configured
    logger (`logger=` group, under the run directory like every stage)."""
    logger = stage_logger(cfg, stage)
    for split, metrics in results.items():
        logger.log_metrics({f"eval/{split}/{k}": v for k, v in metrics.items()}, step=0)
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_text"):
        for split, rows in examples.items():
            if rows:
                table = "| prompt | completion | verdict |\n|---|---|---|\n" + "\n".join(
                    f"| {_cell(r['prompt'])} | {_cell(r['completion'])} | {_cell(r['verdict'])} |" for r in rows)
                experiment.add_text(f"eval/{split}/examples", table, 0)
    logger.finalize("success")
    return getattr(logger, "log_dir", None)


def _cell(text: str, limit: int = 2000) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("|", "\\|").replace("\n", "<br>")
