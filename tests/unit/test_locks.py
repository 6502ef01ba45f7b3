"""`metacot.locks.exclusive`: the second holder waits for the first, and is told who holds it."""

from __future__ import annotations

import logging
import threading

from metacot.locks import exclusive


def test_a_second_holder_waits_until_the_first_is_done(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
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


def test_only_rank_zero_locks(tmp_path, monkeypatch):
    """The other ranks of a DDP job are started by rank 0, which holds the lock: they must not wait."""
    path = tmp_path / ".lock"
    with exclusive(path, "x"):
        monkeypatch.setenv("RANK", "1")
        with exclusive(path, "x"):  # would block forever if rank 1 took the lock too
            pass
