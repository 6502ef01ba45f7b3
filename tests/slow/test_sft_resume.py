"""An interrupted SFT run resumed from last.ckpt ends exactly where an uninterrupted one does —
stopped mid-epoch, exactly at a data-epoch boundary, with gradient accumulation, or by SIGTERM —
and a finished run resumed with a larger max_steps trains the extra steps on the next data."""

from __future__ import annotations

import os
import random
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from metacot.data.datamodule import TraceDataModule, _RunSampler
from metacot.modules.callbacks import StopAndSave
from metacot.modules.sft import SFTConfig, SFTModule
from metacot.modules.trainer import TrainerFactory

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
WORDS = [f"w{i}" for i in range(40)]
MAX_STEPS = 20


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


TOK = make_tokenizer()
RNG = random.Random(0)
RECORDS = [{"id": i, "prompt": " ".join(RNG.choices(WORDS, k=3)),
            "completion": " ".join(RNG.choices(WORDS, k=RNG.randint(3, 30)))} for i in range(60)]


def datamodule() -> TraceDataModule:
    return TraceDataModule(RECORDS, RECORDS[:8], TOK, 128, batch_tokens=256)


class Record(L.Callback):
    """Example ids of every micro-batch, and a hook to act at the end of a given step."""

    def __init__(self, at_step=None, action=None):
        self.batches: list[list[int]] = []
        self.at_step, self.action = at_step, action

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(list(batch["example_ids"]))

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step == self.at_step and self.action is not None:
            self.action(trainer)


def run(tmp_path, max_steps=MAX_STEPS, grad_accum=1, at_step=None, action=None, resume=False):
    L.seed_everything(0, verbose=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(TOK), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    hp = SFTConfig(lr=3e-3, warmup_steps=3, max_steps=max_steps, batch_tokens=256, grad_accum=grad_accum,
                   val_every_steps=5, log_every_n_steps=1, ckpt_every_steps=4, solve_rate_problems=0)
    module = SFTModule(LlamaForCausalLM(cfg), hp)
    stop = StopAndSave(tmp_path)
    record = Record(at_step, action)
    trainer = TrainerFactory(accelerator="cpu", devices=1, enable_progress_bar=False).build(
        module.model, max_steps=max_steps, max_epochs=-1, accumulate_grad_batches=grad_accum,
        val_check_interval=hp.val_every_steps * grad_accum, check_val_every_n_epoch=None, log_every_n_steps=1,
        logger=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[record, ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True, every_n_train_steps=4),
                   stop])
    ckpt = str(tmp_path / "last.ckpt") if resume else None
    try:
        trainer.fit(module, datamodule=datamodule(), ckpt_path=ckpt)
    except SIGTERMException:
        pass
    weights = torch.cat([p.detach().flatten() for p in module.model.parameters()])
    return trainer, weights, record.batches


def request_stop(trainer):
    next(c for c in trainer.callbacks if isinstance(c, StopAndSave))._requested = True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return {accum: run(tmp_path_factory.mktemp(f"ref{accum}"), grad_accum=accum) for accum in (1, 2)}


def steps_per_epoch(grad_accum=1) -> int:
    return len(datamodule().plan.batches(0)) // grad_accum


@pytest.mark.parametrize("case", ["mid_epoch", "epoch_boundary", "accumulation", "sigterm"])
def test_resumed_run_matches_the_uninterrupted_one(tmp_path, reference, case):
    accum = 2 if case == "accumulation" else 1
    stop_at = {"mid_epoch": 7, "epoch_boundary": steps_per_epoch(), "accumulation": steps_per_epoch(2) + 1,
               "sigterm": 9}[case]
    assert 0 < stop_at < MAX_STEPS and steps_per_epoch() < MAX_STEPS // 2  # several epochs in a run
    action = (lambda tr: os.kill(os.getpid(), signal.SIGTERM)) if case == "sigterm" else request_stop
    first, _, seen_first = run(tmp_path, grad_accum=accum, at_step=stop_at, action=action)
    assert first.global_step == stop_at, "the run did not stop where asked"
    second, weights, seen_second = run(tmp_path, grad_accum=accum, resume=True)
    ref_trainer, ref_weights, ref_seen = reference[accum]
    assert second.global_step == MAX_STEPS
    assert len(seen_second) == (MAX_STEPS - stop_at) * accum, "resumed run trained the wrong number of batches"
    assert seen_first + seen_second == ref_seen  # the same data, in the same order, once
    assert torch.allclose(weights, ref_weights, atol=1e-6)
    for key in ("train/loss", "val/loss"):
        assert float(second.callback_metrics[key]) == pytest.approx(float(ref_trainer.callback_metrics[key]),
                                                                    abs=1e-5)


def test_a_finished_run_resumed_with_more_steps_trains_them_on_the_next_batches(tmp_path):
    first, _, seen_first = run(tmp_path, max_steps=8)
    assert first.global_step == 8 and (tmp_path / "last.ckpt").is_file()
    again, _, seen_again = run(tmp_path, max_steps=8, resume=True)
    assert again.global_step == 8 and seen_again == []  # nothing left: trains nothing, and says so
    more, _, seen_more = run(tmp_path, max_steps=12, resume=True)
    assert more.global_step == 12 and len(seen_more) == 4
    dm = datamodule()
    stream = [[int(dm.train.records[i]["id"]) for row in rows for i in row]
              for _, rows in _RunSampler(dm.plan, 0, 1, lambda: 0, lambda: 12)]
    assert seen_first + seen_more == stream
