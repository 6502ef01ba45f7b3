"""`stage=datagen`: build (or find, by config hash) the dataset of linearized search traces.

Other stages call `ensure_dataset(cfg)`, so training or evaluating never needs a separate datagen
run: the dataset for the configured task, search, format and data options is built when missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from metacot.config import build
from metacot.data.build import ConfigError, build_dataset, check_options, dataset_key
from metacot.data.records import SPLITS, read_manifest, why_empty
from metacot.errors import BadValue
from metacot.stages.base import Stage
from metacot.stages.common import trace_engine


def ensure_dataset(cfg: DictConfig) -> Path:
    """The dataset directory for `cfg` (task, search, linearization, data), built when missing."""
    try:
        task, search, lin = trace_engine(cfg)
        options = build(cfg.data)
        check_options(search, options)
        dataset_key(task, search, lin, options)  # a missing data.tokenizer.path fails here
    except (InstantiationException, ValueError, TypeError, FileNotFoundError) as e:  # a config mistake
        raise BadValue(f"invalid configuration: {e}") from e
    try:
        return build_dataset(task, search, lin, options, Path(cfg.paths.data_dir))
    except ConfigError as e:  # the combination failed on its first problem, before the workers started
        raise BadValue(f"invalid configuration: {e}") from e


def summary_text(path: Path, manifest: dict[str, Any]) -> str:
    lines = [f"dataset: {path}",
             f"  {'split':<12}{'records':>9}{'problems':>10}{'solved':>9}{'overlong':>10}"
             f"   trace tokens mean / p50 / p95 / max"]
    overlong = manifest["overlong"]
    for split in SPLITS:
        t = manifest["trace_tokens"]["by_split"][split]
        rate = manifest["symbolic_solve_rate"][split]
        tokens = "-" if not t["n"] else f"{t['mean']:.0f} / {t['p50']} / {t['p95']} / {t['max']}"
        lines.append(f"  {split:<12}{manifest['counts'][split]:>9}{manifest['problems'][split]:>10}"
                     f"{'-' if rate is None else f'{100 * rate:.1f}%':>9}{overlong['count'][split]:>10}"
                     f"   {tokens}")
    lines.append(f"  overlong policy: {overlong['policy']} (max_tokens={overlong['max_tokens']})")
    return "\n".join(lines)


def empty_split_warnings(manifest: dict[str, Any]) -> list[str]:
    """A warning for each split that was asked for problems and ended with no record (a build that
    "succeeded" with nothing to train or evaluate on), saying why and what to change."""
    asked = manifest.get("config", {}).get("data", {})
    return [f"warning: split {split} has 0 records although data.{split}={asked[split]}: {why_empty(manifest, split)}"
            for split in SPLITS if asked.get(split) and not manifest["counts"][split]]


class DatagenStage(Stage):
    name = "datagen"

    def run(self, cfg: DictConfig) -> dict[str, Any]:
        path = ensure_dataset(cfg)
        manifest = read_manifest(path)
        print(summary_text(path, manifest), flush=True)
        for warning in empty_split_warnings(manifest):
            print(warning, file=sys.stderr, flush=True)
        return {
            "dataset_dir": str(path),
            "counts": manifest["counts"],
            "symbolic_solve_rate": manifest["symbolic_solve_rate"],
            "trace_tokens_mean": manifest["trace_tokens"]["mean"],
        }
