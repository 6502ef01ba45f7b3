"""A lean one-token-per-row decode step for `LlamaForCausalLM`, reading the HF module's weights.

The HF forward spends most of a small model's decode step in Python and mask plumbing (a few
dozen module calls, mask building, cache bookkeeping, SDPA with an explicit mask). Here a step is
about a dozen tensor ops per layer:

- the RMSNorm weights are folded into the projection that follows them;
- q, k, v and the "rotate_half" of q and k come out of one fused matmul (rotate_half is a signed
  permutation of rows, so it folds into the weights), and RoPE is then `a * cos + b * sin` with
  cos/sin gathered from tables built once by the model's own rotary embedding;
- keys/values go into a static, blocked cache written in place (layout: see `LlamaDecoder`);
- attention is `bmm(q, K^T)`, softmax, `bmm(p, V)` over the filled blocks, with an additive mask
  that hides each row's left padding and the slots not written yet.

Prefill stays with the HF forward; its keys/values are copied into the static cache once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedModel

BLOCK = 32  # cache positions per block (see LlamaDecoder)
STATIC_ROPE = ("default", "linear", "llama3")  # rope types whose inv_freq does not depend on the length


def fast_path_problem(model: PreTrainedModel) -> str | None:
    """Why `model` cannot use the fast decode path, or None when it can."""
    if type(model) is not LlamaForCausalLM:
        return f"{type(model).__name__} is not LlamaForCausalLM"
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {"rope_type": "default"}
    if rope.get("rope_type", "default") not in STATIC_ROPE:
        return f"rope_type {rope.get('rope_type')!r} is not one of {STATIC_ROPE}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} is not silu"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "attention or MLP biases"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if getattr(cfg, "sliding_window", None):
        return "sliding-window attention"
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        return f"parameters are not all of one floating dtype ({dtypes})"
    return None


class LlamaWeights:
    """Decode-ready weights of one `LlamaForCausalLM`: fused, norm-folded copies, built once per generate call."""

    @torch.no_grad()
    def __init__(self, model: LlamaForCausalLM, capacity: int):
        cfg = model.config
        attn0 = model.model.layers[0].self_attn
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.scale = attn0.scaling
        self.eps = cfg.rms_norm_eps
        self.embed = model.model.embed_tokens.weight
        d, nq, nk = self.head_dim, self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.split = (nq, nk, nq + nk, nk)  # projection rows: q | k | rot(q) | rot(k) | v
        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            q, k, v = a.q_proj.weight, a.k_proj.weight, a.v_proj.weight
            qkv = torch.cat([q, k, rotate_rows(q, d), rotate_rows(k, d), v]) * layer.input_layernorm.weight
            gate_up = (
                torch.cat([m.gate_proj.weight, m.up_proj.weight]) * layer.post_attention_layernorm.weight
            )
            self.layers.append(
                (qkv.contiguous(), a.o_proj.weight.t(), gate_up.contiguous(), m.down_proj.weight.t())
            )
        self.lm_head = (model.lm_head.weight * model.model.norm.weight).contiguous()
        # cos/sin exactly as the HF forward computes them, for every absolute position
        pos = torch.arange(capacity, device=self.embed.device)[None]
        cos, sin = model.model.rotary_emb(self.embed[:1], pos)
        self.rope = torch.cat([cos[0], sin[0]], dim=-1)  # (capacity, 2 * head_dim)


def rotate_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows R W with (R W) x = rotate_half(W x) per head: rotate_half(x) = cat(-x2, x1)."""
    heads = w.view(-1, 2, head_dim // 2, w.shape[-1])
    return torch.cat([-heads[:, 1:], heads[:, :1]], dim=1).reshape(w.shape)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm without its weight (folded into the next matmul): computed in float32 like HF."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class LlamaDecoder:
    """The decode state of one micro-batch: static KV cache, additive attention mask, fill length.

    The cache is blocked, (layers, blocks, batch * kv heads, BLOCK, head dim): the filled prefix of a
    layer is then one contiguous chunk, read at full memory bandwidth by a bmm over (block, row) pairs.
    With a (batch, heads, capacity, dim) layout each row's prefix is a separate strided run, and on
    CPU that read (memory-bound: the whole cache every step) is 2-3x slower.
    `keys`/`values` of the prefill (per layer, (batch, kv heads, width, head dim)) seed the cache;
    `valid` (batch, width) marks real prompt tokens (False on left padding).
    """

    def __init__(
        self, weights: LlamaWeights, prefill_keys, prefill_values, valid: torch.Tensor, capacity: int
    ):
        self.w = weights
        n, width = valid.shape
        nkv, d = weights.n_kv, weights.head_dim
        k0 = prefill_keys[0]
        blocks = -(-capacity // BLOCK)
        # zeros, not empty: unwritten slots meet a zero probability, and 0 * garbage could be NaN
        self.keys = k0.new_zeros(len(weights.layers), blocks, n * nkv, BLOCK, d)
        self.values = torch.zeros_like(self.keys)
        for i, (k, v) in enumerate(zip(prefill_keys, prefill_values, strict=True)):
            for j in range(-(-width // BLOCK)):
                m = min(BLOCK, width - j * BLOCK)
                self.keys[i, j, :, :m] = k[:, :, j * BLOCK : j * BLOCK + m].reshape(n * nkv, m, d)
                self.values[i, j, :, :m] = v[:, :, j * BLOCK : j * BLOCK + m].reshape(n * nkv, m, d)
        self.length = width
        mask = k0.new_full((n, blocks * BLOCK), float("-inf"))  # pads and not-yet-written slots
        mask[:, :width].masked_fill_(valid, 0.0)
        self.mask = mask[:, None, None, :].expand(n, nkv, 1, blocks * BLOCK).reshape(n * nkv, 1, -1).clone()

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows `keep` (dropping finished rows)."""
        layers, blocks, _, block, d = self.keys.shape
        nkv, width = self.w.n_kv, self.mask.shape[-1]
        self.keys = self.keys.view(layers, blocks, -1, nkv, block, d)[:, :, keep].view(
            layers, blocks, -1, block, d
        )
        self.values = self.values.view(layers, blocks, -1, nkv, block, d)[:, :, keep].view(
            layers, blocks, -1, block, d
        )
        self.mask = self.mask.view(-1, nkv, 1, width)[keep].view(-1, 1, width)

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Append one token per row at absolute `position` (rows,); returns next-token logits (rows, vocab)."""
        w = self.w
        n, t = token.shape[0], self.length
        nq, _, nqk, _ = w.split
        g, d, eps, rows = w.n_heads // w.n_kv, w.head_dim, w.eps, n * w.n_kv
        blk, off, nb = t // BLOCK, t % BLOCK, t // BLOCK + 1
        self.mask[:, :, t] = 0.0
        mask = self.mask[:, :, : nb * BLOCK]
        cs = F.embedding(position, w.rope).view(n, 2, 1, d)  # cos | sin of each row's position
        x = F.embedding(token, w.embed)
        for i, (qkv_w, o_w, gu_w, down_w) in enumerate(w.layers):
            h = rms_norm(x, eps)
            proj = h @ qkv_w.t()
            # q|k and rot(q)|rot(k) side by side: RoPE = a * cos + b * sin
            qk = (proj[:, : 2 * nqk].view(n, 2, -1, d) * cs).sum(1)  # (n, heads + kv heads, d)
            self.keys[i, blk, :, off] = qk[:, w.n_heads :].reshape(rows, d)
            self.values[i, blk, :, off] = proj[:, 2 * nqk :].reshape(rows, d)
            keys = self.keys[i, :nb].view(nb * rows, BLOCK, d)
            values = self.values[i, :nb].view(nb * rows, BLOCK, d)
            q = qk[:, : w.n_heads].reshape(1, rows, g, d).expand(nb, rows, g, d).reshape(nb * rows, g, d)
            scores = torch.bmm(q, keys.transpose(1, 2)).view(nb, rows, g, BLOCK).permute(1, 2, 0, 3)
            scores = torch.add(mask, scores.reshape(rows, g, nb * BLOCK), alpha=w.scale)
            probs = torch.softmax(scores, dim=-1).view(rows, g, nb, BLOCK).permute(2, 0, 1, 3)
            attn = torch.bmm(probs.reshape(nb * rows, g, BLOCK), values).view(nb, n, nq).sum(0)
            x = torch.addmm(x, attn, o_w)
            h = rms_norm(x, eps)
            gate, up = (h @ gu_w.t()).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate).mul_(up), down_w)
        self.length = t + 1
        return rms_norm(x, eps) @ w.lm_head.t()
