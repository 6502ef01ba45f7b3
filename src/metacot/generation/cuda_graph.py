"""CUDA-graph decoding for the Sampler: one captured Llama decode step per (rows, span) bucket.

An eager decode step of a small model is host-bound: the GPU finishes a step's ~150 small
kernels long before Python has launched them (docs/PERFORMANCE.md). A replayed graph launches
them all at once. The design:

- prefill is the model's own (eager, batched) forward; its keys/values seed a `StaticLlama`;
- decode replays a graph of `StaticLlama.advance` captured once per (rows, span): rows = the batch
  rounded up to a power of two, span = the cache slots attended, a power of two >= 128 (or the
  whole cache), so attention reads about what is filled, not the whole capacity every step;
- sampling (greedy, temperature, top-p; `sampling.pick_tokens`) runs on the device between
  replays with the caller's device generator: nothing waits for the GPU per token;
- every `sync_every` steps (default 16) the host reads the finished flags once: stop when every
  row is done; when the unfinished rows fit a bucket half the size or less, move them to the front
  and continue in that smaller bucket. Finished rows that still fit the bucket are computed and
  ignored (masking them would save nothing: the graph's shapes are fixed);
- static buffers and graphs are kept between `generate` calls (RL rollouts repeat the same shapes)
  and grow when a call needs more rows or a longer cache; weights are re-copied in each call.

On CPU (or with `capture=False`) the same loop calls `StaticLlama.advance` directly (tests, profiling).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from metacot.generation.cache import make_cache
from metacot.generation.sampling import pick_tokens
from metacot.generation.static_decode import StaticLlama

MIN_SPAN = 128  # smallest attention span bucket (cache slots)
CAPACITY_STEP = 256  # static caches grow in multiples of this many slots


def bucket(rows: int) -> int:
    """Rows of the graph that decodes `rows` sequences: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


def span_for(length: int, capacity: int) -> int:
    """Cache slots a step attends to when `length` slots were filled before it (it writes one more)."""
    return min(max(MIN_SPAN, bucket(length + 1)), capacity)


def compute_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype the model's forward computes in here: autocast's (as under Lightning's bf16-mixed), else its own."""
    if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return next(model.parameters()).dtype


class GraphDecoder:
    """Decodes micro-batches for one `Sampler` through a `StaticLlama`: as CUDA graphs on CUDA when
    `capture`, else by calling the step (CPU; `capture=False` on CUDA: the same kernels, no graphs)."""

    def __init__(self, capture: bool = True):
        self.capture = capture
        self.state: StaticLlama | None = None
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.steps: Counter[tuple[int, int]] = Counter()  # decode steps per (rows, span): the buckets used

    def prepare(self, model, rows: int, capacity: int, dtype: torch.dtype) -> StaticLlama:
        """The static state, reallocated (and graphs dropped) only when this call does not fit it."""
        rows, capacity = bucket(rows), -(-capacity // CAPACITY_STEP) * CAPACITY_STEP
        device = next(model.parameters()).device
        s = self.state
        if (
            s is not None
            and s.dtype == dtype
            and s.device == device
            and rows <= s.rows
            and capacity <= s.capacity
        ):
            s.load(model)
            return s
        if s is not None and s.dtype == dtype and s.device == device:  # grow, never shrink: no thrashing
            rows, capacity = max(rows, s.rows), max(capacity, s.capacity)
        self.release()
        self.state = StaticLlama(model, rows, capacity, dtype)
        return self.state

    def release(self) -> None:
        """Free the static buffers and graphs (the next call rebuilds them)."""
        self.graphs.clear()
        self.state = None
        self.pool = None

    def run(self, rows: int, span: int) -> torch.Tensor:
        """One decode step of rows 0..rows-1 (`StaticLlama.advance`); returns the logits."""
        self.steps[rows, span] += 1
        if not (self.capture and self.state.device.type == "cuda"):
            return self.state.advance(rows, span)
        if (rows, span) not in self.graphs:
            self.graphs[rows, span] = self._capture(rows, span)
        graph, logits = self.graphs[rows, span]
        graph.replay()
        return logits

    def _capture(self, rows: int, span: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        s = self.state
        with torch.cuda.device(s.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (lazy kernel/cuBLAS setup)
                s.step(rows, span)
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                logits = s.advance(rows, span)
        return graph, logits

    def decode(self, sampler, prompts, max_new_tokens, temperature, top_p, generator, ignore_eos, device):
        """Decode one micro-batch; returns [(tokens, finished)] in the order of `prompts` (as `Sampler._decode`)."""
        model, eos = sampler.model, sampler.eos_token_id
        n, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((n, width), sampler.pad_token_id, dtype=torch.long)
        valid = torch.zeros(n, width, dtype=torch.bool)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            valid[i, width - len(p) :] = True
        input_ids, valid = input_ids.to(device), valid.to(device)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cache = make_cache(model, width)
        logits = sampler._forward(input_ids, sampler._prefill_mask(valid), positions, cache)
        state = self.prepare(model, n, width + max_new_tokens, compute_dtype(model, device))
        state.prefill(
            [la.keys for la in cache.layers], [la.values for la in cache.layers], valid, positions[:, -1]
        )
        del cache

        b = bucket(n)
        logits = F.pad(logits, (0, 0, 0, b - n))  # scratch rows: sampled like the others, never kept
        out = torch.full((n + 1, max_new_tokens), eos, dtype=torch.long, device=device)  # row n: scratch
        rows = torch.arange(b, device=device).clamp(max=n)  # output row of each batch row
        done = rows == n
        check_every = sampler.sync_every or 16
        length = width
        no_autocast = torch.autocast(device.type, enabled=False) if device.type == "cuda" else nullcontext()
        for step in range(max_new_tokens):
            token = pick_tokens(logits, temperature, top_p, generator)
            if not ignore_eos:  # a finished row's later tokens are cut off in _trim
                done = done | (token == eos)
            out[rows, step] = token
            if step == max_new_tokens - 1:
                break
            if not ignore_eos and (step + 1) % check_every == 0:
                active = b - int(done.sum())
                if active == 0:
                    break
                if bucket(active) < b:
                    keep = (~done).nonzero().squeeze(1)
                    state.keep(keep, length)
                    b, extra = bucket(active), bucket(active) - active
                    rows = torch.cat([rows[keep], rows.new_full((extra,), n)])
                    token = torch.cat([token[keep], token.new_full((extra,), eos)])
                    done = torch.cat([done[keep], done.new_ones(extra)])
            state.token[:b].copy_(token)
            with no_autocast:
                logits = self.run(b, span_for(length, state.capacity))
            length += 1
        return sampler._trim(out[:n].cpu(), ignore_eos)
