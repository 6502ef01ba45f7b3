"""`metacot.locks.exclusive`: the second holder waits for the first, and is told who holds it."""

from __future__ import annotations

import logging
import threading

import pytest

from metacot.locks import exclusive
from metacot.ranks import RANK_VARIABLES


@pytest.fixture(autouse=True)
def _rank_zero(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_second_holder_waits_until_the_first_is_done(tmp_path, caplog, monkeypatch):
    path, order = tmp_path / "exp" / ".lock", []
    entered = threading.Event()

    def second():
        with exclusive(path, "experiment X"):
            order.append("second")
            entered.set()

    with caplog.at_level(logging.WARNING, logger="metacot.locks"), exclusive(path, "experiment X"):
        assert "pid" in path.read_text()  # who holds it, for the waiting run's message
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.5)  # blocked while the first holds the lock
        order.append("first")
    thread.join(timeout=30)
    assert entered.is_set() and order == ["first", "second"]
    assert "experiment X is in use by" in caplog.text and "waiting" in caplog.text
    assert path.read_text() == ""  # released: no holder named


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_only_rank_zero_locks(tmp_path, monkeypatch, variable):
    """The other ranks of a job (torchrun's RANK, Lightning's LOCAL_RANK/NODE_RANK, srun's
    SLURM_PROCID) must not wait for the lock rank 0 holds: rank 0 waits for them inside fit."""
    path = tmp_path / ".lock"
    with exclusive(path, "x"):
        monkeypatch.setenv(variable, "1")
        with exclusive(path, "x"):  # would block (until the timeout) if this rank took the lock too
            pass


def test_a_file_system_without_locks_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    import errno

    import metacot.locks as locks

    def refuse(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", refuse)
    ran = []
    with caplog.at_level(logging.WARNING, logger="metacot.locks"), exclusive(tmp_path / ".lock", "experiment X"):
        ran.append(True)
    assert ran and "goes on unlocked" in caplog.text
