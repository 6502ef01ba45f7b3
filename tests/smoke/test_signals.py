"""SIGTERM (a cluster's preemption, `timeout`, `kill`) outside a training loop: the run stops at
once with status 143 and its `results.json` says interrupted, as Ctrl-C does (training loops save a
checkpoint first: tests/unit/test_sft_module.py, tests/slow/test_rl_resume.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_datagen_is_recorded_as_interrupted(tmp_path, workers):
    env = {**os.environ, "METACOT_ROOT": str(tmp_path), "TOKENIZERS_PARALLELISM": "false"}
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "stage=datagen", "task=countdown", "search=bfs",
         "linearization=sos", "data.train=200000", f"data.workers={workers}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = run_dir / "results.json"
    deadline = time.monotonic() + 120
    while not (results.is_file() and json.loads(results.read_text()).get("status") == "running"):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.1)
    time.sleep(2.0)  # well into the build
    if workers > 1 and not Path("/proc/self/task").is_dir():  # no /proc to see the pool: give it time
        time.sleep(5.0)
    while workers > 1 and Path("/proc/self/task").is_dir() and not _children(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "the worker pool never started"
        time.sleep(0.2)  # the pool's workers too (they get SIGTERM from it)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    record = json.loads(results.read_text())
    assert record["status"] == "interrupted", record
    assert "Traceback" not in err, err[-3000:]
    assert not list((tmp_path / "logs" / "data").glob("*/manifest.json"))  # no dataset passed as complete


def _children(pid: int) -> list[str]:
    """Child process ids of `pid` (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
