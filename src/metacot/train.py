"""Entry point: `python train.py stage=<datagen|sft|eval|rl|pipeline> task=... search=...`.

Composes the config with Hydra, records where this run writes, and hands the config to the
selected stage (`conf/stage/<name>.yaml` names the stage class; no string switch here).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from metacot import interrupts
from metacot.config import CONF_DIR as CONF_PATH
from metacot.sweep import register_resolvers

CONF_DIR = str(CONF_PATH)
log = logging.getLogger("metacot")
register_resolvers()  # names of sweep and job directories (conf/hydra/default.yaml)


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
    return run_job(cfg)


def run_job(cfg: DictConfig) -> float | None:
    """One job with its `results.json` record. Under `-m`: a job complete for the same config is
    skipped (`rerun=true` runs it again), and a job that raises is recorded as failed without
    stopping the sweep. A single run re-raises, so its exit status says what happened."""
    from metacot.errors import UsageError
    from metacot.stages.base import Terminated
    from metacot.sweep import JobRecord, objective_of, stage_summaries

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    cfg = prepare(cfg)
    record = JobRecord(cfg, Path(cfg.paths.run_dir), list(hc.overrides.task))
    if multirun and not cfg.get("rerun", False):
        previous = record.previous()
        if previous is not None:
            log.info("job already complete in %s: skipped (rerun=true runs it again)", cfg.paths.run_dir)
            record.skip(previous)
            return objective_of(previous.get("stages") or {})
    record.start()
    try:
        summary = run(cfg) or {}
        interrupts.raise_if_received()  # a SIGTERM whose exception was swallowed somewhere: still a stop
    except (KeyboardInterrupt, Terminated) as e:  # told to stop: the whole sweep stops
        record.finish("interrupted", error=e)
        raise
    except BaseException as e:
        if interrupts.sigterm_received():  # SIGTERM struck inside an import or a library: another error came out
            record.finish("interrupted", error=e)
            raise interrupts.SignalTerminated("SIGTERM") from e
        if not isinstance(e, (Exception, SystemExit)):
            raise
        # this job failed (SystemExit: a user error with its message)
        record.finish("failed", error=e)
        if not multirun:
            # the message says what to do; a traceback would not help (HYDRA_FULL_ERROR=1, Hydra's own
            # switch, shows it: e.g. a TypeError inside your own task's constructor)
            if isinstance(e, UsageError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                raise SystemExit(f"error: {e}") from None
            raise
        log.error("job failed (the sweep goes on): %s: %s\n  details: %s", type(e).__name__, e, record.path)
        return None
    record.finish("complete", stage_summaries(str(cfg.stage.get("name", "stage")), summary))
    objective = summary.get("objective")
    return float(objective) if objective is not None else None


def main() -> None:
    """Console-script entry (`metacot-train`) and the target of the root `train.py` shim.
    Ctrl-C exits with 130 and SIGTERM with 143, each after its job is recorded as interrupted."""
    from metacot.stages.base import Terminated

    interrupts.install()
    try:
        _hydra_main()
    except interrupts.SignalTerminated:
        log.warning("terminated (SIGTERM)")
        sys.exit(SIGTERM_STATUS)
    except KeyboardInterrupt:
        log.warning("interrupted")
        sys.exit(130)
    except Terminated as e:
        if e.code not in (None, SIGTERM_STATUS):
            print(e.code, file=sys.stderr)
        sys.exit(SIGTERM_STATUS)


SIGTERM_STATUS = 128 + signal.SIGTERM


if __name__ == "__main__":
    main()
