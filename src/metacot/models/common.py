"""What every factory shares: special ids from the tokenizer, parameter counts, FLOPs per token."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase


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
