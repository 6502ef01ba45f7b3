"""A lean one-token-per-row decode step for `LlamaForCausalLM`, reading the HF module's weights.

The HF forward spends most of a small model's decode step in Python and mask plumbing (a few
dozen module calls, mask building, cache bookkeeping, SDPA with an explicit mask). On CPU a step
here is under twenty tensor ops per layer, most writing into buffers allocated once:

- the RMSNorm weights are folded into the projection that follows them; q, k and v come out of
  one matmul against pre-transposed weights;
- RoPE is one complex multiply: the rows of q and k are reordered so that each rotated pair
  (i, i + head_dim/2) sits side by side, and the attention scores q.k do not depend on that order;
- keys/values go into a static, blocked cache written in place (layout: see `LlamaDecoder`);
- attention is `bmm(q, K^T)`, softmax, `bmm(p, V)` over the filled blocks, with an additive mask
  that hides each row's left padding and the slots not written yet.

Prefill stays with the HF forward; its keys/values are copied into the static cache once.
`LlamaWeights` also serves `static_decode` (the CUDA-graph step), which reads its other layout
(`layers`, `rope`: rotate_half folded into the projection as extra rows).
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedModel

BLOCK = 32  # cache positions per block (see LlamaDecoder)
STATIC_ROPE = ("default", "linear", "llama3")  # rope types whose inv_freq does not depend on the length
COMPLEX_ROPE = (torch.float32, torch.float64)  # dtypes with a complex twin; others rotate with real ops


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


def pair_order(head_dim: int) -> torch.Tensor:
    """Head-dim order that puts each RoPE pair (i, i + head_dim/2) at (2i, 2i + 1)."""
    half = torch.arange(head_dim // 2)
    return torch.stack([half, half + head_dim // 2], dim=-1).flatten()


class LlamaWeights:
    """Decode-ready weights of one `LlamaForCausalLM`: fused, norm-folded copies, built once per generate call.

    Each layout is built on first use: the CPU step reads `step_layers`/`head_t`/`rotation`, the
    CUDA-graph step (`static_decode`) reads `layers`/`lm_head`/`rope`."""

    @torch.no_grad()
    def __init__(self, model: LlamaForCausalLM, capacity: int):
        cfg = model.config
        attn0 = model.model.layers[0].self_attn
        self.model, self.capacity = model, capacity
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.scale = attn0.scaling
        self.eps = cfg.rms_norm_eps
        self.embed = model.model.embed_tokens.weight
        nq, nk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.split = (nq, nk, nq + nk, nk)  # `layers` projection rows: q | k | rot(q) | rot(k) | v

    @cached_property
    @torch.no_grad()
    def layers(self) -> list[tuple[torch.Tensor, ...]]:
        """Per layer (q|k|rot q|rot k|v rows, o^T, gate|up rows, down^T), norm weights folded in."""
        d, out = self.head_dim, []
        for layer in self.model.model.layers:
            a, m = layer.self_attn, layer.mlp
            q, k, v = a.q_proj.weight, a.k_proj.weight, a.v_proj.weight
            qkv = torch.cat([q, k, rotate_rows(q, d), rotate_rows(k, d), v]) * layer.input_layernorm.weight
            gate_up = (
                torch.cat([m.gate_proj.weight, m.up_proj.weight]) * layer.post_attention_layernorm.weight
            )
            out.append((qkv.contiguous(), a.o_proj.weight.t(), gate_up.contiguous(), m.down_proj.weight.t()))
        return out

    @cached_property
    @torch.no_grad()
    def lm_head(self) -> torch.Tensor:
        return (self.model.lm_head.weight * self.model.model.norm.weight).contiguous()

    @cached_property
    @torch.no_grad()
    def rope(self) -> torch.Tensor:
        """cos | sin (capacity, 2 * head_dim) exactly as the HF forward computes them, per absolute position."""
        pos = torch.arange(self.capacity, device=self.embed.device)[None]
        cos, sin = self.model.model.rotary_emb(self.embed[:1], pos)
        return torch.cat([cos[0], sin[0]], dim=-1)

    @cached_property
    @torch.no_grad()
    def step_layers(self) -> list[tuple[torch.Tensor, ...]]:
        """Per layer, as (in, out) matrices for `x @ w`: q|k|v (q, k rows in `pair_order`), o, gate|up, down."""
        d, order, out = self.head_dim, pair_order(self.head_dim), []
        for layer in self.model.model.layers:
            a, m = layer.self_attn, layer.mlp
            q = a.q_proj.weight.view(self.n_heads, d, -1)[:, order].flatten(0, 1)
            k = a.k_proj.weight.view(self.n_kv, d, -1)[:, order].flatten(0, 1)
            qkv = torch.cat([q, k, a.v_proj.weight]) * layer.input_layernorm.weight
            gate_up = (
                torch.cat([m.gate_proj.weight, m.up_proj.weight]) * layer.post_attention_layernorm.weight
            )
            out.append(tuple(w.t().contiguous() for w in (qkv, a.o_proj.weight, gate_up, m.down_proj.weight)))
        return out

    @cached_property
    def head_t(self) -> torch.Tensor:
        return self.lm_head.t().contiguous()

    @cached_property
    def rotation(self) -> torch.Tensor:
        """Per position, the RoPE rotation of one (x_i, x_{i + head_dim/2}) pair: cos + i sin (complex,
        capacity x head_dim/2), or for dtypes without complex numbers the real (cos, cos | -sin, sin)."""
        half = self.head_dim // 2
        cos, sin = self.rope[:, :half], self.rope[:, self.head_dim : self.head_dim + half]
        if self.embed.dtype in COMPLEX_ROPE:
            return torch.complex(cos, sin)
        return torch.cat([torch.stack([cos, cos], -1), torch.stack([-sin, sin], -1)], dim=-1).flatten(1)


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
    layer is then one contiguous chunk, read in one sweep by a bmm over (block, row) pairs. With a
    (batch, heads, capacity, dim) layout each row's prefix is a separate strided run, and on CPU that
    read (the whole cache every step: the largest cost of a step) is 2-3x slower.
    Keys are stored with the head dim in `pair_order` (as q and k come out of `step_layers`).
    `keys`/`values` of the prefill (per layer, (batch, kv heads, width, head dim)) seed the cache;
    `valid` (batch, width) marks real prompt tokens (False on left padding).

    A step allocates almost nothing: the projections, RoPE, scores and outputs go into buffers made
    per batch size (`_buffers`) and per number of filled blocks (`_blocks`); at ~100 small ops per
    step, each allocation and view creation is a visible share of the time.
    """

    def __init__(
        self, weights: LlamaWeights, prefill_keys, prefill_values, valid: torch.Tensor, capacity: int
    ):
        self.w = weights
        n, width = valid.shape
        nkv, d = weights.n_kv, weights.head_dim
        k0, dtype = prefill_keys[0], weights.embed.dtype  # a prefill under autocast gives other dtypes
        blocks = -(-capacity // BLOCK)
        order = pair_order(d).to(k0.device)
        # Unwritten slots meet a zero probability, and 0 * garbage could be NaN: a block is zeroed when
        # attention first reads it (`zeroed` blocks so far), so an early stop never touches the rest.
        self.keys = k0.new_empty(len(prefill_keys), blocks, n * nkv, BLOCK, d, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.zeroed = -(-width // BLOCK)
        self.keys[:, : self.zeroed].zero_()
        self.values[:, : self.zeroed].zero_()
        for i, (k, v) in enumerate(zip(prefill_keys, prefill_values, strict=True)):
            k = k[..., order]
            for j in range(self.zeroed):
                m = min(BLOCK, width - j * BLOCK)
                self.keys[i, j, :, :m] = k[:, :, j * BLOCK : j * BLOCK + m].reshape(n * nkv, m, d)
                self.values[i, j, :, :m] = v[:, :, j * BLOCK : j * BLOCK + m].reshape(n * nkv, m, d)
        self.length = width
        mask = self.keys.new_full((n, blocks * BLOCK), float("-inf"))  # pads and not-yet-written slots
        mask[:, :width].masked_fill_(valid, 0.0)
        self.mask = mask[:, None, None, :].expand(n, nkv, 1, blocks * BLOCK).reshape(n * nkv, 1, -1).clone()
        self.complex = dtype in COMPLEX_ROPE
        self._buffers()

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows `keep` (dropping finished rows)."""
        layers, blocks, rows, block, d = self.keys.shape
        nkv, width, z = self.w.n_kv, self.mask.shape[-1], self.zeroed
        kept = (rows // nkv, nkv, block, d)

        def pick(cache: torch.Tensor) -> torch.Tensor:  # only the blocks in use are copied
            out = cache.new_empty(layers, blocks, len(keep) * nkv, block, d)
            out[:, :z] = cache[:, :z].view(layers, z, *kept)[:, :, keep].view(layers, z, -1, block, d)
            return out

        self.keys, self.values = pick(self.keys), pick(self.values)
        self.mask = self.mask.view(-1, nkv, 1, width)[keep].view(-1, 1, width)
        self._buffers()

    def _buffers(self) -> None:
        """Step buffers and views for the current batch size."""
        w, new = self.w, self.keys.new_empty
        layers, blocks, rows, _, d = self.keys.shape
        n, g, half = rows // w.n_kv, w.n_heads // w.n_kv, d // 2
        nq, nk, ff = w.n_heads * d, w.n_kv * d, w.step_layers[0][2].shape[1] // 2
        self.n = n
        self.proj = new(n, nq + 2 * nk)  # q | k | v
        self.q_in = self.proj[:, :nq].view(n, w.n_heads, half, 2)
        self.k_in = self.proj[:, nq : nq + nk].view(n, w.n_kv, half, 2)
        self.v_in = self.proj[:, nq + nk :].view(n, w.n_kv, d)
        q = new(n, w.n_heads, half, 2)  # q after RoPE
        self.q_rows = q.view(1, rows, g, d)  # query heads grouped by the kv head they read
        self.q_out = q
        if self.complex:
            self.q_in, self.k_in, self.q_out = (torch.view_as_complex(t) for t in (self.q_in, self.k_in, q))
        self.attn = new(n, nq)
        self.gate_up = new(n, 2 * ff)
        self.gate, self.up = self.gate_up[:, :ff], self.gate_up[:, ff:]
        self.mask_slots = self.mask[:, 0].unbind(1)
        self.filled = None  # (nb, buffers) of `_blocks`, rebuilt when nb changes

    def _blocks(self, nb: int) -> dict:
        """Buffers and cache views for attention over the first `nb` blocks."""
        w, new = self.w, self.keys.new_empty
        rows, d = self.keys.shape[2], self.w.head_dim
        n, g = self.n, w.n_heads // w.n_kv
        q, out = new(nb * rows, g, d), new(nb * rows, g, d)
        scores, probs, logits = new(nb * rows, g, BLOCK), new(nb * rows, g, BLOCK), new(rows, g, nb * BLOCK)
        keys, values = self.keys[:, :nb], self.values[:, :nb]
        return {
            "q": q,
            "q_blocks": q.view(nb, rows, g, d),
            "keys_t": [k.view(nb * rows, BLOCK, d).transpose(1, 2) for k in keys],
            "values": [v.view(nb * rows, BLOCK, d) for v in values],
            "scores": scores,
            "scores_by_row": scores.view(nb, rows, g, BLOCK).permute(1, 2, 0, 3),
            "mask": self.mask[:, :, : nb * BLOCK].view(rows, 1, nb, BLOCK),
            "logits": logits,
            "logits_blocks": logits.view(rows, g, nb, BLOCK),
            "probs": probs,
            "probs_by_row": probs.view(nb, rows, g, BLOCK).permute(1, 2, 0, 3),
            "out": out,
            "out_blocks": out.view(nb, n, w.n_heads * d),
        }

    def _rope(self, x: torch.Tensor, rot: torch.Tensor, out: torch.Tensor) -> None:
        """out = x rotated by `rot` (`LlamaWeights.rotation` rows), pairs side by side in the last dim."""
        if self.complex:
            torch.mul(x, rot, out=out)
        else:  # (a, b) -> (a cos - b sin, b cos + a sin), as HF's q * cos + rotate_half(q) * sin
            torch.add(x * rot[..., :2], x.flip(-1) * rot[..., 2:], out=out)

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Append one token per row at absolute `position` (rows,); returns next-token logits (rows, vocab).

        Computes in the weights' dtype: autocast (Lightning's bf16-mixed) is switched off here."""
        device = self.keys.device.type
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self._step(token, position)
        return self._step(token, position)

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        w, n, t = self.w, self.n, self.length
        blk, off, nb = t // BLOCK, t % BLOCK, t // BLOCK + 1
        if self.filled is None or self.filled[0] != nb:
            if nb > self.zeroed:
                self.keys[:, self.zeroed : nb].zero_()
                self.values[:, self.zeroed : nb].zero_()
                self.zeroed = nb
            self.filled = (nb, self._blocks(nb))
        b = self.filled[1]
        self.mask_slots[t].fill_(0.0)
        slot = (n, w.n_kv, w.head_dim // 2, 2)
        keys = self.keys[:, blk, :, off].view(-1, *slot)
        if self.complex:
            keys = torch.view_as_complex(keys)
        keys, values = keys.unbind(0), self.values[:, blk, :, off].view(-1, n, w.n_kv, w.head_dim).unbind(0)
        rot = F.embedding(position, w.rotation).unsqueeze(1)  # (n, 1, head_dim / 2 [, 4])
        if not self.complex:
            rot = rot.view(n, 1, w.head_dim // 2, 4)
        x = F.embedding(token, w.embed)
        for i, (qkv_w, o_w, gu_w, down_w) in enumerate(w.step_layers):
            torch.mm(rms_norm(x, w.eps), qkv_w, out=self.proj)
            self._rope(self.q_in, rot, self.q_out)
            self._rope(self.k_in, rot, keys[i])
            values[i].copy_(self.v_in)
            b["q_blocks"].copy_(self.q_rows.expand(nb, -1, -1, -1))
            torch.bmm(b["q"], b["keys_t"][i], out=b["scores"])
            torch.add(b["mask"], b["scores_by_row"], alpha=w.scale, out=b["logits_blocks"])
            b["probs_by_row"].copy_(torch.softmax(b["logits"], dim=-1).view_as(b["logits_blocks"]))
            torch.bmm(b["probs"], b["values"][i], out=b["out"])
            torch.sum(b["out_blocks"], dim=0, out=self.attn)
            x = torch.addmm(x, self.attn, o_w)
            torch.mm(rms_norm(x, w.eps), gu_w, out=self.gate_up)
            F.silu(self.gate, inplace=True).mul_(self.up)
            x = torch.addmm(x, self.gate, down_w)
        self.length = t + 1
        return rms_norm(x, w.eps) @ w.head_t
