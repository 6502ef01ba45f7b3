"""`sft.attention`: which attention training forwards use (FlexAttention for packed rows on a GPU),
that it is restored for sampling/export, that a bad choice fails before any work, and that
FlexAttention computes the same packed-row losses as SDPA (forward only: no CPU backward)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from metacot.data.datamodule import TraceDataModule
from metacot.models.common import attention, flex_attention_available, training_attention
from metacot.modules.sft import SFTConfig, SFTModule, token_loss_sum
from tests.unit.test_sft_module import TOK, config, llama, make_records

FLEX = flex_attention_available()


def gpt2() -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=len(TOK), n_embd=32, n_layer=2, n_head=4, n_positions=256)
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def packed_batch() -> dict:
    dm = TraceDataModule(make_records(40), [], TOK, 128, batch_tokens=512, total_batches=1)
    batch = next(iter(dm.train_dataloader()))
    starts = (batch["position_ids"] == 0).sum(dim=1)
    assert int(starts.max()) > 1, "the batch packs several examples per row"
    return batch


@pytest.mark.skipif(not FLEX, reason="this torch/transformers has no FlexAttention")
def test_auto_picks_flex_attention_for_packed_rows_on_a_gpu_only():
    model = llama()
    assert training_attention(model, "auto", "cuda", packed=True) == "flex_attention"
    assert training_attention(model, "auto", "cuda", packed=False) == "sdpa"
    assert training_attention(model, "auto", "cpu", packed=True) == "sdpa"
    assert training_attention(gpt2(), "auto", "cuda", packed=True) == "sdpa"  # GPT-2 has no FlexAttention
    assert training_attention(model, "sdpa", "cuda", packed=True) == "sdpa"
    assert training_attention(model, "flex_attention", "cuda", packed=True) == "flex_attention"


def test_an_explicit_choice_that_cannot_run_fails_with_what_to_do():
    with pytest.raises(ValueError, match="needs a GPU.*sft.attention=auto or sdpa"):
        training_attention(llama(), "flex_attention", "cpu", packed=True)
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*no FlexAttention support"):
        training_attention(gpt2(), "flex_attention", "cuda", packed=True)
    with pytest.raises(ValueError, match="must be one of auto, sdpa, flex_attention"):
        training_attention(llama(), "flash", "cuda", packed=True)
    with pytest.raises(ValueError, match="sft.attention must be one of"):
        SFTConfig(attention="flash")


def test_the_context_sets_the_implementation_and_restores_it_even_on_error():
    model = llama()
    with attention(model, "eager"):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), attention(model, "eager"):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    with attention(model, None):
        assert model.config._attn_implementation == "sdpa"


def test_training_and_val_forwards_use_the_resolved_attention_and_nothing_else():
    module = SFTModule(llama(), config())
    seen = []
    module.model.register_forward_pre_hook(lambda m, args: seen.append(m.config._attn_implementation))
    batch = packed_batch()
    assert module.training_attention(batch["input_ids"].device) == "sdpa"  # auto on CPU
    module._attention = ("cpu", "eager")  # stands in for flex_attention, which has no CPU backward
    module.training_step(batch, 0).backward()
    module.on_validation_epoch_start()
    module.validation_step(batch, 0)
    assert seen == ["eager", "eager"]
    assert module.model.config._attn_implementation == "sdpa"  # sampling and export see SDPA


@pytest.mark.skipif(not FLEX, reason="this torch/transformers has no FlexAttention")
def test_flex_attention_gives_the_sdpa_losses_on_packed_rows():
    """Examples packed in a row must not see each other under either implementation (~10 s: compiles)."""
    torch.manual_seed(0)
    model, batch = llama().eval(), packed_batch()
    with torch.no_grad():
        sdpa = token_loss_sum(model, batch, reduction="none")
        with attention(model, "flex_attention"):
            flex = token_loss_sum(model, batch, reduction="none")
    assert torch.allclose(sdpa, flex, atol=1e-5), float((sdpa - flex).abs().max())
