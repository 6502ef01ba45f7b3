"""metacot's batched KV-cache sampler, used by evaluation and RL rollouts.

A plain loop over `model(...)` forward calls (not `model.generate`): left-padded prefill of a
length-sorted micro-batch, then one token per step into a preallocated KV cache, with explicit
masks and position ids. Rows stop at eos; once enough rows have stopped they are dropped from the
batch. On CUDA the all-finished check runs only every few steps, so the loop rarely waits on the GPU.
Llama models decode through `llama_decode` (a lean functional step over the same weights) unless
`fast_path=False` or their config is one it does not cover; everything else uses the HF forward.
On CUDA, those Llama models decode through `cuda_graph` instead: a static KV cache and CUDA-graph
replays of the decode step (`cuda_graphs=False` turns it off).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel

from metacot.generation.cache import make_cache
from metacot.generation.cuda_graph import GraphDecoder
from metacot.generation.llama_decode import LlamaDecoder, LlamaWeights, fast_path_problem
from metacot.generation.sampling import pick_tokens

# cuDNN attention costs milliseconds of CPU per call when decoding; these backends do not.
DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class SampleOutput:
    tokens: list[list[int]]  # generated ids, eos excluded; prompt-major (prompt i, sample j) order
    finished: list[bool]  # stopped at eos rather than at max_new_tokens


class Sampler:
    """Samples completions from a causal LM.

    `sync_every`: steps between checks of "all rows finished? drop finished rows?"; each check
    waits for the device. None = every 8 steps on CUDA, every step on CPU (where it is free).
    `compact_fraction`: drop finished rows once at least this fraction of the batch has finished.
    `fast_path`: decode supported Llama models with `llama_decode` (prefill still runs the HF forward).
    None (default) = on CPU only. On CUDA the CUDA-graph path below is the default (on an H100 it
    decoded `small` at batch 64 53.8x faster than `generate`; the eager fast path reached 12.1x at
    batch 256, docs/PERFORMANCE.md); `fast_path=True` with `cuda_graphs=False` selects it there.
    `cuda_graphs`: decode supported Llama models with `cuda_graph.GraphDecoder` (static cache, one
    CUDA graph per batch/length bucket, kept between calls). None (default) = on when the model is on
    CUDA; True on CPU runs the same static-cache loop without graphs (tests). Takes precedence over
    `fast_path`. `sync_every` defaults to 16 there.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        eos_token_id: int,
        pad_token_id: int,
        sync_every: int | None = None,
        compact_fraction: float = 0.25,
        fast_path: bool | None = None,
        cuda_graphs: bool | None = None,
    ):
        self.model = model
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.sync_every = sync_every
        self.compact_fraction = compact_fraction
        self.fast_path = fast_path
        self.cuda_graphs = cuda_graphs
        self.graph_decoder: GraphDecoder | None = None  # built on first use, kept: captured graphs are reused
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.keep_kwarg = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
        self.max_positions = getattr(model.config, "n_positions", None)  # learned positions: a hard limit

    def uses_fast_path(self) -> bool:
        """Whether `generate` decodes with `llama_decode` (checked per call: the config could change)."""
        wanted = self.fast_path
        if wanted is None:
            wanted = next(self.model.parameters()).device.type == "cpu"
        return bool(wanted) and fast_path_problem(self.model) is None

    def uses_cuda_graphs(self) -> bool:
        """Whether `generate` decodes with `cuda_graph` (captured graphs on CUDA, the same loop eagerly on CPU)."""
        wanted = self.cuda_graphs
        if wanted is None:
            wanted = next(self.model.parameters()).device.type == "cuda"
        return bool(wanted) and fast_path_problem(self.model) is None

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        ignore_eos: bool = False,
    ) -> SampleOutput:
        """Complete each prompt `num_samples` times. `ignore_eos` always runs `max_new_tokens` steps (benchmarks)."""
        self._check(prompts, max_new_tokens, num_samples, temperature, top_p, batch_size)
        greedy = temperature == 0.0
        # Greedy samples of one prompt are identical: decode each prompt once and copy.
        rows = list(prompts) if greedy else [p for p in prompts for _ in range(num_samples)]
        tokens: list[list[int]] = [[] for _ in rows]
        finished = [False] * len(rows)
        if max_new_tokens > 0 and rows:
            device = next(self.model.parameters()).device
            generator = None
            if seed is not None:
                generator = torch.Generator(device=device).manual_seed(seed)
            order = sorted(range(len(rows)), key=lambda r: len(rows[r]), reverse=True)
            size = batch_size or len(rows)
            was_training = self.model.training
            self.model.eval()
            weights = None
            graphs = self.uses_cuda_graphs()
            if graphs:
                self.graph_decoder = self.graph_decoder or GraphDecoder()
            elif self.uses_fast_path():
                weights = LlamaWeights(self.model, max(len(p) for p in rows) + max_new_tokens)
            try:
                with sdpa_kernel(DECODE_BACKENDS) if device.type == "cuda" else nullcontext():
                    for start in range(0, len(order), size):
                        chunk = order[start : start + size]
                        args = (
                            [rows[r] for r in chunk],
                            max_new_tokens,
                            temperature,
                            top_p,
                            generator,
                            ignore_eos,
                        )
                        if graphs:
                            out = self.graph_decoder.decode(self, *args, device)
                        else:
                            out = self._decode(*args, device, weights)
                        for r, (toks, done) in zip(chunk, out, strict=True):
                            tokens[r], finished[r] = toks, done
            finally:
                self.model.train(was_training)
        if greedy and num_samples > 1:
            tokens = [list(t) for t in tokens for _ in range(num_samples)]
            finished = [f for f in finished for _ in range(num_samples)]
        return SampleOutput(tokens=tokens, finished=finished)

    def _check(self, prompts, max_new_tokens, num_samples, temperature, top_p, batch_size) -> None:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (start prompts with the bos token)")
        if max_new_tokens < 0 or num_samples < 1:
            raise ValueError(
                f"need max_new_tokens >= 0 and num_samples >= 1, got {max_new_tokens}, {num_samples}"
            )
        if temperature < 0 or not 0.0 < top_p <= 1.0:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
        longest = max((len(p) for p in prompts), default=0) + max_new_tokens
        if self.max_positions is not None and longest > self.max_positions:
            raise ValueError(
                f"prompt + max_new_tokens = {longest} tokens exceeds the model's {self.max_positions} positions: "
                "lower max_new_tokens or build the model with a larger max_seq_len"
            )

    def _forward(self, input_ids, mask, position_ids, cache) -> torch.Tensor:
        """Last-position logits (rows, vocab) of one forward call that appends to `cache`."""
        kwargs = {self.cache_kwarg: cache}
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
            **self.keep_kwarg,
        )
        return out.logits[:, -1]

    def _prefill_mask(self, valid: torch.Tensor) -> torch.Tensor | None:
        """Attention mask for the left-padded prompt block: causal, pads hidden as keys.

        A pad query attends to itself only, so no attention row is empty (an empty row gives NaN).
        `None` when nothing is padded: the model's own causal path is then both right and fastest.
        """
        if bool(valid.all()):
            return None
        if not self.sdpa:
            return valid.long()
        n = valid.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=valid.device)
        return (causal & valid[:, None, None, :]) | eye

    def _decode(self, prompts, max_new_tokens, temperature, top_p, generator, ignore_eos, device, weights):
        """Decode one micro-batch; returns [(tokens, finished)] in the order of `prompts`."""
        n, width = len(prompts), max(len(p) for p in prompts)
        capacity = width + max_new_tokens
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        valid = torch.zeros(n, capacity, dtype=torch.bool)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            valid[i, width - len(p) : width] = True
        input_ids, valid = input_ids.to(device), valid.to(device)
        positions = (valid[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        padded = not bool(valid[:, :width].all())

        cache = make_cache(self.model, width if weights else capacity)
        logits = self._forward(input_ids, self._prefill_mask(valid[:, :width]), positions, cache)
        fast = None
        if weights is not None:
            keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
            fast, cache = LlamaDecoder(weights, keys, values, valid[:, :width], capacity), None
        position = positions[:, -1:]
        out = torch.full((n, max_new_tokens), self.eos_token_id, dtype=torch.long, device=device)
        rows = torch.arange(n, device=device)  # batch row of each active row
        done = torch.zeros(n, dtype=torch.bool, device=device)
        check_every = self.sync_every or (8 if device.type == "cuda" else 1)
        length = width
        for step in range(max_new_tokens):
            token = pick_tokens(logits, temperature, top_p, generator)
            if not ignore_eos:  # a finished row's later tokens are cut off in _trim
                done = done | (token == self.eos_token_id)
            out[rows, step] = token
            if step == max_new_tokens - 1:
                break
            if not ignore_eos and (step + 1) % check_every == 0:
                n_done = int(done.sum())
                if n_done == len(rows):
                    break
                if n_done >= self.compact_fraction * len(rows):
                    keep = (~done).nonzero().squeeze(1)
                    rows, token, position, valid, done = (
                        rows[keep],
                        token[keep],
                        position[keep],
                        valid[keep],
                        done[keep],
                    )
                    if fast is not None:
                        fast.select(keep)
                    else:
                        cache.batch_select_indices(keep)
            position = position + 1
            if fast is not None:
                logits = fast.step(token, position[:, 0])
            else:
                valid[:, length] = True
                length += 1
                if self.sdpa:
                    mask = valid[:, None, None, :length] if padded else None
                else:
                    mask = valid[:, :length].long()
                logits = self._forward(token[:, None], mask, position, cache)
        return self._trim(out.cpu(), ignore_eos)

    def _trim(self, out: torch.Tensor, ignore_eos: bool) -> list[tuple[list[int], bool]]:
        """Cut each row at its first eos (the eos itself is not returned)."""
        results = []
        for row in out.tolist():
            if ignore_eos or self.eos_token_id not in row:
                results.append((row, False))
            else:
                results.append((row[: row.index(self.eos_token_id)], True))
        return results
