"""What every factory shares: special ids from the tokenizer, parameter counts, FLOPs per token, and
the attention implementation of training forwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from transformers import PreTrainedTokenizerBase


def check_sizes(**sizes: int | float | None) -> None:
    """`model.<name>` sizes must be positive integers (None: the factory's default); a clear error
    here instead of one from deep inside `transformers`."""
    for name, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"model.{name} must be an integer >= 1, got {value!r}")


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """pad/bos/eos ids for a model config; a tokenizer without a pad token pads with eos."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: every completion must end with one (`</s>`)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "pad_token_id": pad,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _embedding_tables(model: nn.Module) -> list[nn.Parameter]:
    """Lookup tables (token and learned position embeddings): parameters that cost no matmul FLOPs."""
    tables = [model.get_input_embeddings().weight]
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight is not tables[0]:
            tables.append(module.weight)
    return tables


def num_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Unique parameters (tied weights counted once); optionally without the embedding tables."""
    params = {id(p): p for p in model.parameters()}
    if exclude_embeddings:
        for table in _embedding_tables(model):
            params.pop(id(table), None)
    return sum(p.numel() for p in params.values())


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, for MFU: 6 N + 12 L d T (PaLM, appendix B).

    N counts the weights that do matmuls: everything but the lookup tables, plus the output
    projection (which reuses the token table when embeddings are tied). The attention term uses
    the full context T (the usual convention, although causal attention does about half of it).
    """
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n = num_parameters(model, exclude_embeddings=True)
    head = model.get_output_embeddings()
    if head is not None:
        if head.weight is model.get_input_embeddings().weight:
            n += head.weight.numel()
    return 6.0 * n + 12.0 * n_layers * d_model * seq_len


ATTENTION_CHOICES = ("auto", "sdpa", "flex_attention")


def flex_attention_available() -> bool:
    """torch has FlexAttention (2.5+) and transformers can route attention to it."""
    try:
        from transformers.utils import is_torch_flex_attn_available
    except ImportError:
        return False
    return bool(is_torch_flex_attn_available())


def training_attention(model: nn.Module, requested: str, device_type: str, packed: bool) -> str:
    """The attention implementation for training forwards (`sft.attention`).

    `auto` picks FlexAttention on a GPU for packed rows, where it pays: with per-example position
    ids transformers builds a block-diagonal mask, which keeps SDPA off its flash kernel, while
    FlexAttention skips the blocks between examples (base, seq 1024, H100: MFU 37% vs 33%).
    Everywhere else, and for models without FlexAttention support, `auto` is SDPA. An explicit
    `flex_attention` that cannot run fails here, before any work, with what to do instead.
    """
    if requested not in ATTENTION_CHOICES:
        raise ValueError(f"sft.attention must be one of {', '.join(ATTENTION_CHOICES)}, got {requested!r}")
    supported = bool(getattr(model, "_supports_flex_attn", False)) and flex_attention_available()
    if requested == "auto":
        return "flex_attention" if device_type == "cuda" and packed and supported else "sdpa"
    if requested == "flex_attention":
        if not supported:
            raise ValueError(f"sft.attention=flex_attention: {type(model).__name__} (or this torch/transformers) "
                             "has no FlexAttention support; use sft.attention=sdpa or auto")
        if device_type != "cuda":
            raise ValueError("sft.attention=flex_attention needs a GPU (FlexAttention has no backward on CPU); "
                             "use sft.attention=auto or sdpa")
    return requested


@contextmanager
def attention(model: nn.Module, implementation: str | None) -> Iterator[None]:
    """Forwards inside use `implementation` (transformers reads `config._attn_implementation` at
    every forward); the model's own setting is restored after, so sampling and export keep SDPA."""
    config = getattr(model, "config", None)
    if implementation is None or config is None or config._attn_implementation == implementation:
        yield
        return
    before = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before
