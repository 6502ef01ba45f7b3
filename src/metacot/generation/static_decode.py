"""A Llama decode step over static buffers: the function `cuda_graph` captures.

A CUDA graph replays kernels on fixed addresses, so everything a step reads or writes lives in
tensors allocated once and refreshed in place: the weights (fused as in `llama_decode`), the RoPE
table, the KV cache, each batch row's last token and position, its left-padding mask, and the
number of filled cache slots as a device scalar. `step(rows, span)` decodes the first `rows` rows
attending over the first `span` slots; its shapes depend on those two ints only (one graph each).
Called directly it is the same computation without a graph, which is how the CPU tests run it.

Layout: cache (layers, rows * kv heads, capacity, head dim); every row fills the same slot each
step (prompts are left-padded to one width), so the write index is one scalar for the batch.
Attention is SDPA with each kv head's group of query heads as its "query positions": no copies of
the cache for grouped heads, and scores accumulate in float32 as in the model's own forward (bf16
scores rounded before the softmax flip near-tied greedy choices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM

from metacot.generation.llama_decode import LlamaWeights, rms_norm

# Flash rejects the mask, so on CUDA this is the memory-efficient kernel (fp32 accumulation, graph-safe);
# cuDNN attention is left out (it costs milliseconds of CPU per call when decoding).
BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def weight_tensors(w: LlamaWeights) -> list[torch.Tensor]:
    """The decode weights in a fixed order: embedding, each layer's four matrices, lm head, RoPE table."""
    return [w.embed, *(t for layer in w.layers for t in layer), w.lm_head, w.rope]


class StaticLlama:
    """Static decode state for up to `rows` sequences of up to `capacity` tokens, computing in `dtype`."""

    @torch.no_grad()
    def __init__(self, model: LlamaForCausalLM, rows: int, capacity: int, dtype: torch.dtype):
        w = LlamaWeights(model, capacity)
        self.rows, self.capacity, self.dtype = rows, capacity, dtype
        self.device = w.embed.device
        self.n_heads, self.n_kv, self.head_dim = w.n_heads, w.n_kv, w.head_dim
        self.scale, self.eps, self.split = w.scale, w.eps, w.split
        # empty_like keeps each tensor's strides (the transposed o/down projections stay transposed)
        self.weights = [torch.empty_like(t, dtype=dtype).copy_(t) for t in weight_tensors(w)]
        n_layers = len(w.layers)
        self.keys = torch.zeros(
            n_layers, rows * self.n_kv, capacity, self.head_dim, dtype=dtype, device=self.device
        )
        self.values = torch.zeros_like(self.keys)
        self.real = torch.ones(rows, capacity, dtype=torch.bool, device=self.device)  # False on left padding
        self.token = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.position = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.length = torch.zeros(1, dtype=torch.long, device=self.device)  # filled slots (all rows)
        self.slots = torch.arange(capacity, device=self.device)

    @torch.no_grad()
    def load(self, model: LlamaForCausalLM) -> None:
        """Copy the model's current weights in (RL updates them between generate calls)."""
        for dst, src in zip(self.weights, weight_tensors(LlamaWeights(model, self.capacity)), strict=True):
            dst.copy_(src)

    def prefill(self, keys: list, values: list, valid: torch.Tensor, last_position: torch.Tensor) -> None:
        """Seed rows 0..n-1 from a prefill: per-layer keys/values (n, kv heads, width, head dim),
        `valid` (n, width) False on left padding, `last_position` (n,) of each row's last prompt token.
        Rows n.. are scratch (a padded bucket): they see every filled slot and their output is unused."""
        n, width = valid.shape
        rows, d = n * self.n_kv, self.head_dim
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.keys[i, :rows, :width] = k.reshape(rows, width, d)
            self.values[i, :rows, :width] = v.reshape(rows, width, d)
        self.real.fill_(True)
        self.real[:n, :width] = valid
        self.position.zero_()
        self.position[:n] = last_position + 1
        self.length.fill_(width)

    def keep(self, keep: torch.Tensor, length: int) -> None:
        """Move batch rows `keep` (ascending) to the front, in order (dropping finished rows)."""
        kv = (keep[:, None] * self.n_kv + torch.arange(self.n_kv, device=keep.device)).flatten()
        m = len(kv)
        self.keys[:, :m, :length] = self.keys[:, kv, :length]
        self.values[:, :m, :length] = self.values[:, kv, :length]
        self.real[: len(keep)] = self.real[keep]
        self.position[: len(keep)] = self.position[keep]

    def step(self, rows: int, span: int) -> torch.Tensor:
        """Logits (rows, vocab) after appending `token` at `position` to slot `length`, rows 0..rows-1.

        Writes only that cache slot, with values the same inputs always give (so a warm-up run
        before a capture changes nothing). Attends over slots [0, span): span > length required."""
        n, nh, nkv, d = rows, self.n_heads, self.n_kv, self.head_dim
        nq, _, nqk, _ = self.split
        g, eps = nh // nkv, self.eps
        embed, *rest = self.weights
        layers, lm_head, rope = rest[:-2], rest[-2], rest[-1]
        cs = F.embedding(self.position[:n], rope).view(n, 2, 1, d)  # cos | sin of each row's position
        x = F.embedding(self.token[:n], embed)
        mask = (self.real[:n, :span] & (self.slots[:span] <= self.length)).view(n, 1, 1, span)
        for i in range(len(layers) // 4):
            qkv_w, o_w, gu_w, down_w = layers[4 * i : 4 * i + 4]
            proj = rms_norm(x, eps) @ qkv_w.t()
            qk = (proj[:, : 2 * nqk].view(n, 2, -1, d) * cs).sum(1)  # RoPE: (n, heads + kv heads, d)
            keys, values = self.keys[i, : n * nkv], self.values[i, : n * nkv]
            keys.index_copy_(1, self.length, qk[:, nh:].reshape(n * nkv, 1, d))
            values.index_copy_(1, self.length, proj[:, 2 * nqk :].reshape(n * nkv, 1, d))
            q = qk[:, :nh].reshape(n, nkv, g, d)  # query heads grouped by the kv head they read
            k, v = keys[:, :span].view(n, nkv, span, d), values[:, :span].view(n, nkv, span, d)
            with sdpa_kernel(BACKENDS):
                attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            x = torch.addmm(x, attn.reshape(n, nq), o_w)
            gate, up = (rms_norm(x, eps) @ gu_w.t()).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate).mul_(up), down_w)
        return rms_norm(x, eps) @ lm_head.t()

    def advance(self, rows: int, span: int) -> torch.Tensor:
        """`step`, then move rows 0..rows-1 one position on and count the slot filled."""
        logits = self.step(rows, span)
        self.position[:rows] += 1
        self.length += 1
        return logits
