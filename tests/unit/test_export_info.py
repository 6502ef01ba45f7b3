"""The export's provenance record: `publish(info=...)` merges into `EXPORT_INFO`, `export_info` reads
it back and never raises (eval and the report use it to name what trained a model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metacot.modules.export import EXPORT_INFO, export_info, export_step, publish


def staged_export(root: Path, step: int = 7, name: str = ".hf-staged") -> Path:
    """What `export_hf` leaves on rank 0: weights and the step record."""
    staged = root / name
    staged.mkdir(parents=True)
    (staged / "config.json").write_text("{}")
    (staged / EXPORT_INFO).write_text(json.dumps({"global_step": step}) + "\n")
    return staged


def test_publish_merges_info_next_to_the_step(tmp_path: Path):
    target = tmp_path / "hf"
    publish(staged_export(tmp_path), target, True, info={"stage": "rl", "algo": "rloo", "reward": "outcome"})
    assert export_info(target) == {"global_step": 7, "stage": "rl", "algo": "rloo", "reward": "outcome"}
    assert export_step(target) == 7
    assert not (tmp_path / ".hf-staged").exists()


def test_publish_without_info_keeps_the_record_and_replaces_the_old_export(tmp_path: Path):
    target = tmp_path / "hf"
    publish(staged_export(tmp_path, 3), target, True, info={"algo": "grpo"})
    publish(staged_export(tmp_path, 9), target, True)
    assert json.loads((target / EXPORT_INFO).read_text()) == {"global_step": 9}  # the old algo went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_publish_on_other_ranks_does_nothing(tmp_path: Path):
    staged = staged_export(tmp_path)
    publish(staged, tmp_path / "hf", False, info={"algo": "rloo"})
    assert not (tmp_path / "hf").exists() and export_info(staged) == {"global_step": 7}


@pytest.mark.parametrize("content", [None, "", "{not json", "[1, 2]", "\xff\xfe"])
def test_export_info_is_empty_when_missing_or_unreadable(tmp_path: Path, content: str | None):
    if content is not None:
        (tmp_path / EXPORT_INFO).write_bytes(content.encode("latin-1"))
    assert export_info(tmp_path) == {}
    assert export_info(tmp_path / "no_such_dir") == {}
    assert export_step(tmp_path) is None


def test_export_step_without_a_step_is_none(tmp_path: Path):
    (tmp_path / EXPORT_INFO).write_text(json.dumps({"algo": "rloo", "global_step": None}))
    assert export_step(tmp_path) is None and export_info(tmp_path)["algo"] == "rloo"
