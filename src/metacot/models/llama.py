"""Llama-style causal LMs built from scratch (RoPE, RMSNorm, SwiGLU), sized by a few numbers."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from metacot.models.common import check_sizes, special_ids


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """Llama's MLP width: 8/3 d rounded up to a multiple, so SwiGLU costs about a 4d GELU MLP."""
    hidden = int(8 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class LlamaFactory:
    """`model=tiny|small|base`: a randomly initialised `LlamaForCausalLM` with SDPA attention."""

    def __init__(
        self,
        name: str = "llama",
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        d_ff: int | None = None,
        tie_embeddings: bool = True,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
        init_std: float = 0.02,
    ):
        check_sizes(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_kv_heads is not None and n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.name = name
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.d_ff = d_ff or swiglu_hidden(d_model)
        self.tie_embeddings = tie_embeddings
        self.rope_theta = rope_theta
        self.dropout = dropout
        self.init_std = init_std

    def config(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.d_model,
            intermediate_size=self.d_ff,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            max_position_embeddings=max_seq_len,
            initializer_range=self.init_std,
            tie_word_embeddings=self.tie_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            attention_dropout=self.dropout,
            **special_ids(tokenizer),
        )

    def build(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> PreTrainedModel:
        config = self.config(tokenizer, max_seq_len)
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config)
