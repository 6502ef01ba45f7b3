"""Atomic JSON files (`metacot.atomic`): what a reader sees, and who may read it."""

from __future__ import annotations

import json
import os
import stat

import pytest

from metacot.atomic import umask, write_json


@pytest.fixture
def set_umask():
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=oct)
def test_written_json_honours_the_umask(tmp_path, set_umask, mask):
    set_umask(mask)
    assert umask() == mask
    path = tmp_path / "sub" / "results.json"
    write_json(path, {"x": 1.0, "bad": float("nan")})
    assert json.loads(path.read_text()) == {"bad": None, "x": 1.0}
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's owner-only 0600
    write_json(path, {"x": 2})  # replacing it keeps the same mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left


class Unprintable:
    def __str__(self):
        raise RuntimeError("no text for this")


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"ok": True})
    with pytest.raises(RuntimeError, match="no text"):
        write_json(path, {"x": Unprintable()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
