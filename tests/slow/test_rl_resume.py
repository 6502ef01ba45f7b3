"""Exact resume of an RL run: a run stopped by a real SIGTERM after step 2 saves last.ckpt, and
resuming it gives bit-for-bit the weights, reference, optimizer and scheduler state of an
uninterrupted run — with dropout on, PPO epochs, KL to a reference and a warmup+cosine schedule,
so every piece of state (policy, reference, optimizer, scheduler, data position, sampler and torch
RNG) has to come back."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metacot.modules.callbacks import StopAndSave
from metacot.modules.rl import RLModule, RLOptions
from metacot.rl.objectives import GRPOObjective
from tests.unit.test_rl_module import RECORDS, TinySampler, collector, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow
STEPS = 5


class SigtermAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.rl_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def fit(tmp_path, kill_at=None, resume=False):
    tok = tiny_tokenizer()
    objective = GRPOObjective(group_size=3, epochs_per_batch=2, kl_coef=0.1)
    options = RLOptions(steps=STEPS, prompts_per_step=3, lr=2e-2, warmup_steps=2, min_lr_ratio=0.2,
                        micro_batch_size=4, eval_every=0, eval_at_start=False, table_every=0, save_every=100, seed=7)
    module = RLModule(tiny_model(0, dropout=0.2), tok, objective, collector(tok), RECORDS, options, max_new_tokens=3,
                      sampler_factory=lambda m: TinySampler(m))
    module.checkpoint_path = tmp_path / "last.ckpt"
    callbacks = [StopAndSave(tmp_path)] + ([SigtermAt(kill_at)] if kill_at else [])
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, ckpt_path=str(tmp_path / "last.ckpt") if resume else None)
    return module, trainer


def test_sigterm_saves_and_resume_is_exact(tmp_path):
    straight, _ = fit(tmp_path / "straight")
    assert straight.rl_step == STEPS

    with pytest.raises(SIGTERMException):
        fit(tmp_path / "cut", kill_at=2)
    saved = torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["metacot_rl"]["rl_step"] == 2 and saved["global_step"] == 2 * 2  # 2 PPO epochs per step

    resumed, trainer = fit(tmp_path / "cut", resume=True)
    assert resumed.rl_step == STEPS and trainer.global_step == STEPS * 2
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # policy and reference, bit for bit
    assert any(k.startswith("ref_model.") for k in straight.state_dict())
    want = torch.load(tmp_path / "straight" / "last.ckpt", map_location="cpu", weights_only=False)
    got = torch.load(tmp_path / "cut" / "last.ckpt", map_location="cpu", weights_only=False)
    assert want["lr_schedulers"] == got["lr_schedulers"]
    for s, t in zip(want["optimizer_states"][0]["state"].values(), got["optimizer_states"][0]["state"].values(),
                    strict=True):
        assert all(torch.equal(s[k], t[k]) for k in s)
