"""`stage=sft` end to end on a tiny maze experiment (METACOT_ROOT = a temp dir), run as users run
it: checkpoints, an HF export that loads on its own, TensorBoard scalars/text/hparams; then a
second run resumes (and says there is nothing left), and changed settings refuse to resume."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "task=maze", "task.size=5", "search=astar", "linearization=searchformer", "model=tiny", "trainer=cpu",
    "data.train=48", "data.val=6", "data.test_unseen=4", "data.workers=1", "data.max_tokens=512",
    "sft.max_steps=4", "sft.warmup_steps=1", "sft.val_every_steps=2", "sft.batch_tokens=2048",
    "sft.solve_rate_problems=2", "sft.solve_rate_max_new_tokens=24", "sft.log_every_n_steps=1",
    "sft.ckpt_every_steps=2", "trainer.enable_progress_bar=false",
]


def _compose(root: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str):
    from hydra import compose, initialize_config_dir

    from metacot.train import prepare

    monkeypatch.setenv("METACOT_ROOT", str(root))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=sft", *OVERRIDES, *overrides])
    return prepare(cfg, run_dir=str(root / "runs" / ("_".join(overrides) or "again")))


def _tags(run_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events under {run_dir}"
    tags: dict[str, set[str]] = {}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        for kind, names in acc.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, set()).update(names)
    return {k: sorted(v) for k, v in tags.items()}


def test_sft_stage_trains_exports_logs_and_resumes(tmp_path, monkeypatch, caplog):
    env = {**os.environ, "METACOT_ROOT": str(tmp_path), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run_sft"
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "stage=sft", *OVERRIDES,
                          f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    [exp] = list((tmp_path / "logs" / "experiments").iterdir())
    sft = exp / "sft"
    assert (sft / "checkpoints" / "last.ckpt").is_file() and (sft / "checkpoints" / "best.ckpt").is_file()
    assert torch.load(sft / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 4
    assert json.loads((sft / "run_config.json").read_text())["lr"] == 3e-3

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sft / "hf", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(sft / "hf")
    ids = torch.tensor([[tok.bos_token_id, *tok.encode("plan", add_special_tokens=False)]])
    assert model(ids).logits.shape[-1] == len(tok)

    tags = _tags(run_dir)
    assert {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/fill",
            "val/loss", "val/solve_rate"} <= set(tags["scalars"]), tags["scalars"]
    assert any("val/samples" in t for t in tags["tensors"]), tags  # the table of sampled val traces
    [hparams] = list((run_dir / "tensorboard").rglob("hparams.yaml"))  # the composed config, flattened
    assert "sft/lr: 0.003" in hparams.read_text() and "task/name: maze" in hparams.read_text()

    # the same command again: resumes from last.ckpt, trains nothing, says so, keeps the export
    from metacot.modules.export import EXPORT_INFO
    from metacot.train import run

    assert json.loads((sft / "hf" / EXPORT_INFO).read_text()) == {"global_step": 4}
    stamps = {p.name: p.stat().st_mtime_ns for p in (sft / "hf").iterdir()}
    caplog.set_level(logging.INFO)
    summary = run(_compose(tmp_path, monkeypatch))
    assert summary["steps"] == 4 and "nothing left to do" in caplog.text and "not exported again" in caplog.text
    assert summary["val_loss"] is not None and Path(summary["hf_dir"]) == sft / "hf"
    assert {p.name: p.stat().st_mtime_ns for p in (sft / "hf").iterdir()} == stamps
    # an export older than the checkpoint (a run stopped between its last save and its export) is redone
    (sft / "hf" / EXPORT_INFO).write_text(json.dumps({"global_step": 3}))
    run(_compose(tmp_path, monkeypatch))
    assert json.loads((sft / "hf" / EXPORT_INFO).read_text()) == {"global_step": 4}
    assert sorted(p.name for p in sft.iterdir() if p.name.startswith(".")) == []  # no staging left behind

    # a checkpoint whose recorded settings differ from this run's is refused, never resumed silently
    recorded = json.loads((sft / "run_config.json").read_text())
    (sft / "run_config.json").write_text(json.dumps({**recorded, "lr": 0.5}))
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.5 -> 0.003\).*sft.resume=never"):
        run(_compose(tmp_path, monkeypatch))
    # ... and so is one trained on other data (the dataset rebuilt by changed code: other bytes)
    assert recorded["dataset"]  # the dataset's content digest
    (sft / "run_config.json").write_text(json.dumps({**recorded, "dataset": "0" * 16}))
    with pytest.raises(ValueError, match=r"trained on other data.*sft.resume=never.*ckpt=.*hf"):
        run(_compose(tmp_path, monkeypatch))
    (sft / "run_config.json").write_text(json.dumps({k: v for k, v in recorded.items() if k != "dataset"}))
    assert run(_compose(tmp_path, monkeypatch))["steps"] == 4  # recorded before datasets were: resumed

    # other SFT settings (or another seed) are another experiment, in a directory of its own
    other = run(_compose(tmp_path, monkeypatch, "sft.lr=1e-3", "sft.max_steps=2"))
    assert other["steps"] == 2 and Path(other["hf_dir"]).parent.parent != exp


def test_train_tokens_sets_the_step_count_from_the_packing_fill(tmp_path, monkeypatch):
    """Equal-token comparisons: `sft.train_tokens` trains on that many real tokens (to one step)."""
    from metacot.train import run

    budget, batch = 6000, 2048
    summary = run(_compose(tmp_path, monkeypatch, f"sft.train_tokens={budget}", "sft.max_steps=100",
                           "sft.solve_rate_problems=0", "sft.export_hf=false"))
    per_step = batch * summary["fill"]
    assert summary["steps"] == -(-budget // per_step) and summary["steps"] < 100
    assert budget <= summary["train_tokens"] < budget + per_step + 1
    assert summary["num_parameters"] > 0


def test_checkpoints_stay_in_last_ckpt_across_a_stop_and_a_resume(tmp_path, monkeypatch):
    """A run stopped early (Ctrl-C) and resumed keeps saving to `last.ckpt`, the one file a resume
    reads: Lightning's version counter once sent the resumed run's periodic saves to last-v1.ckpt."""
    import metacot.stages.sft as sft_stage
    from metacot.modules.callbacks import StopAndSave
    from metacot.train import run

    class StopAtTwo(StopAndSave):  # a Ctrl-C during step 2 of the first run
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2 and not getattr(self, "once", False):
                self.once = self._requested = True
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    extra = ("sft.ckpt_every_steps=3", "sft.max_steps=5", "sft.export_hf=false", "sft.solve_rate_problems=0")
    monkeypatch.setattr(sft_stage, "StopAndSave", StopAtTwo)
    with pytest.raises(KeyboardInterrupt):
        run(_compose(tmp_path, monkeypatch, *extra))
    [exp] = list((tmp_path / "logs" / "experiments").iterdir())
    ckpts = exp / "sft" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    monkeypatch.setattr(sft_stage, "StopAndSave", StopAndSave)
    saved = []  # every checkpoint file the resumed run writes, in order
    real_save = sft_stage.L.Trainer.save_checkpoint
    monkeypatch.setattr(sft_stage.L.Trainer, "save_checkpoint",
                        lambda self, path, *a, **k: (saved.append((Path(path).name, self.global_step)),
                                                     real_save(self, path, *a, **k))[1])
    assert run(_compose(tmp_path, monkeypatch, *extra))["steps"] == 5
    assert ("last.ckpt", 3) in saved and {name for name, _ in saved} <= {"last.ckpt", "best.ckpt"}, saved
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_run_shorter_than_the_validation_interval_still_has_a_best_checkpoint(tmp_path, monkeypatch):
    """With sft.max_steps below sft.val_every_steps the only validation is the closing one, after
    fit: its weights become best.ckpt and its score the summary's best (both were None)."""
    from metacot.train import run

    summary = run(_compose(tmp_path, monkeypatch, "sft.max_steps=2", "sft.val_every_steps=5",
                           "sft.solve_rate_problems=0", "sft.export_hf=false"))
    assert summary["steps"] == 2
    assert summary["best_loss"] is not None and summary["best_loss"] == pytest.approx(summary["val_loss"])
    best = torch.load(summary["best_ckpt"], map_location="cpu", weights_only=False)
    assert Path(summary["best_ckpt"]).name == "best.ckpt" and best["global_step"] == 2
