"""Stopping a run from outside: what SIGTERM does where (no heavy imports here: the SIGTERM handler
runs at any point of the program, e.g. in the middle of `import torch`, and must not import).

Inside a training loop (`StopAndSave` registers it), Lightning stops at the next step boundary and
`last.ckpt` is saved; elsewhere (datagen, eval, between stages) `train.py`'s handler raises
`SignalTerminated` at once and remembers that it did, since an exception that strikes inside a
library can come out as another error, or be swallowed: Python only prints "Exception ignored" for
one raised inside an at-fork hook or a finalizer. So forks happen inside `sigterm_deferred`, and long
loops call `raise_if_received`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

_fits = 0  # training loops running under a StopAndSave in this process
_sigterm = False  # a SIGTERM arrived outside a training loop
_owner: int | None = None  # the process that installed the handler (`install`)
_deferring: int | None = None  # the process inside a `sigterm_deferred` block (not its forks)
_pending = False  # a SIGTERM arrived inside that block


class SignalTerminated(KeyboardInterrupt):
    """SIGTERM outside a training loop. A KeyboardInterrupt, like Ctrl-C, because it can strike
    anywhere and must not be caught as an ordinary error (a SystemExit raised inside an import was
    swallowed by torch's)."""


def fit_started() -> None:
    global _fits
    _fits += 1


def fit_ended() -> None:
    global _fits
    _fits = max(0, _fits - 1)


def fit_running() -> bool:
    """Whether a training loop that handles SIGTERM itself (saving `last.ckpt`) is running."""
    return _fits > 0


def install() -> None:
    """Make `on_sigterm` this process's SIGTERM handler (`train.py` does, first thing)."""
    global _owner
    _owner = os.getpid()
    signal.signal(signal.SIGTERM, on_sigterm)


def on_sigterm(signum: int, frame: object) -> None:
    """The SIGTERM handler `train.py` installs: leave it to a running training loop (Lightning calls
    this after its own handler, also in a rank forked by `ddp_fork`), else stop now.
    Outside training, a forked child (a pool worker before it set its own handling) inherits the
    handler and a copy of this state: it dies of the signal as by default. Raising there could be
    swallowed by an at-fork hook, leaving a worker that outlives `Pool.terminate()`."""
    global _sigterm, _pending
    if fit_running():
        return
    if _owner is not None and os.getpid() != _owner:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _sigterm = True
    if _deferring == os.getpid():
        _pending = True
        return
    raise SignalTerminated("SIGTERM")


def sigterm_received() -> bool:
    return _sigterm


def raise_if_received() -> None:
    """Stop here if a SIGTERM came whose exception was swallowed (Python prints "Exception ignored
    in ..." for one raised inside e.g. an at-fork hook or a finalizer, then goes on): call it where
    long work advances, so such a run stops within a step instead of at its end."""
    if _sigterm and not fit_running():
        raise SignalTerminated("SIGTERM")


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A SIGTERM that arrives inside the block stops the run when the block ends. For forks
    (`multiprocessing.Pool(...)`), in two ways:
    - this process: the handler's exception would be swallowed by an at-fork hook (logging's, for
      one), so the handler only notes it (a flag, not just a signal mask: the kernel may hand the
      signal to another thread, tqdm's monitor or torch's, and Python runs the handler here anyway);
    - the children: SIGTERM is blocked in this thread, so they start with it blocked. A child has
      train.py's Python-level handler until it sets its own, and a SIGTERM that reaches it before
      Python's after-fork reset is dropped, leaving a worker `Pool.terminate()` waits for forever.
      Blocked, it waits for the child's `unblock_sigterm()`, made after the child set SIG_DFL."""
    global _deferring, _pending
    outer = _deferring
    _deferring = os.getpid()
    masks = hasattr(signal, "pthread_sigmask")  # not on Windows
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if masks else None
    try:
        yield
    finally:
        _deferring = outer
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if outer is None and _pending:
            _pending = False
            raise SignalTerminated("SIGTERM")


def unblock_sigterm() -> None:
    """In a child forked inside `sigterm_deferred`, once it handles SIGTERM its own way."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
