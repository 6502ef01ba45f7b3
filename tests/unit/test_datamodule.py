"""TraceDataModule: masking, packing that changes no loss, token budgets, worker/rank/resume
determinism, overlong handling and per-epoch augmentation."""

from __future__ import annotations

import logging
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from metacot.data.collate import IGNORE_INDEX, collate_rows, encode_pair
from metacot.data.datamodule import TraceDataModule, _RunSampler, encode_example, encode_prompt
from metacot.data.packing import length_batches, pack_rows
from metacot.modules.sft import token_loss_sum

torch.set_num_threads(1)  # tiny matmuls: threads only add overhead on a busy 2-core machine
WORDS = [f"w{i}" for i in range(40)]


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def make_records(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": 1000 + i, "prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 6))),
             "completion": " ".join(rng.choices(WORDS, k=rng.randint(lo, hi))), "problem": {"i": i}}
            for i in range(n)]


def llama(tok, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def gpt2(tok, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg).eval()


TOK = make_tokenizer()


def module(records, **kw) -> TraceDataModule:
    kw.setdefault("max_seq_len", 256)
    return TraceDataModule(records, kw.pop("val", []), TOK, **kw)


def stream(dm: TraceDataModule, n: int, rank: int = 0, world: int = 1, start: int = 0) -> list[list[int]]:
    sampler = _RunSampler(dm.plan, rank, world, lambda: start, lambda: start + n)
    return [[int(r["id"]) for row in rows for i in row for r in [dm.train.records[i]]] for _, rows in sampler]


# --- tokenization and masking ----------------------------------------------------------------
def test_encode_example_masks_exactly_the_prompt():
    ids, labels = encode_example(TOK, "w1 w2", "w3 w4 w5")
    assert ids == [1, 5, 6, 7, 8, 9, 2]  # <s> w1 w2 | w3 w4 w5 </s>
    assert labels == [-100, -100, -100, 7, 8, 9, 2]
    assert encode_prompt(TOK, "w1 w2") == ids[:3]
    ids2, labels2 = encode_example(TOK, "w1 w2", "w3 w4 w5", loss_on_prompt=True)
    assert ids2 == ids and labels2 == ids


def test_collate_shifts_targets_per_example_and_masks_padding():
    a = encode_pair(TOK, [1, 5], [7], False)  # <s> w1 | w3 </s>: targets w3, </s>
    b = encode_pair(TOK, [1, 6, 6], [8, 9], False)  # <s> w2 w2 | w4 w5 </s>
    batch = collate_rows([[a, b], [a]], pad_id=0, width=12, example_ids=[1, 2, 3])
    assert batch["input_ids"][0].tolist() == [1, 5, 7, 2, 1, 6, 6, 8, 9, 2, 0, 0]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]
    # position t predicts token t+1 of the same example; the last token of each predicts nothing
    assert batch["targets"][0].tolist() == [-100, 7, 2, -100, -100, -100, 8, 9, 2, -100, -100, -100]
    assert batch["targets"][1].tolist() == [-100, 7, 2] + [-100] * 9
    assert batch["position_ids"][1].tolist() == list(range(12))
    assert batch["n_tokens"] == 14 and batch["n_targets"] == 7 and batch["example_ids"] == [1, 2, 3]
    whole = collate_rows([[encode_pair(TOK, [1, 5], [7], True)]], pad_id=0)
    assert whole["targets"][0].tolist()[:3] == [5, 7, 2] and whole["input_ids"].shape[1] == 8


# --- packing changes nothing but the shape -----------------------------------------------------
def per_token_losses(model, dm: TraceDataModule) -> dict[tuple[int, int], float]:
    """{(record id, position): loss} over one epoch of `dm`'s batches."""
    out = {}
    dm.total_batches = len(dm.plan.batches(0))
    for batch in dm.train_dataloader():
        with torch.no_grad():
            losses = token_loss_sum(model, batch, reduction="none")
        ids = iter(batch["example_ids"])
        for r in range(losses.shape[0]):
            current = None
            for t in range(losses.shape[1]):
                if batch["position_ids"][r, t] == 0 and batch["input_ids"][r, t] == TOK.bos_token_id:
                    current = next(ids)
                if batch["targets"][r, t] != IGNORE_INDEX:
                    out[(current, int(batch["position_ids"][r, t]))] = float(losses[r, t])
    return out


@pytest.mark.parametrize("make_model", [llama, gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("loss_on_prompt", [False, True])
def test_packed_and_unpacked_batches_give_the_same_per_token_loss(make_model, loss_on_prompt):
    records = make_records(24)
    model = make_model(TOK)
    packed = module(records, batch_tokens=256, packing=True, loss_on_prompt=loss_on_prompt)
    assert any(len(row) > 1 for batch in packed.plan.batches(0) for row in batch), "nothing was packed"
    a = per_token_losses(model, packed)
    b = per_token_losses(model, module(records, batch_tokens=256, packing=False, loss_on_prompt=loss_on_prompt))
    assert a.keys() == b.keys() and len(a) > 100
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5


def test_fill_fraction_counts_real_tokens_over_slots():
    fills = {}
    for packing in (True, False):
        dm = module(make_records(200), batch_tokens=512, packing=packing, pack_width=128)
        dm.total_batches = len(dm.plan.batches(0))
        batches = list(dm.train_dataloader())
        real = sum(b["n_tokens"] for b in batches)
        assert real == sum(len(ids) for ids, _ in dm.train.base)  # one epoch: every token once
        fills[packing] = dm.fill_fraction()
        assert fills[packing] == pytest.approx(real / sum(b["input_ids"].numel() for b in batches))
        if packing:
            assert all(b["input_ids"].shape == (4, 128) for b in batches)  # 512 tokens = 4 rows of 128
    assert fills[True] > 0.9 and fills[True] > fills[False]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=200), st.integers(50, 120), st.integers(0, 5))
def test_pack_rows_uses_every_example_once_within_the_width(lengths, width, seed):
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows = pack_rows(lengths, order, width, max_open=4)
    assert sorted(i for row in rows for i in row) == sorted(order)
    assert all(sum(lengths[i] for i in row) <= width for row in rows)
    # best fit never leaves two open rows that could be merged... at least most rows are > half full
    assert sum(sum(lengths[i] for i in row) > width // 2 for row in rows) >= len(rows) - 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=200), st.integers(1, 400))
def test_length_batches_respect_the_token_budget(lengths, budget):
    batches = length_batches(lengths, range(len(lengths)), budget, random.Random(0))
    assert sorted(row[0] for b in batches for row in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[row[0]] for row in b) <= budget


def test_pack_rows_refuses_examples_longer_than_a_row():
    with pytest.raises(ValueError, match="longer than the row width"):
        pack_rows([5, 70], [0, 1], 64)


# --- order: deterministic, the same under workers, split by rank, resumable ---------------------
def test_order_is_a_function_of_seed_and_epoch():
    records = make_records(60)
    first = stream(module(records, batch_tokens=256, seed=3), 40)
    assert first == stream(module(records, batch_tokens=256, seed=3), 40)
    assert first != stream(module(records, batch_tokens=256, seed=4), 40)
    dm = module(records, batch_tokens=256, seed=3)
    per_epoch = len(dm.plan.batches(0))
    epochs = [sorted(i for b in first[k * per_epoch:(k + 1) * per_epoch] for i in b) for k in range(2)]
    assert epochs[0] == sorted(r["id"] for r in records)  # each epoch sees every example once...
    assert first[:per_epoch] != first[per_epoch: 2 * per_epoch]  # ...in a new order


def test_two_workers_yield_the_same_batches():
    records = make_records(80)
    batches = []
    for workers in (0, 2):
        dm = module(records, batch_tokens=256, num_workers=workers, total_batches=12)
        batches.append(list(dm.train_dataloader()))
    assert len(batches[0]) == len(batches[1]) == 12
    for a, b in zip(*batches, strict=True):
        assert a["example_ids"] == b["example_ids"]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])


def test_ranks_take_disjoint_interleaved_slices_of_one_stream():
    dm = module(make_records(60), batch_tokens=256)
    whole = stream(dm, 20)
    r0, r1 = stream(dm, 10, rank=0, world=2), stream(dm, 10, rank=1, world=2)
    assert r0 == whole[0::2] and r1 == whole[1::2]


def test_a_resumed_stream_continues_where_it_stopped_even_across_epochs():
    dm = module(make_records(60), batch_tokens=256)
    whole = stream(dm, 30)
    per_epoch = len(dm.plan.batches(0))
    for start in (1, per_epoch - 1, per_epoch, per_epoch + 2):
        fresh = module(make_records(60), batch_tokens=256)  # a new process: nothing cached
        assert stream(fresh, 30 - start, start=start) == whole[start:]
    restored = module(make_records(60), batch_tokens=256)
    restored.load_state_dict(dm.state_dict())
    assert restored.plan.sizes == dm.plan.sizes and stream(restored, 5, start=25) == whole[25:]


def test_loader_length_is_the_run_and_a_resumed_loader_yields_the_rest():
    dm = module(make_records(40), batch_tokens=256)
    sampler = _RunSampler(dm.plan, 0, 1, lambda: 7, lambda: 10)
    assert len(sampler) == 10 and len(list(sampler)) == 3  # a resumed run yields only the rest


# --- overlong examples and augmentation -------------------------------------------------------------
def test_overlong_examples_are_dropped_with_a_count(caplog):
    records = make_records(30, hi=20) + [{"id": 7, "prompt": "w1", "completion": " ".join(["w2"] * 80)}]
    with caplog.at_level(logging.WARNING):
        dm = module(records, max_seq_len=64, val=records[-1:], overlong_policy="keep")
    assert dm.dropped == {"train": 1, "val": 1}
    assert 7 not in {r["id"] for r in dm.train.records} and len(dm.train.records) == 30
    assert "dropped 1 of 31 train examples longer than max_seq_len=64" in caplog.text and "keep" in caplog.text
    assert all(len(ids) <= 64 for ids, _ in dm.train.base)


def test_everything_overlong_is_a_clear_error():
    with pytest.raises(ValueError, match="no training examples fit the context: all 5 train records .* "
                                         "longer than max_seq_len=16 tokens .*keep.*raise data.max_tokens"):
        module(make_records(5, lo=30, hi=40), max_seq_len=16, overlong_policy="keep")


def built_manifest(train: int, records: int, overlong: int = 0, unsolved: int = 0) -> dict:
    """The parts of a dataset manifest that say why a split is empty."""
    return {"counts": {"train": records}, "problems": {"train": train}, "traces": {"train": train},
            "unsolved_dropped": {"train": unsolved}, "config": {"data": {"train": train}},
            "overlong": {"policy": "drop", "max_tokens": 10, "count": {"train": overlong}}}


@pytest.mark.parametrize(("manifest", "why"), [
    (None, r"0 records \(data.train=0, or the build dropped every train trace as overlong or unsolved"),
    (built_manifest(0, 0), r"0 records \(data.train=0 asks for no train problems\)"),
    (built_manifest(50, 0, overlong=50), r"0 records \(50 of its 50 traces were longer than data.max_tokens=10"),
    (built_manifest(50, 0, unsolved=50), r"0 records \(50 of its 50 traces were unsolved and dropped"),
], ids=["no-manifest", "train=0", "overlong", "unsolved"])
def test_an_empty_train_split_says_why_not_that_nothing_fits(manifest, why):
    with pytest.raises(ValueError, match="no training examples: the dataset's train split has " + why) as e:
        module([], val=make_records(3), manifest=manifest)
    assert "fit the context" not in str(e.value)


def drop_words(record, rng):
    words = record["completion"].split()
    return " ".join(w for w in words if rng.random() < 0.5) or words[0]


def test_augmentation_is_applied_per_epoch_and_is_deterministic():
    records = make_records(30)
    dm = module(records, batch_tokens=4096, augment=drop_words)
    e0, e1 = dm.train.for_epoch(0), dm.train.for_epoch(1)
    assert [len(i) for i, _ in e0] != [len(i) for i, _ in e1]
    assert sum(len(i) for i, _ in e0) < sum(len(i) for i, _ in dm.train.base)
    again = module(records, batch_tokens=4096, augment=drop_words)
    assert all((a == b).all() for (a, _), (b, _) in zip(e0, again.train.for_epoch(0), strict=True))
    # a worker re-encodes a single example identically to the main process
    fresh = module(records, batch_tokens=4096, augment=drop_words)
    assert all((fresh.train.get(1, i)[0] == e1[i][0]).all() for i in range(len(records)))
    # the batches hold the augmented sequences, and validation never augments
    batch = dm._loader(dm.train_dataloader().dataset, [(1, [[0, 1]])]).__iter__().__next__()
    assert batch["n_tokens"] == len(e1[0][0]) + len(e1[1][0])
    assert dm.val.augment is None
