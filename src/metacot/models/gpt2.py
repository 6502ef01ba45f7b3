"""GPT-2-style causal LMs built from scratch (learned positions, LayerNorm, GELU MLP)."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

from metacot.models.common import check_sizes, special_ids


class GPT2Factory:
    """`model=gpt2`: a randomly initialised `GPT2LMHeadModel` (tied embeddings) with SDPA attention.

    Learned position embeddings mean the model cannot read past `max_seq_len` tokens: build it with
    the longest sequence it will ever see (prompt + completion).
    """

    def __init__(
        self,
        name: str = "gpt2",
        d_model: int = 256,
        n_layers: int = 6,
        n_heads: int = 8,
        dropout: float = 0.0,
        init_std: float = 0.02,
    ):
        check_sizes(d_model=d_model, n_layers=n_layers, n_heads=n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.name = name
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.dropout = dropout
        self.init_std = init_std

    def config(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> GPT2Config:
        return GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max_seq_len,
            n_embd=self.d_model,
            n_layer=self.n_layers,
            n_head=self.n_heads,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            initializer_range=self.init_std,
            **special_ids(tokenizer),
        )

    def build(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> PreTrainedModel:
        config = self.config(tokenizer, max_seq_len)
        config._attn_implementation = "sdpa"
        return GPT2LMHeadModel(config)
