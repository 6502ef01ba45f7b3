"""Job records and sweep naming (metacot.sweep): what makes a sweep re-runnable and collision-free."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from metacot import sweep
from metacot.sweep import JobRecord, job_hash, job_id, read_results, stage_summaries, write_json

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(overrides=(), hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def test_job_names_are_readable_safe_and_distinct():
    assert job_id("search=mcts,seed=1") == "search=mcts,seed=1"
    assert job_id("") == "default"
    odd = job_id("model.path=/data/my model")
    assert "/" not in odd and " " not in odd
    assert odd != job_id("model.path=/data/my_model")  # sanitised names keep a hash of the original
    long_a, long_b = job_id("x=" + "a" * 300), job_id("x=" + "a" * 299 + "b")
    assert len(long_a) <= sweep.MAX_NAME and long_a != long_b


def test_swept_keys_come_first_in_job_names_so_long_names_keep_them(monkeypatch):
    args = ["search=mcts,astar", "seed=1", "algo=choice(grpo,rloo)", "x=[1,2]", "+lr=range(1,3)", "y='a,b'"]
    assert sweep.swept_keys(args) == ["search", "algo", "lr"]  # lists and quoted commas are not sweeps
    monkeypatch.setattr(sweep.sys, "argv", ["train.py", "-m", *args])
    monkeypatch.delenv(sweep.SWEPT_ENV, raising=False)
    sweep.sweep_id()  # the launching process records the swept keys for the jobs
    filler = ",".join(f"eval.option_{i}={i}" for i in range(12))
    name = job_id(f"+lr=2,{filler},eval.behaviour=[bfs,dfs],search=mcts,seed=1")
    assert name.startswith("+lr=2,search=mcts,eval.option_0=0") and len(name) <= sweep.MAX_NAME
    assert name != job_id(f"+lr=2,{filler},eval.behaviour=[bfs,dfs],search=astar,seed=1")
    monkeypatch.setenv(sweep.SWEPT_ENV, "")
    assert job_id("b=1,a=2") == "b=1,a=2"  # nothing swept: Hydra's order
    # an experiment file's `hydra.sweeper.params` are swept too (`-m experiment=metacot_cpu`)
    assert job_id("a=2,experiment=x,search=mcts", {"search": "astar,mcts"}) == "search=mcts,a=2,experiment=x"


def test_sweep_identity_ignores_flags_and_launcher_settings():
    args = ["-m", "search=mcts,astar", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "rerun=true",
            "--config-name", "config", "seed=1"]
    assert sweep._identity_overrides(args) == ["search=mcts,astar", "seed=1"]


def test_job_hash_ignores_paths_and_rerun_but_not_options():
    base = _compose(["paths.root_dir=/tmp/a"])
    assert job_hash(base) == job_hash(_compose(["paths.root_dir=/tmp/b", "rerun=true"]))
    assert job_hash(base) != job_hash(_compose(["seed=1"]))
    assert job_hash(base) != job_hash(_compose(["search=bfs"]))


def test_record_lifecycle_and_skip_only_for_the_same_config(tmp_path):
    cfg = _compose()
    rec = JobRecord(cfg, tmp_path, ["seed=0"])
    rec.start()
    assert read_results(tmp_path)["status"] == "running"
    assert JobRecord(cfg, tmp_path, []).previous() is None  # running is not complete
    rec.finish("complete", {"sft": {"objective": 0.5, "loss": float("nan")}})
    data = read_results(tmp_path)
    assert data["status"] == "complete" and data["stages"]["sft"]["loss"] is None  # strict JSON
    assert data["config"]["task"]["name"] == "maze" and "hydra" not in data["config"]
    assert JobRecord(cfg, tmp_path, []).previous()["stages"]["sft"]["objective"] == 0.5
    assert JobRecord(_compose(["seed=3"]), tmp_path, []).previous() is None  # other config: runs again


def test_skipping_a_complete_job_keeps_its_timings(tmp_path):
    """Re-running a sweep marks its complete jobs skipped without overwriting when they ran and how
    long they took (the report's wall_s column read 0.0 for every job of a re-run sweep)."""
    cfg = _compose()
    rec = JobRecord(cfg, tmp_path, [])
    rec.start()
    rec.finish("complete", {"eval": {"objective": 0.5}})
    first = read_results(tmp_path)
    first["wall_s"] = 12.5  # a job that took a while
    write_json(tmp_path / "results.json", first)
    again = JobRecord(cfg, tmp_path, [])
    again.skip(again.previous())
    data = read_results(tmp_path)
    assert data["skipped"] is True and data["status"] == "complete"
    assert {k: data[k] for k in ("wall_s", "started", "finished", "stages")} == {
        k: first[k] for k in ("wall_s", "started", "finished", "stages")}


def test_failed_record_keeps_the_traceback_and_a_one_line_reason(tmp_path):
    rec = JobRecord(_compose(), tmp_path, [])
    try:
        raise FileNotFoundError("no SFT model here\nTrain it first with ...")
    except FileNotFoundError as e:
        rec.finish("failed", error=e)
    data = read_results(tmp_path)
    assert data["status"] == "failed"
    assert data["error_message"] == "FileNotFoundError: no SFT model here"
    assert "Traceback" in data["error"]


def test_partial_or_corrupt_results_count_as_absent(tmp_path):
    (tmp_path / "results.json").write_text('{"status": "compl')
    assert read_results(tmp_path) is None
    write_json(tmp_path / "results.json", {"status": "complete"})
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "complete"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_pipeline_summary_becomes_one_entry_per_stage():
    summary = {"datagen": {"dataset_dir": "d"}, "sft": {"steps": 3}, "objective": 0.7}
    assert stage_summaries("pipeline_rl", summary) == {"datagen": {"dataset_dir": "d"}, "sft": {"steps": 3}}
    assert stage_summaries("eval", {"objective": 0.7}) == {"eval": {"objective": 0.7}}


def test_sweep_dirs_come_from_the_overrides():
    sweep.register_resolvers()
    cfg = _compose(["search=bfs", "seed=2"], hydra=True)
    assert cfg.hydra.sweep.subdir == "search=bfs,seed=2"
    assert str(cfg.hydra.sweep.dir).startswith(f"{cfg.paths.log_dir}/sweeps/")


@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_submitit_launchers_compose(launcher):
    cfg = _compose([f"hydra/launcher={launcher}"], hydra=True)
    cls = get_class(cfg.hydra.launcher._target_)
    assert cls.__module__.startswith("hydra_plugins.hydra_submitit_launcher")
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.partition is None
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_experiment_key_separates_seeds_and_budgets_and_missing_models_name_the_others(tmp_path):
    from metacot.stages.common import experiment_dir, experiment_key, other_trainings

    base = _compose([f"paths.root_dir={tmp_path}"])
    keys = {experiment_key(base), experiment_key(_compose(["seed=1"])), experiment_key(_compose(["sft.max_steps=9"])),
            experiment_key(_compose(["sft.train_tokens=1000"]))}
    assert len(keys) == 4
    assert experiment_key(base) == experiment_key(_compose(["sft.log_every_n_steps=3", "algo=rloo"]))
    assert other_trainings(base) == ""
    trained = experiment_dir(_compose([f"paths.root_dir={tmp_path}", "seed=7"])) / "sft" / "hf"
    trained.mkdir(parents=True)
    (trained / "config.json").write_text("{}")
    assert str(trained) in other_trainings(base) and "init_from=" in other_trainings(base)
    # data options (e.g. data.test_unseen) are part of the key too: the hint must say so
    assert experiment_key(base) != experiment_key(_compose(["data.test_unseen=8"]))
    assert "data.*" in other_trainings(base)
    assert other_trainings(_compose([f"paths.root_dir={tmp_path}", "search=bfs"])) == ""
