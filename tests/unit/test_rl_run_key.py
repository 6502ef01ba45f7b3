"""The RL run directory's key: what an RL run resumes must have started from the same weights."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from metacot.config import build
from metacot.stages.rl import run_key

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_a_retrained_start_model_is_another_run_and_its_export_record_is_not_part_of_it(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=rl", "algo=grpo"])
    options = build(cfg.rl)
    model = tmp_path / "sft" / "hf"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights v1")
    (model / "metacot_export.json").write_text('{"global_step": 10}')
    first = run_key(cfg, options, str(model))
    assert first.startswith("grpo-outcome-") and run_key(cfg, options, str(model)) == first
    (model / "metacot_export.json").write_text('{"global_step": 10, "run": "x"}')  # bookkeeping only
    assert run_key(cfg, options, str(model)) == first
    (model / "model.safetensors").write_bytes(b"weights v2")  # SFT trained again (sft.resume=never)
    assert run_key(cfg, options, str(model)) != first
