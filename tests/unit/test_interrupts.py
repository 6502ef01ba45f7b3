"""SIGTERM outside a training loop must stop the run even where Python swallows the handler's
exception (an at-fork hook, a finalizer): the data pool forks with SIGTERM deferred, its workers
die of it as before, and long loops stop on a SIGTERM that was swallowed anyway."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from metacot import interrupts
from metacot.data import build, shards

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM kills at once on Windows")
with_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")


@pytest.fixture
def sigterm_handler(monkeypatch):
    monkeypatch.setattr(interrupts, "_sigterm", False)
    previous = signal.signal(signal.SIGTERM, interrupts.on_sigterm)
    yield
    signal.signal(signal.SIGTERM, previous)


@posix_only
def test_sigterm_deferred_holds_the_signal_until_the_block_ends(sigterm_handler):
    reached_end_of_block = False
    with pytest.raises(interrupts.SignalTerminated):
        with interrupts.sigterm_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # a handler allowed to run would run here
            reached_end_of_block = True
    assert reached_end_of_block and interrupts.sigterm_received()
    with interrupts.sigterm_deferred():  # nothing pending: nothing raised
        pass


def test_a_swallowed_sigterm_stops_the_next_job_of_a_build_loop(monkeypatch):
    done = []
    monkeypatch.setattr(interrupts, "_sigterm", False)
    assert build._map(None, done.append, [1, 2]) == [None, None]
    monkeypatch.setattr(interrupts, "_sigterm", True)  # as if its exception was swallowed
    done.clear()
    with pytest.raises(interrupts.SignalTerminated):
        build._map(None, done.append, [1, 2, 3])
    assert done == [1]  # stopped after the first job, not at the end
    monkeypatch.setattr(interrupts, "_fits", 1)  # a training loop handles SIGTERM itself
    interrupts.raise_if_received()


@posix_only
@with_fork
def test_pool_workers_keep_their_own_sigterm_handling(monkeypatch, sigterm_handler):
    monkeypatch.setattr(shards, "init_worker", lambda *args: None)
    pool = build._pool(2, ())
    try:
        handlers = [pool.apply(signal.getsignal, (signal.SIGTERM,)) for _ in range(4)]
    finally:
        pool.terminate()
        pool.join()
    assert all(h == signal.SIG_DFL for h in handlers), handlers  # they die of it, quietly
    assert interrupts._deferring is None and not interrupts.sigterm_received()


@posix_only
@with_fork
def test_a_child_forked_inside_the_block_does_not_defer(sigterm_handler):
    """Before a pool worker resets its handler it runs train.py's, with the parent's state: it must
    stop, not wait for the end of a block that only the parent is in."""
    with pytest.raises(interrupts.SignalTerminated):
        with interrupts.sigterm_deferred():
            pid = os.fork()
            if pid == 0:  # the child
                try:
                    interrupts.on_sigterm(signal.SIGTERM, None)
                except interrupts.SignalTerminated:
                    os._exit(0)
                os._exit(1)
            interrupts.on_sigterm(signal.SIGTERM, None)  # the parent: held until the block ends
            _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@posix_only
@with_fork
def test_sigterm_while_the_pool_forks_stops_the_run_instead_of_vanishing(tmp_path):
    """The CI failure this guards: the signal struck inside logging's at-fork hook, Python printed
    "Exception ignored", and datagen went on to its end."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        from metacot import interrupts
        from metacot.data import build, shards
        signal.signal(signal.SIGTERM, interrupts.on_sigterm)
        def hook():  # SIGTERM arrives while a fork's hooks run
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        os.register_at_fork(after_in_parent=hook)
        shards.init_worker = lambda *args: None
        try:
            pool = build._pool(2, ())
        except interrupts.SignalTerminated:
            print("stopped")
            sys.exit(0)
        print("went on")
        pool.terminate()
        sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "stopped", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
