"""FSDP (GPU only), built from conf/trainer/fsdp.yaml as `trainer=fsdp` builds it: trains, writes
sharded checkpoints, resumes from them exactly, exports a Hugging Face model that loads on its own,
ends with the same loss and weights as DDP (conf/trainer/ddp.yaml, same devices and batches) and,
on one GPU, as a single-device run; and runs bf16-mixed with a fused AdamW and clipping (the
combination Lightning's own clipping refuses). Each run is a fresh torchrun process, as a cluster
launch would be."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

CONF = Path(__file__).resolve().parents[2] / "conf" / "trainer"

SCRIPT = textwrap.dedent('''
    import importlib, json, random, sys
    import yaml
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from metacot.data.datamodule import TraceDataModule
    from metacot.modules.callbacks import StopAndSave
    from metacot.modules.export import export_hf
    from metacot.modules.sft import SFTConfig, SFTModule
    from metacot.modules.trainer import FSDPTrainerFactory, TrainerFactory

    out, mode, devices, conf = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    words = [f"w{i}" for i in range(40)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    rng = random.Random(0)
    records = [{"id": i, "prompt": " ".join(rng.choices(words, k=3)),
                "completion": " ".join(rng.choices(words, k=rng.randint(3, 60)))} for i in range(400)]

    L.seed_everything(0, verbose=False)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    hp = SFTConfig(lr=3e-3, warmup_steps=2, max_steps=10, batch_tokens=1024, val_every_steps=5,
                   log_every_n_steps=1, ckpt_every_steps=5, solve_rate_problems=0, clip_grad_norm=0.5)
    module = SFTModule(LlamaForCausalLM(cfg), hp)
    precision = "bf16-mixed" if mode == "bf16" else "32-true"
    common = dict(accelerator="gpu", devices=devices, precision=precision, enable_progress_bar=False,
                  float32_matmul_precision="highest")

    def from_yaml(option):  # what `trainer=<option>` instantiates, with this test's overrides
        cfg = yaml.safe_load(open(f"{conf}/{option}.yaml"))
        module, cls = cfg.pop("_target_").rsplit(".", 1)
        return getattr(importlib.import_module(module), cls)(**{**cfg, **common})

    factory = {"single": lambda: TrainerFactory(**common), "ddp": lambda: from_yaml("ddp")}.get(
        mode, lambda: from_yaml("fsdp"))()
    assert mode in ("single", "ddp") or isinstance(factory, FSDPTrainerFactory)
    ckpt = out + "/ckpt_" + ("stop" if mode in ("stop", "resume") else mode)
    stop = StopAndSave(ckpt)

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if mode == "stop" and trainer.global_step == 4:
                stop._requested = True

    trainer = factory.build(
        module.model, max_steps=10, max_epochs=-1, val_check_interval=5, check_val_every_n_epoch=None,
        log_every_n_steps=1, logger=False, enable_model_summary=False, default_root_dir=out,
        callbacks=[StopAt(), ModelCheckpoint(dirpath=ckpt, save_top_k=0, save_last=True,
                                             every_n_train_steps=5), stop])
    trainer.fit(module, datamodule=TraceDataModule(records, records[:32], tok, 128, batch_tokens=1024),
                ckpt_path=ckpt + "/last.ckpt" if mode == "resume" else None)
    export_hf(trainer, module, tok, out + f"/hf_{mode}")
    if trainer.is_global_zero:
        m = trainer.callback_metrics
        with open(out + f"/{mode}.json", "w") as f:
            json.dump({"step": trainer.global_step, "loss": float(m["train/loss"]),
                       "val_loss": float(m["val/loss"]) if "val/loss" in m else None,
                       "grad_norm": float(m["train/grad_norm"]), "optimizer": repr(trainer.optimizers[0].defaults),
                       "strategy": type(trainer.strategy).__name__}, f)
''')


def run(tmp_path, mode: str, devices: int) -> dict:
    script = tmp_path / "fsdp_train.py"
    script.write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={devices}", f"--master_port={port}",
           str(script), str(tmp_path), mode, str(devices), str(CONF)]
    res = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads((tmp_path / f"{mode}.json").read_text())


def weights(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), model


def test_fsdp_trains_checkpoints_resumes_exports_and_matches_one_device(tmp_path):
    devices = min(2, torch.cuda.device_count())
    single = run(tmp_path, "single", 1)
    ddp = run(tmp_path, "ddp", devices)
    full = run(tmp_path, "full", devices)
    assert full["strategy"] == "FSDPStrategy" and full["step"] == 10
    assert ddp["strategy"] == "DDPStrategy" and ddp["step"] == 10
    assert (tmp_path / "ckpt_full" / "last.ckpt").is_dir(), "FSDP checkpoints should be sharded directories"
    w_full, model = weights(tmp_path / "hf_full")
    w_ddp, _ = weights(tmp_path / "hf_ddp")  # the same global batches, sharded the same way
    assert full["loss"] == pytest.approx(ddp["loss"], abs=1e-4)
    assert full["val_loss"] == pytest.approx(ddp["val_loss"], abs=1e-4)
    assert torch.allclose(w_full, w_ddp, atol=1e-4)
    if devices == 1:  # the same batches as the single-device run
        w_single, _ = weights(tmp_path / "hf_single")
        assert full["loss"] == pytest.approx(single["loss"], abs=1e-4)
        assert torch.allclose(w_full, w_single, atol=1e-4)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    assert torch.isfinite(model(ids).logits).all()

    stopped = run(tmp_path, "stop", devices)
    assert stopped["step"] == 4
    resumed = run(tmp_path, "resume", devices)
    assert resumed["step"] == 10
    w_resumed, _ = weights(tmp_path / "hf_resume")
    assert torch.allclose(w_resumed, w_full, atol=1e-5)
    assert resumed["loss"] == pytest.approx(full["loss"], abs=1e-5)
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-5)


def test_bf16_mixed_with_fused_adamw_and_manual_clipping(tmp_path):
    out = run(tmp_path, "bf16", min(2, torch.cuda.device_count()))
    assert out["step"] == 10 and "'fused': True" in out["optimizer"]
    assert math.isfinite(out["loss"]) and math.isfinite(out["val_loss"]) and out["grad_norm"] > 0
