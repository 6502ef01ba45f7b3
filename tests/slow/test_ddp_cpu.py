"""Two-process DDP on the CPU (gloo), launched with torchrun as a cluster would: each rank trains
on its own slice of the one data stream, the ranks stay in sync, rank 0 writes the checkpoint,
and the result equals a single process accumulating the same two micro-batches per step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import json, random, sys
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from metacot.data.datamodule import TraceDataModule
    from metacot.modules.sft import SFTConfig, SFTModule
    from metacot.modules.trainer import TrainerFactory

    torch.set_num_threads(1)
    out, devices, accum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    words = [f"w{i}" for i in range(40)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    rng = random.Random(0)
    records = [{"id": i, "prompt": " ".join(rng.choices(words, k=3)),
                "completion": " ".join(rng.choices(words, k=rng.randint(3, 30)))} for i in range(60)]

    class Record(L.Callback):
        seen = []
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append(list(batch["example_ids"]))

    L.seed_everything(0, verbose=False)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    hp = SFTConfig(lr=3e-3, warmup_steps=2, max_steps=8, batch_tokens=256, grad_accum=accum, val_every_steps=4,
                   log_every_n_steps=2, ckpt_every_steps=4, solve_rate_problems=0)
    module = SFTModule(LlamaForCausalLM(cfg), hp)
    dm = TraceDataModule(records, records[:10], tok, 128, batch_tokens=256)
    trainer = TrainerFactory(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                             enable_progress_bar=False).build(
        module.model, max_steps=8, max_epochs=-1, accumulate_grad_batches=accum, val_check_interval=4 * accum,
        check_val_every_n_epoch=None, log_every_n_steps=2, logger=False, enable_model_summary=False,
        callbacks=[Record(), ModelCheckpoint(dirpath=out + "/ckpt", save_top_k=0, save_last=True,
                                             every_n_train_steps=4)])
    trainer.fit(module, datamodule=dm)
    weights = torch.cat([p.detach().flatten() for p in module.model.parameters()])
    torch.save(weights, f"{out}/weights{trainer.global_rank}.pt")
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"seen": Record.seen, "world": trainer.world_size, "step": trainer.global_step,
                   "loss": float(trainer.callback_metrics["train/loss"]),
                   "val_loss": float(trainer.callback_metrics["val/loss"])}, f)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, name, devices, accum):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if devices > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={devices}",
               f"--master_port={free_port()}", str(script), str(out), str(devices), str(accum)]
    else:
        cmd = [sys.executable, str(script), str(out), "1", str(accum)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


def test_two_cpu_ranks_train_on_disjoint_shards_and_match_one_accumulating_process(tmp_path):
    ddp = launch(tmp_path, "ddp", devices=2, accum=1)
    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [8, 8]
    for a, b in zip(ranks[0]["seen"], ranks[1]["seen"], strict=True):
        assert a and b and not set(a) & set(b), "two ranks trained on the same example in one step"
    w0, w1 = torch.load(ddp / "weights0.pt"), torch.load(ddp / "weights1.pt")
    assert torch.equal(w0, w1), "the ranks' weights diverged"
    assert (ddp / "ckpt" / "last.ckpt").is_file()
    assert ranks[0]["val_loss"] == pytest.approx(ranks[1]["val_loss"])  # reduced over both ranks' shards

    single = launch(tmp_path, "single", devices=1, accum=2)
    one = json.loads((single / "rank0.json").read_text())
    # one process accumulating micro-batches (2b, 2b + 1) sees what ranks (0, 1) see at step b
    assert one["seen"][0::2] == ranks[0]["seen"] and one["seen"][1::2] == ranks[1]["seen"]
    assert torch.allclose(torch.load(single / "weights0.pt"), w0, atol=1e-5)
    assert one["val_loss"] == pytest.approx(ranks[0]["val_loss"], abs=1e-5)
