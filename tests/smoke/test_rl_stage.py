"""`stage=rl` end to end on a tiny maze experiment (METACOT_ROOT = a temp dir, in-process):

- without an SFT model it fails naming the SFT command and `init_from=`;
- with the experiment's SFT export in place (a tiny model saved where `stage=sft` exports), it
  finds it with no extra argument, runs GRPO steps, logs every required scalar and the rollout
  table to TensorBoard, writes last.ckpt (policy + reference + RL state), the HF export and
  metrics.json (before / after, evaluator metrics), and the experiment's latest RL export;
- rerun with more steps, it resumes from last.ckpt and trains only the missing step;
- `algo=expert_iteration` runs its rounds through the same stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from metacot.config import build
from metacot.data.tokenizer import load_tokenizer
from metacot.stages.common import experiment_dir
from metacot.stages.datagen import ensure_dataset
from metacot.train import prepare

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "task=maze", "task.size=5", "search=astar", "linearization=searchformer", "model=tiny", "trainer=cpu",
    "data.train=24", "data.val=4", "data.test_unseen=4", "data.workers=1", "data.max_tokens=512",
    "trainer.enable_progress_bar=false", "eval.n_problems=2", "eval.max_new_tokens=8", "eval.num_samples=2",
    "eval.batch_size=8", "rl.prompts_per_step=2", "rl.max_new_tokens=8", "rl.micro_batch_size=3",
    "rl.eval_every=0", "rl.table_every=1",
]
SCALARS = {
    "reward/mean", "reward/std", "reward/outcome", "reward/format", "rollout/solve_rate",
    "rollout/zero_variance_frac", "policy/kl_mean", "policy/entropy", "policy/clip_frac_low",
    "policy/clip_frac_high", "adv/mean", "adv/std", "grad_norm", "response/len_mean", "response/len_max",
    "response/truncated_frac", "perf/rollout_tokens_per_s", "time/rollout_s", "time/logprob_s",
    "time/update_s", "eval/val/solve_rate", "eval/test_unseen/solve_rate", "eval/val/pass@2",
}


def config(root: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str):
    """The composed config, with a fresh run directory per call."""
    monkeypatch.setenv("METACOT_ROOT", str(root))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*OVERRIDES, "stage=rl", *overrides])
    runs = root / "runs"
    return prepare(cfg, run_dir=str(runs / str(len(list(runs.glob("*"))) if runs.exists() else 0)))


def run(cfg):
    return build(cfg.stage).run(cfg)


def fake_sft_export(cfg) -> Path:
    """What `stage=sft` exports, without the training: a tiny model + the dataset tokenizer."""
    tok = load_tokenizer(ensure_dataset(cfg) / "tokenizer")
    torch.manual_seed(0)
    model = build(cfg.model).build(tok, int(cfg.data.max_tokens))
    out = experiment_dir(cfg) / "sft" / "hf"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["tensors"]:
            out.setdefault(tag, [])
    return out


def test_missing_sft_model_names_the_command(tmp_path, monkeypatch):
    cfg = config(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match="python train.py stage=sft") as err:
        run(cfg)
    assert "init_from=" in str(err.value) and str(experiment_dir(cfg) / "sft" / "hf") in str(err.value)
    cfg = config(tmp_path, monkeypatch, f"init_from={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="init_from="):
        run(cfg)


def test_rl_stage_trains_logs_checkpoints_and_resumes(tmp_path, monkeypatch):
    cfg = config(tmp_path, monkeypatch, "rl.steps=2", "algo=grpo", "algo.group_size=3")
    sft = fake_sft_export(cfg)
    summary = run(cfg)
    assert summary["steps"] == 2 and summary["source"] == str(sft)
    out = Path(summary["hf_dir"]).parent
    assert out.parent == experiment_dir(cfg) / "rl" and out.name.startswith("grpo-outcome-")
    latest = experiment_dir(cfg) / "rl" / "hf"  # what `stage=eval stage.source=rl` evaluates
    assert (latest / "config.json").is_file() and (latest / "tokenizer.json").is_file()

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["before"]) == set(metrics["after"]) == {"val", "test_unseen"}
    assert metrics["before"]["val"]["num_problems"] == 2 and "pass@2" in metrics["after"]["val"]
    assert [h["step"] for h in metrics["history"]] == [0, 2]
    assert (Path(cfg.paths.run_dir) / "metrics.json").is_file()
    # like sft's and eval's summaries, RL's names its TensorBoard directory (a run holds several)
    assert Path(summary["tensorboard_dir"]).parent == Path(cfg.paths.run_dir) / "tensorboard"
    assert list(Path(summary["tensorboard_dir"]).glob("events.out.tfevents.*"))
    split = metrics["time_split"]  # median s per step and shares of rollout / log-probs / update
    assert split["steps"] == 2 and min(split["rollout_s"], split["logprob_s"], split["update_s"]) > 0
    assert sum(split[f"{k}_share"] for k in ("rollout", "logprob", "update")) == pytest.approx(1.0)

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["metacot_rl"]["rl_step"] == 2 and ckpt["global_step"] == 2
    assert any(k.startswith("ref_model.") for k in ckpt["state_dict"])  # GRPO keeps a KL reference
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(summary["hf_dir"])
    policy = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    for name, p in exported.state_dict().items():
        if name in policy:
            assert torch.equal(p, policy[name]), name

    tags = scalars(Path(cfg.paths.run_dir))
    assert SCALARS <= set(tags), SCALARS - set(tags)
    assert "rollouts/text_summary" in tags
    assert sorted(s for s, _ in tags["reward/mean"]) == [1, 2]

    # more steps: resumes from last.ckpt (same run directory) and trains only step 3
    cfg2 = config(tmp_path, monkeypatch, "rl.steps=3", "algo=grpo", "algo.group_size=3")
    summary2 = run(cfg2)
    assert summary2["steps"] == 3 and Path(summary2["hf_dir"]).parent == out
    assert [h["step"] for h in summary2["history"]] == [0, 2, 3]  # the step-0 eval came from the checkpoint
    assert sorted(s for s, _ in scalars(Path(cfg2.paths.run_dir))["reward/mean"]) == [3]


def test_expert_iteration_runs_its_rounds(tmp_path, monkeypatch):
    cfg = config(tmp_path, monkeypatch, "algo=expert_iteration", "algo.rounds=2", "algo.samples_per_problem=2",
                 "rl.eval_at_start=false")
    fake_sft_export(cfg)
    summary = run(cfg)
    assert summary["steps"] == 2
    ckpt = torch.load(Path(summary["last_ckpt"]), map_location="cpu", weights_only=False)
    assert ckpt["metacot_rl"]["rl_step"] == 2
    assert not any(k.startswith("ref_model.") for k in ckpt["state_dict"])
    assert "ei/selected" in scalars(Path(cfg.paths.run_dir))
    # a third round extends the same run (rounds is its length, like rl.steps): one more round only
    more = run(config(tmp_path, monkeypatch, "algo=expert_iteration", "algo.rounds=3", "algo.samples_per_problem=2",
                      "rl.eval_at_start=false"))
    assert more["last_ckpt"] == summary["last_ckpt"] and more["steps"] == 3
    assert more["time_split"]["steps"] == 1


def test_pipeline_rl_evaluates_the_rl_model_last(tmp_path, monkeypatch):
    cfg = config(tmp_path, monkeypatch, "stage=pipeline_rl", "rl.steps=1", "rl.eval_at_start=false",
                 "sft.max_steps=2", "sft.warmup_steps=1", "sft.val_every_steps=2", "sft.solve_rate_problems=0",
                 "sft.batch_tokens=2048")
    summary = run(cfg)
    assert [k for k in summary if k != "objective"] == ["datagen", "sft", "eval", "rl", "eval_rl"]
    assert summary["rl"]["source"] == str(experiment_dir(cfg) / "sft" / "hf")
    evaluated = json.loads(Path(summary["eval_rl"]["metrics_path"]).read_text())["config"]["model_source"]
    # its own RL run's export, not <experiment>/rl/hf (the latest of any run: a parallel sweep's other job)
    assert evaluated == summary["rl"]["hf_dir"] != str(experiment_dir(cfg) / "rl" / "hf")
    assert summary["eval_rl"]["metrics"]["val"]["num_problems"] == 2
    # the RL export records what trained it, and the eval reports it (a report labels the model by it)
    info = summary["eval_rl"]["model_info"]
    assert info["source"] == "rl" and info["algo"] == cfg.algo.name and info["reward"] == cfg.reward.name
    assert info["global_step"] >= 1 and summary["eval"]["model_info"]["source"] == "sft"
    assert "algo" not in summary["eval"]["model_info"]
    # TensorBoard: one folder per stage, named by it (not version_0..3)
    assert [Path(summary[s]["tensorboard_dir"]).name for s in ("sft", "eval", "rl", "eval_rl")] == \
        ["sft", "eval", "rl", "eval_rl"]
    # each stage keeps its own files in the run directory: the SFT eval's metrics.json is not
    # overwritten by the RL stage's or the RL eval's (results.json points at each of them)
    run_dir = Path(cfg.paths.run_dir)
    sft_eval = json.loads(Path(summary["eval"]["metrics_path"]).read_text())
    assert sft_eval["config"]["model_source"] == str(experiment_dir(cfg) / "sft" / "hf")
    assert Path(summary["eval"]["metrics_path"]) == run_dir / "metrics.json"
    assert Path(summary["eval_rl"]["metrics_path"]) == run_dir / "eval_rl" / "metrics.json"
    assert (run_dir / "eval_rl" / "problems.json").is_file() and (run_dir / "eval_rl" / "passk.png").is_file()
    assert "before" in json.loads((run_dir / "rl" / "metrics.json").read_text())
