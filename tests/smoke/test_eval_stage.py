"""`stage=eval` end to end on a tiny maze experiment (METACOT_ROOT = a temp dir):

- the default pipeline (datagen -> a 2-step SFT -> eval, a subprocess as users run it) evaluates
  the experiment's HF export and writes metrics.json (both splits), problems.json (one row per
  problem, with the search-behaviour comparison), passk.png and TensorBoard events;
- without an SFT model it fails with the command to run;
- `ckpt=` takes an HF directory or a Lightning .ckpt, and both give the same numbers.

Torch runs one thread: a ~1M-parameter model gains nothing from more, and on a busy 2-core
machine two spinning OpenMP threads made each decode step ~15x slower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "task=maze", "task.size=5", "search=astar", "linearization=searchformer", "model=tiny", "trainer=cpu",
    "data.train=32", "data.val=6", "data.test_unseen=6", "data.workers=1", "data.max_tokens=512",
    "sft.max_steps=2", "sft.warmup_steps=1", "sft.val_every_steps=2", "sft.batch_tokens=2048",
    "sft.solve_rate_problems=0", "sft.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "eval.n_problems=3", "eval.max_new_tokens=16", "eval.num_samples=2", "eval.batch_size=8",
]
KEYS = {"solve_rate", "optimal_rate", "swc", "ilr", "tokens_per_problem", "tokens_per_solve", "fidelity",
        "invalid_format_rate", "model_nodes", "model_backtracks", "model_depth", "symbolic_solve_rate",
        "symbolic_nodes", "symbolic_backtracks", "symbolic_depth", "num_problems", "pass@1", "pass@2",
        "order_similarity/bfs", "order_similarity/dfs", "order_similarity/astar", "order_similarity/mcts"}
ROW_KEYS = {"id", "correct", "optimal", "tokens", "well_formed", "length", "optimal_length", "num_samples",
            "num_correct", "model_stats", "symbolic_solved", "symbolic_tokens", "symbolic_stats", "order_similarity"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "METACOT_ROOT": str(root), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *OVERRIDES, *overrides],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _compose(root: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str):
    from hydra import compose, initialize_config_dir

    from metacot.train import prepare

    monkeypatch.setenv("METACOT_ROOT", str(root))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*OVERRIDES, *overrides])
    return prepare(cfg, run_dir=str(root / "runs" / "_".join(o.split("=")[0] for o in overrides) or "run"))


def test_pipeline_evaluates_the_sft_export(tmp_path):
    res = _train(tmp_path, "stage=pipeline", "hydra.run.dir=" + str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "test_unseen"}
    for split in ("val", "test_unseen"):
        m = metrics["splits"][split]
        assert KEYS <= set(m), KEYS - set(m)
        assert m["num_problems"] == 3
        assert 0.0 <= m["pass@1"] <= m["pass@2"] <= 1.0
        assert m["symbolic_solve_rate"] == 1.0  # A* solves every maze
        assert 0 < m["tokens_per_problem"] <= 16
    assert metrics["config"]["model"] == "sft"
    assert metrics["config"]["model_source"].endswith(str(Path("sft") / "hf"))
    assert (run / "passk.png").read_bytes()[:4] == b"\x89PNG"
    problems = json.loads((run / "problems.json").read_text())
    assert set(problems) == {"val", "test_unseen"}
    for split, rows in problems.items():
        assert len(rows) == metrics["splits"][split]["num_problems"] == 3
        assert all(set(r) == ROW_KEYS for r in rows)
        assert all(set(r["order_similarity"]) == {"bfs", "dfs", "astar", "mcts"} for r in rows)
        assert all(r["num_samples"] == 2 and 0 <= r["num_correct"] <= 2 for r in rows)
        assert sum(r["correct"] for r in rows) / 3 == metrics["splits"][split]["solve_rate"]
        assert len({r["id"] for r in rows}) == 3
    experiments = list((tmp_path / "logs" / "experiments").iterdir())
    assert len(experiments) == 1
    assert json.loads((experiments[0] / "eval" / "metrics.json").read_text())["splits"] == metrics["splits"]
    assert json.loads((experiments[0] / "eval" / "problems.json").read_text()) == problems
    assert not list(run.glob(".*.tmp")) and not list((experiments[0] / "eval").glob(".*.tmp"))
    assert (experiments[0] / "eval" / "passk.png").is_file()
    events = [p for p in (run / "tensorboard").rglob("events.out.tfevents.*")]
    assert len(events) >= 2  # sft's and eval's
    assert "symbolic_solve_rate" in res.stdout and "val (seen)" in res.stdout and "test_unseen (unseen)" in res.stdout


def test_ckpt_hf_dir_and_lightning_ckpt_agree(tmp_path, monkeypatch):
    from metacot.config import build
    from metacot.data.records import read_split
    from metacot.data.tokenizer import load_tokenizer
    from metacot.stages.common import experiment_dir, new_token_budget
    from metacot.stages.datagen import ensure_dataset
    from metacot.stages.eval import EvalStage

    cfg = _compose(tmp_path, monkeypatch)
    tokenizer = load_tokenizer(ensure_dataset(cfg) / "tokenizer")
    torch.manual_seed(0)
    model = build(cfg.model).build(tokenizer, int(cfg.data.max_tokens))
    hf_dir = tmp_path / "some_model"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    ckpt = tmp_path / "step.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 2}, ckpt)

    stage = EvalStage(splits=["val"])
    with pytest.raises(FileNotFoundError, match="python train.py stage=sft"):
        stage.run(cfg)  # no ckpt= and no SFT export for this experiment yet
    with pytest.raises(ValueError, match="available|any of .*astar"):
        stage.run(_compose(tmp_path, monkeypatch, f"ckpt={hf_dir}", "eval.behaviour=[astar,nope]"))
    summary = stage.run(_compose(tmp_path, monkeypatch, f"ckpt={hf_dir}"))
    by_hf = summary["metrics"]["val"]
    assert summary["model_source"] == str(hf_dir)
    assert len(summary["problems"]["val"]) == 3 == by_hf["num_problems"]
    assert json.loads((Path(summary["metrics_path"]).parent / "problems.json").read_text()) == summary["problems"]
    by_ckpt = stage.run(_compose(tmp_path, monkeypatch, f"ckpt={ckpt}"))["metrics"]["val"]
    assert by_hf == pytest.approx(by_ckpt, nan_ok=True)
    assert by_hf["tokens_per_problem"] > 0
    assert not (experiment_dir(cfg) / "eval").exists()  # another model's numbers stay in the run dir

    # eval.max_new_tokens=null (the default): 2 x the longest training completion, recorded in metrics.json
    auto = stage.run(_compose(tmp_path, monkeypatch, f"ckpt={hf_dir}", "eval.max_new_tokens=null",
                              "eval.num_samples=0"))
    budget = new_token_budget(tokenizer, read_split(ensure_dataset(cfg), "train"), 512)
    assert json.loads(Path(auto["metrics_path"]).read_text())["config"]["eval"]["max_new_tokens"] == budget
    assert 16 < budget < 512 and auto["metrics"]["val"]["tokens_per_problem"] <= budget

    with pytest.raises(FileNotFoundError, match="does not exist"):
        stage.run(_compose(tmp_path, monkeypatch, f"ckpt={tmp_path / 'nope'}"))
    bad = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.not_a_weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="same model="):
        stage.run(_compose(tmp_path, monkeypatch, f"ckpt={bad}"))


def test_own_model_results_are_reused_only_while_nothing_changed(tmp_path, monkeypatch):
    """A second identical eval of the experiment's own export (e.g. every job of an `algo=` sweep
    evaluating the same SFT model) reuses the saved results; a changed option, a re-trained model,
    other metacot code, a tampered problems.json or eval.reuse=false evaluate again."""
    import metacot.stages.eval as E
    from metacot.config import build
    from metacot.data.tokenizer import load_tokenizer
    from metacot.stages.common import experiment_dir
    from metacot.stages.datagen import ensure_dataset

    cfg = _compose(tmp_path, monkeypatch, "eval.num_samples=0")
    tokenizer = load_tokenizer(ensure_dataset(cfg) / "tokenizer")
    export = experiment_dir(cfg) / "sft" / "hf"
    torch.manual_seed(0)
    build(cfg.model).build(tokenizer, int(cfg.data.max_tokens)).save_pretrained(export)
    tokenizer.save_pretrained(export)
    calls = []
    real = E.evaluate
    monkeypatch.setattr(E, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    stage = E.EvalStage(splits=["val"])

    def run(*overrides: str) -> tuple[int, dict]:
        before = len(calls)
        summary = stage.run(_compose(tmp_path, monkeypatch, "eval.num_samples=0", *overrides))
        return len(calls) - before, summary

    evaluated, first = run()
    assert evaluated == 1
    evaluated, again = run()
    assert evaluated == 0  # reused
    assert again["metrics"]["val"] == pytest.approx(first["metrics"]["val"], nan_ok=True)
    assert again["problems"] == first["problems"]
    assert json.loads(Path(again["metrics_path"]).read_text())["splits"] == json.loads(
        Path(first["metrics_path"]).read_text())["splits"]  # the new run dir gets the same files
    assert run("eval.reuse=false")[0] == 1
    assert run("eval.n_problems=2")[0] == 1  # another option: evaluated again (and saved in its place)
    assert run()[0] == 1  # ...so the default options' results were replaced
    assert run()[0] == 0
    kept = experiment_dir(cfg) / "eval" / "problems.json"
    kept.write_text(kept.read_text().replace("true", "false"))
    assert run()[0] == 1  # problems.json no longer the one metrics.json vouches for
    assert run()[0] == 0
    monkeypatch.setattr(E, "code_digest", lambda: "another metacot")  # e.g. a fixed parser
    assert run()[0] == 1
    torch.manual_seed(1)
    build(cfg.model).build(tokenizer, int(cfg.data.max_tokens)).save_pretrained(export)  # re-trained weights
    assert run()[0] == 1


def test_reused_results_keep_the_split_order(tmp_path):
    """Saved metrics.json files sort their keys; a reused evaluation still lists its splits in
    `stage.splits` order (its table read `test_unseen` before `val`, unlike the first run's)."""
    import hashlib

    from metacot.atomic import write_json
    from metacot.stages.eval import saved_results

    splits = ["val", "test_unseen"]
    fingerprint = {"splits": splits, "model_files": {}}
    problems = {s: [{"id": 0, "correct": True}] for s in splits}
    write_json(tmp_path / "problems.json", problems)
    digest = hashlib.sha256((tmp_path / "problems.json").read_bytes()).hexdigest()
    write_json(tmp_path / "metrics.json", {
        "splits": {s: {"solve_rate": 1.0} for s in splits}, "examples": {s: [] for s in splits},
        "fingerprint": fingerprint, "problems_sha256": digest})
    metrics, examples, rows = saved_results(tmp_path, fingerprint)
    assert list(metrics) == list(examples) == list(rows) == splits


@pytest.mark.parametrize("overrides, message", [
    (["stage=pipeline", "eval.behaviour=[astar,nope]"], r"eval.behaviour names unknown search algorithms \['nope'\]"),
    (["stage=eval", "linearization=compact", "eval.force_mode=slow"], "eval.force_mode='slow'"),
    (["stage=eval", "stage.source=foo"], "stage.source must be one of"),
    (["stage=eval", "stage.splits=[val,train2]"], r"stage.splits names unknown splits \['train2'\]"),
])
def test_eval_options_fail_up_front_as_usage_errors(tmp_path, monkeypatch, overrides, message):
    """A mistake in an eval option is a UsageError (one `error:` line, no traceback) raised before any
    work: building the stage or `trace_engine`, which every stage calls first — not after a pipeline's
    datagen and SFT (eval.behaviour), nor as a raw KeyError (a split) or a `stage=foo` suggestion."""
    from metacot.config import build
    from metacot.errors import UsageError
    from metacot.stages.common import trace_engine

    cfg = _compose(tmp_path, monkeypatch, *overrides)
    with pytest.raises(UsageError, match=message):
        build(cfg.stage)
        trace_engine(cfg)
    assert not (tmp_path / "logs" / "data").exists()  # nothing was built
