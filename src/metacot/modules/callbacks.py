"""Callbacks that make an SFT/RL run safe to stop: a `last.ckpt` at the end of every fit, on the
first Ctrl-C (a clean stop at the next step boundary) and on SIGTERM (cluster preemption).

A checkpoint is only ever written at an optimizer-step boundary, and never with non-finite
weights (the LightningModule's `on_save_checkpoint` refuses), so `last.ckpt` is always a state
the run can resume from exactly.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metacot import interrupts

log = logging.getLogger(__name__)


class StopAndSave(L.Callback):
    """Writes `dirpath/last.ckpt` when training ends (finished, max_time, or stopped by the first
    Ctrl-C) and when SIGTERM stops it. A second Ctrl-C interrupts at once, without saving."""

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.interrupted = False
        self._requested = False
        self._previous: Any = None
        self._fitting = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._fit_ended()

    def _fit_ended(self) -> None:  # on_train_end, on_exception (Lightning skips teardown hooks then), teardown
        if self._fitting:
            self._fitting = False
            interrupts.fit_ended()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has installed its SIGTERM handler (and recorded the handlers it restores at
        # teardown): from here to the end of training, SIGTERM is the loop's to handle (it stops at
        # the next step and saves). Before, during set-up, train.py's handler stops the run at once.
        if not self._fitting:
            self._fitting = True
            interrupts.fit_started()
        self.interrupted = False
        self._requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._requested:  # second Ctrl-C: give up on the clean stop
            self._restore()
            raise KeyboardInterrupt
        self._requested = True
        log.warning("Ctrl-C: stopping after this step and saving %s (Ctrl-C again to abort at once)", self.path)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        requested = self._requested
        if trainer.world_size > 1:  # all ranks must agree; a collective, so only now and then
            every = max(1, trainer.log_every_n_steps)
            if trainer.global_step % every:
                return
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.interrupted = True
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        trainer.save_checkpoint(self.path, weights_only=False)
        log.info("saved %s at step %d", self.path, trainer.global_step)
        self._fit_ended()  # saved: a SIGTERM from here on stops the run at once (nothing left to save)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        self._fit_ended()
        if isinstance(exception, SIGTERMException):
            self.interrupted = True
            try:
                trainer.save_checkpoint(self.path, weights_only=False)
                log.warning("SIGTERM: saved %s at step %d", self.path, trainer.global_step)
            except FloatingPointError as e:  # non-finite weights: keep the older checkpoint
                log.error("SIGTERM: not saving: %s", e)
