"""SFTModule: the loss, the LR schedule, weight decay groups, clipping, the NaN guard, Ctrl-C /
SIGTERM checkpoints, the solve-rate hook and the Hugging Face export."""

from __future__ import annotations

import math
import os
import random
import signal

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from metacot.data.datamodule import TraceDataModule
from metacot.modules.callbacks import StopAndSave
from metacot.modules.export import export_hf
from metacot.modules.optim import build_optimizer, clip_gradients, param_groups, warmup_cosine
from metacot.modules.sft import SFTConfig, SFTModule
from metacot.modules.trainer import TrainerFactory

torch.set_num_threads(1)
WORDS = [f"w{i}" for i in range(40)]


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


TOK = make_tokenizer()


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": i, "prompt": " ".join(rng.choices(WORDS, k=3)),
             "completion": " ".join(rng.choices(WORDS, k=rng.randint(3, 30))), "problem": {}} for i in range(n)]


def llama(seed: int = 0, tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(TOK), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=tie)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def config(**kw) -> SFTConfig:
    base = dict(lr=3e-3, warmup_steps=2, max_steps=12, batch_tokens=256, val_every_steps=100,
                log_every_n_steps=5, ckpt_every_steps=2, solve_rate_problems=0)
    return SFTConfig(**{**base, **kw})


def fit(tmp_path, hp: SFTConfig, callbacks=(), evaluate_fn=None, logger=False):
    L.seed_everything(0, verbose=False)
    dm = TraceDataModule(make_records(60), make_records(8, seed=1), TOK, 128, batch_tokens=hp.batch_tokens)
    module = SFTModule(llama(), hp, evaluate_fn=evaluate_fn)
    stop = StopAndSave(tmp_path)
    trainer = TrainerFactory(accelerator="cpu", devices=1, enable_progress_bar=False).build(
        module.model, max_steps=hp.max_steps, max_epochs=-1, val_check_interval=hp.val_every_steps,
        check_val_every_n_epoch=None, log_every_n_steps=hp.log_every_n_steps, logger=logger,
        enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True,
                                   every_n_train_steps=hp.ckpt_every_steps), stop, *callbacks])
    return trainer, module, dm, stop


class AtStep(L.Callback):
    def __init__(self, step, fn):
        self.step, self.fn = step, fn

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step == self.step:
            self.fn(trainer, module)


# --- optimisation -----------------------------------------------------------------------------
def test_warmup_then_cosine_at_given_steps():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.1)  # noqa: E731
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 100, 0.0) == pytest.approx(1.0)


def test_configured_optimizer_follows_the_schedule():
    module = SFTModule(llama(), config(lr=1e-2, warmup_steps=4, max_steps=20, min_lr_ratio=0.0))
    opt_conf = module.configure_optimizers()
    optimizer, scheduler = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
    assert opt_conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(21):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])
    assert lrs[12] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)
    assert not optimizer.defaults.get("fused")  # CPU: no fused kernel


def test_weight_decay_only_on_linear_and_embedding_weights():
    model = llama(tie=True)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    assert {names[id(p)] for p in decay["params"]} >= {"model.embed_tokens.weight",
                                                        "model.layers.0.self_attn.q_proj.weight"}
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied weights counted once
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, fused=None)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2


def test_clipping_returns_the_global_norm_and_scales_to_the_limit():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_gradients(torch.nn.Module(), params, max_norm=1.0)
    assert float(norm) == pytest.approx(5.0)
    assert params[0].grad.tolist() == pytest.approx([0.6, 0.0], rel=1e-4)
    assert float(clip_gradients(torch.nn.Module(), params, max_norm=None)) == pytest.approx(1.0, rel=1e-4)
    assert params[1].grad.tolist() == pytest.approx([0.8], rel=1e-4)  # measured only, unchanged


def test_training_loss_is_the_mean_over_target_tokens():
    dm = TraceDataModule(make_records(10), [], TOK, 128, batch_tokens=256, total_batches=1)
    batch = next(iter(dm.train_dataloader()))
    module = SFTModule(llama(), config())
    loss = module.training_step(batch, 0).detach()
    logits = module.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    mask = batch["targets"] != -100
    manual = F.cross_entropy(logits[mask], batch["targets"][mask])
    assert float(loss) == pytest.approx(float(manual), rel=1e-5)
    assert int(mask.sum()) == batch["n_targets"]


# --- stopping safely ------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_finite_checkpoint(tmp_path):
    def poison(trainer, module):
        with torch.no_grad():
            module.model.model.norm.weight.fill_(float("nan"))

    trainer, module, dm, _ = fit(tmp_path, config(), callbacks=[AtStep(3, poison)])
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* at step 3"):
        trainer.fit(module, datamodule=dm)
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    # saved at step 2; the save due at step 4 (after the NaN) was refused
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_first_ctrl_c_stops_at_a_step_boundary_and_saves(tmp_path):
    trainer, module, dm, stop = fit(tmp_path, config(ckpt_every_steps=100),
                                    callbacks=[AtStep(5, lambda *_: os.kill(os.getpid(), signal.SIGINT))])
    trainer.fit(module, datamodule=dm)
    assert stop.interrupted and trainer.global_step == 6  # the flag is seen after the next step
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
    trainer, module, dm, stop = fit(tmp_path, config(ckpt_every_steps=100),
                                    callbacks=[AtStep(4, lambda *_: os.kill(os.getpid(), signal.SIGTERM))])
    with pytest.raises(SIGTERMException):
        trainer.fit(module, datamodule=dm)
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert stop.interrupted and ckpt["global_step"] == trainer.global_step == 4


class SigtermAtFitStart(L.Callback):
    def on_fit_start(self, trainer, module):  # set-up: Lightning's own SIGTERM handler is not in yet
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_set_up_stops_the_run_instead_of_being_lost(tmp_path, monkeypatch):
    """Between Trainer.fit and the first step only train.py's handler (`interrupts.on_sigterm`)
    listens: it must stop the run (Lightning turns the interrupt into an exit) and leave the mark
    run_job reads to record the job as interrupted, not let training go on."""
    from metacot import interrupts

    monkeypatch.setattr(interrupts, "_sigterm", False)
    previous = signal.signal(signal.SIGTERM, interrupts.on_sigterm)
    try:
        trainer, module, dm, stop = fit(tmp_path, config(max_steps=3), callbacks=[SigtermAtFitStart()])
        with pytest.raises(SystemExit):
            trainer.fit(module, datamodule=dm)
        assert interrupts.sigterm_received() and trainer.global_step == 0 and not interrupts.fit_running()
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- validation and export ------------------------------------------------------------------------
class FakeResult(dict):
    examples = [{"prompt": "w1 w2", "completion": "w3 | w4", "verdict": "wrong: no answer"}]


def test_validation_logs_loss_and_the_evaluators_solve_rate(tmp_path):
    calls = []

    def evaluate_fn(model):
        calls.append(model.training)
        return FakeResult(solve_rate=0.25 * len(calls), num_problems=4.0)

    texts = []

    class Experiment:
        def add_text(self, tag, text, step):
            texts.append((tag, text, step))

    class Logger(L.pytorch.loggers.Logger):
        name, version, experiment = "fake", 0, Experiment()

        def log_metrics(self, metrics, step):
            pass

        def log_hyperparams(self, params):
            pass

    trainer, module, dm, _ = fit(tmp_path, config(val_every_steps=4, max_steps=8), evaluate_fn=evaluate_fn,
                                 logger=Logger())
    trainer.fit(module, datamodule=dm)
    assert len(calls) == 2  # at steps 4 and 8, not in the sanity check
    assert float(trainer.callback_metrics["val/solve_rate"]) == 0.5
    assert 2.0 < float(trainer.callback_metrics["val/loss"]) < 5.0
    assert texts[-1][0] == "val/samples" and texts[-1][2] == 8 and "w3 \\| w4" in texts[-1][1]


def test_hf_export_loads_with_automodel_and_gives_the_same_logits(tmp_path):
    trainer, module, dm, _ = fit(tmp_path / "ckpt", config(max_steps=3))
    trainer.fit(module, datamodule=dm)
    out = export_hf(trainer, module, TOK, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok.encode("w1 w2 w3 w4", add_special_tokens=False)])
    module.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, module.model(ids).logits, atol=1e-6)
    assert tok.eos_token == "</s>" and tok.pad_token_id == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
@pytest.mark.parametrize("option", ["gpu", "fsdp"], ids=["one_device", "fsdp"])  # not "gpu": a marker keyword
def test_gpu_trainers_without_cuda_say_what_to_run_instead(option):
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    factory = instantiate(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "trainer" / f"{option}.yaml"))
    with pytest.raises(SystemExit, match=f"trainer={option} needs a CUDA GPU.*trainer=cpu"):
        factory.build(None, max_steps=1)
