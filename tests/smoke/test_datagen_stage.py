"""`python train.py stage=datagen ...` end to end, as a user runs it (a subprocess, METACOT_ROOT
relocating every path), and the errors a user gets for a bad command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metacot.data.records import SPLITS, read_manifest, read_split
from metacot.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def train(root: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "METACOT_ROOT": str(root), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(REPO / "train.py"), "stage=datagen", *overrides],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def dataset_dirs(root: Path) -> list[Path]:
    data = root / "logs" / "data"
    return sorted(p for p in data.iterdir() if not p.name.startswith(".")) if data.is_dir() else []


@pytest.mark.parametrize(("task", "search", "lin", "extra", "again"), [
    ("countdown", "astar", "sos", ["data.train=200"], True),
    ("maze", "mcts", "searchformer", ["data.train=60", "task.size=5", "search.max_expansions=200"], False),
])
def test_datagen_builds_then_reuses(tmp_path, task, search, lin, extra, again):
    args = [f"task={task}", f"search={search}", f"linearization={lin}", *extra,
            "data.val=20", "data.test_unseen=20", "data.workers=2", "data.shard_size=50", "data.keep_unsolved=true"]
    out = train(tmp_path, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    [d] = dataset_dirs(tmp_path)
    assert d.name.startswith(f"{task}-{search}-{lin}-")
    assert f"dataset: {d}" in out.stdout and "test_unseen" in out.stdout
    m = read_manifest(d)
    assert m["counts"]["val"] == m["counts"]["test_unseen"] == 20 and m["counts"]["train"] == m["problems"]["train"]
    assert m["config"]["task"]["name"] == task and m["config"]["search"]["name"] == search
    assert json.loads((d / "build_stats.json").read_text())["workers"] == 2 and len(m["shards"]["train"]) > 1
    tok = load_tokenizer(d / "tokenizer")
    for split in SPLITS:
        recs = read_split(d, split)
        assert len(recs) == m["counts"][split] > 0
        r = recs[0]
        assert r["trace_tokens"] == len(tok(r["completion"], add_special_tokens=False)["input_ids"])
        assert tok.unk_token_id not in tok(r["prompt"] + "\n" + r["completion"])["input_ids"]
    if again:  # a second run finds the dataset by its hash and does not rebuild it
        stamp = (d / "manifest.json").stat().st_mtime_ns
        out = train(tmp_path, *args)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"dataset: {d}" in out.stdout
        assert dataset_dirs(tmp_path) == [d] and (d / "manifest.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("override", "message"), [
    ("search=nope", "Could not find 'search/nope'"),
    ("data.trian=5", "trian"),
    ("data.overlong=maybe", "data.overlong must be one of"),
])
def test_bad_command_line_is_a_message_not_a_traceback(tmp_path, override, message):
    out = train(tmp_path, "task=countdown", "data.train=10", override, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr and "src/metacot" not in out.stderr
    assert dataset_dirs(tmp_path) == []


def test_a_search_the_task_cannot_run_is_a_message_before_any_worker(tmp_path):
    out = train(tmp_path, "task=maze", "search=dfs_sos", "data.train=20", "data.val=4", "data.test_unseen=4",
                "data.workers=2", timeout=120)
    assert out.returncode != 0
    assert "error: invalid configuration: search.prune_threshold='target' names no numeric field" in out.stderr
    assert "Traceback" not in out.stderr and "src/metacot" not in out.stderr
    assert dataset_dirs(tmp_path) == [] and not any((tmp_path / "logs" / "data").iterdir())  # no leftovers


def test_splits_left_empty_are_a_warning_that_says_why(tmp_path):
    out = train(tmp_path, "task=maze", "data.train=20", "data.val=4", "data.test_unseen=0", "data.max_tokens=10",
                "data.workers=1", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: split")]
    assert len(warnings) == 2, out.stderr[-3000:]  # train and val; test_unseen asked for none
    assert warnings[0].startswith("warning: split train has 0 records although data.train=20: 20 of its 20 traces "
                                  "were longer than data.max_tokens=10 and dropped (data.overlong=drop)")
    assert "raise data.max_tokens or set data.overlong=keep" in warnings[0] and "split val" in warnings[1]
