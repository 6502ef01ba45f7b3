"""`stages.common.stage_logger`: TensorBoard folders named by stage, never reused by a rerun."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from metacot.stages.common import stage_logger

CONF = Path(__file__).resolve().parents[2] / "conf"


def cfg(run_dir: Path, logger: dict | None = None):
    return OmegaConf.create({"paths": {"run_dir": str(run_dir)},
                             "logger": logger or OmegaConf.load(CONF / "logger" / "tensorboard.yaml")})


def test_each_stage_logs_to_a_folder_named_after_it_and_a_rerun_to_the_next(tmp_path):
    first = stage_logger(cfg(tmp_path), "sft")
    first.log_metrics({"x": 1.0}, step=0)
    first.finalize("success")
    assert Path(first.log_dir) == tmp_path / "tensorboard" / "sft"
    assert Path(stage_logger(cfg(tmp_path), "sft").log_dir).name == "sft_2"  # the first one's events stay apart
    assert Path(stage_logger(cfg(tmp_path), "eval_rl").log_dir).name == "eval_rl"


def test_other_loggers_keep_their_own_versioning(tmp_path):
    """A logger whose `version` is not a folder (e.g. a run id) is built as configured."""
    logger = stage_logger(cfg(tmp_path, {"_target_": "tests.unit.test_stage_logger.Recorder"}), "sft")
    assert logger.kwargs == {"save_dir": str(tmp_path)}


class Recorder:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
