"""scripts/bench_train.py compares like with like: its synthetic batches are packed as the SFT
collator packs them, and from the same weights and batches the plain loop and the Lightning arm
(SFTModule under the stage's Trainer) take the same steps — same losses, same final weights — while
Lightning still logs every metric on the logging steps."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from metacot.data.collate import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_train", ROOT / "scripts" / "bench_train.py")
B = importlib.util.module_from_spec(_spec)
sys.modules["bench_train"] = B  # dataclasses look their module up
_spec.loader.exec_module(B)
torch.set_num_threads(1)


def test_synthetic_rows_pack_several_examples_with_their_own_positions_and_targets():
    [batch] = B.synthetic_batches(1, seq=128, batch_tokens=384, vocab_size=64, seed=3)
    ids, pos, tgt = batch["input_ids"], batch["position_ids"], batch["targets"]
    assert ids.shape == pos.shape == tgt.shape == (3, 128)
    assert batch["n_tokens"] == int((ids != 0).sum()) > 0.9 * ids.numel()
    assert batch["n_targets"] == int((tgt != IGNORE_INDEX).sum())
    for r in range(3):
        starts = (pos[r] == 0).nonzero().flatten().tolist()
        assert starts[0] == 0 and 2 <= len(starts) <= 6
        assert all(ids[r, s] == 1 for s in starts)  # each example opens with <s>
        assert all(tgt[r, s - 1] == IGNORE_INDEX for s in starts[1:])  # no prediction across examples
        real = int((ids[r] != 0).sum())
        assert (ids[r, real:] == 0).all() and (tgt[r, real - 1 :] == IGNORE_INDEX).all()  # padding at the end
        for i in (tgt[r] != IGNORE_INDEX).nonzero().flatten().tolist():
            assert tgt[r, i] == ids[r, i + 1] and pos[r, i + 1] == pos[r, i] + 1  # next token, same example


def test_plain_loop_and_lightning_arm_take_the_same_steps(tmp_path):
    tok = B.word_tokenizer(64)
    hp = B.sft_config(256, 6, pack_width=128, warmup_steps=2, log_every_n_steps=2)
    batches = B.synthetic_batches(6, 128, 256, 64, seed=1)
    model = B.build_model("tiny", tok, 128, seed=0)
    init = copy.deepcopy(model)
    plain = B.PlainArm(copy.deepcopy(model), hp, "cpu", "32-true")
    light = B.LightningArm(model, hp, B.trainer_factory("cpu", threads=1), str(tmp_path))
    for _ in range(2):  # a second repetition refits both from where they stopped
        p, lt = plain.run(batches, warmup=2), light.run(batches, warmup=2)
        assert len(p.losses) == len(lt.losses) == 6
        assert p.losses == pytest.approx(lt.losses, rel=1e-5, abs=1e-6)
        assert p.tokens == lt.tokens == sum(b["n_tokens"] for b in batches[2:])  # the timed steps only
        assert p.seconds > 0 and lt.seconds > 0
    moved = 0.0
    for (name, a), b, c in zip(plain.model.named_parameters(), light.module.model.parameters(), init.parameters(),
                               strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
        moved = max(moved, float((a - c).abs().max()))
    assert moved > 1e-3  # the 12 steps really trained (same lr schedule in both arms)
    # logged on the logging steps, as users see it: loss = that step's loss, every metric present
    assert [row["loss"] for row in p.logged[-3:]] == pytest.approx([p.losses[1], p.losses[3], p.losses[5]])
    last = lt.logged[-1]
    assert last["train/loss"] == pytest.approx(lt.losses[-1], rel=1e-6)
    assert {"train/loss", "train/ppl", "train/fill", "train/grad_norm", "train/lr", "train/tokens_per_s"} <= set(last)
    assert last["train/grad_norm"] == pytest.approx(p.logged[-1]["grad_norm"], rel=1e-4)
    assert last["train/lr"] == pytest.approx(p.logged[-1]["lr"])
