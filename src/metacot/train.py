"""Entry point: `python train.py stage=<datagen|sft|eval|rl|pipeline> task=... search=...`.

Composes the config with Hydra, records where this run writes, and hands the config to the
selected stage (`conf/stage/<name>.yaml` names the stage class; no string switch here).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger("metacot")


def prepare(cfg: DictConfig, run_dir: str | None = None) -> DictConfig:
    """Fill in run-time paths (absolute, so later `chdir`s or worker processes cannot move them)."""
    with open_dict(cfg):
        cfg.paths.root_dir = str(Path(cfg.paths.root_dir).expanduser().resolve())
        if run_dir is None:
            run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
        if run_dir is None:
            run_dir = str(Path(cfg.paths.log_dir) / "runs" / "adhoc")
        cfg.paths.run_dir = str(Path(run_dir).resolve())
    Path(cfg.paths.run_dir).mkdir(parents=True, exist_ok=True)
    return cfg


def run(cfg: DictConfig) -> dict:
    """Run the configured stage and return its summary (used by tests and sweeps)."""
    from metacot.config import build

    cfg = prepare(cfg)
    stage = build(cfg.stage)
    return stage.run(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    if os.environ.get("METACOT_PRINT_CONFIG"):
        print(OmegaConf.to_yaml(cfg))
    summary = run(cfg) or {}
    objective = summary.get("objective")
    return float(objective) if objective is not None else None


def main() -> None:
    """Console-script entry (`metacot-train`) and the target of the root `train.py` shim."""
    try:
        _hydra_main()
    except KeyboardInterrupt:
        log.warning("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
