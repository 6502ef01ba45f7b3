"""Stopping a run from outside: what SIGTERM does where (no heavy imports here: the SIGTERM handler
runs at any point of the program, e.g. in the middle of `import torch`, and must not import).

Inside a training loop (`StopAndSave` registers it), Lightning stops at the next step boundary and
`last.ckpt` is saved; elsewhere (datagen, eval, between stages) `train.py`'s handler raises
`SignalTerminated` at once and remembers that it did, since an exception that strikes inside a
library can come out as another error.
"""

from __future__ import annotations

_fits = 0  # training loops running under a StopAndSave in this process
_sigterm = False  # a SIGTERM arrived outside a training loop


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


def on_sigterm(signum: int, frame: object) -> None:
    """The SIGTERM handler `train.py` installs: leave it to a running training loop (Lightning calls
    this after its own handler), else stop now."""
    global _sigterm
    if not fit_running():
        _sigterm = True
        raise SignalTerminated("SIGTERM")


def sigterm_received() -> bool:
    return _sigterm
