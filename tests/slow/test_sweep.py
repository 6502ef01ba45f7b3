"""A real `-m` sweep, as users run it: two whole pipelines (datagen -> sft -> eval), each in its own
directory with results.json; the same command again skips them; the report tabulates them; and a
failing job is recorded without stopping the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "task.size=4", "data.train=64", "data.val=8", "data.test_unseen=8", "data.workers=1",
    "sft.max_steps=3", "sft.warmup_steps=1", "sft.batch_tokens=1024", "sft.val_every_steps=3",
    "sft.solve_rate_problems=2", "sft.log_every_n_steps=1", "eval.n_problems=4", "eval.num_samples=2",
    "trainer.enable_progress_bar=false",
]


def _sweep(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "METACOT_ROOT": str(root), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *overrides], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)


def _jobs(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "logs" / "sweeps").glob("*/*/results.json")}


def test_pipeline_sweep_runs_skips_and_reports(tmp_path):
    res = _sweep(tmp_path, "search=astar,bfs", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _jobs(tmp_path)
    assert len(jobs) == 2 and all(j["status"] == "complete" for j in jobs.values()), jobs.keys()
    by_search = {j["config"]["search"]["name"]: j for j in jobs.values()}
    assert set(by_search) == {"astar", "bfs"}
    assert {n.split(",")[0] for n in jobs} == {"search=astar", "search=bfs"}  # the swept key leads each name
    for job in by_search.values():
        assert set(job["stages"]) == {"datagen", "sft", "eval"}
        assert job["stages"]["sft"]["steps"] == 3
        assert 0.0 <= job["stages"]["eval"]["metrics"]["test_unseen"]["solve_rate"] <= 1.0
    [sweep_dir] = list((tmp_path / "logs" / "sweeps").iterdir())
    from metacot.sweep import _name

    assert sweep_dir.name == _name(",".join(sorted(["search=astar,bfs", *TINY])))  # named after the command
    assert (sweep_dir / "sweep.json").is_file()

    again = _sweep(tmp_path, "search=astar,bfs", *TINY)  # the same command: nothing to run
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") >= 2 and "pipeline: running stage" not in again.stderr
    assert {k: v["started"] for k, v in _jobs(tmp_path).items()} == {k: v["started"] for k, v in jobs.items()}

    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "metacot.report", str(sweep_dir), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rep.returncode == 0, rep.stderr[-3000:]
    report = (out / "report.md").read_text()
    for search, job in by_search.items():
        rate = job["stages"]["eval"]["metrics"]["test_unseen"]["solve_rate"]
        assert search in report
        assert f"{100 * rate:.1f}" in report or f"{rate:.3f}" in report, (search, rate)
    assert (out / "runs.csv").is_file()


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    res = _sweep(tmp_path, "stage=datagen", "task.size=4,1", "data.train=16", "data.val=4", "data.test_unseen=4",
                 "data.workers=1")
    assert res.returncode != 0  # the sweep says a job failed ...
    statuses = {j["config"]["task"]["size"]: j["status"] for j in _jobs(tmp_path).values()}
    assert statuses == {4: "complete", 1: "failed"}  # ... after the other one ran
    failed = next(j for j in _jobs(tmp_path).values() if j["status"] == "failed")
    assert "Traceback" in failed["error"] and failed["error_message"]
    assert "did not complete" in res.stderr + res.stdout
