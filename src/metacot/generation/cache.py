"""A KV cache preallocated for the whole generation.

transformers' `DynamicLayer` grows by `torch.cat` every step, re-copying the whole cache (quadratic
in the length, and on CPU each large fresh allocation also page-faults). Here every layer writes
into one buffer sized for prompt + new tokens and hands attention a view of the filled prefix.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer


class BufferLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values live in a buffer of fixed capacity (batch, heads, capacity, dim)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, dk = key_states.shape
        self.device = key_states.device
        self.key_buffer = key_states.new_empty(b, h, self.capacity, dk)
        self.value_buffer = value_states.new_empty(
            b, value_states.shape[1], self.capacity, value_states.shape[3]
        )
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} tokens > capacity {self.capacity}")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        self.key_buffer = self.key_buffer[indices]
        self.value_buffer = self.value_buffer[indices]
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last `-tokens_to_remove` tokens (Hugging Face's convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]


def make_cache(model: PreTrainedModel, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `model` whose full-attention layers are `BufferLayer`s of `capacity` tokens.

    Other layer kinds the config asks for (sliding windows, ...) stay as transformers builds them.
    """
    cache = DynamicCache(config=model.config)
    cache.layers = [BufferLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if cache.layer_class_to_replicate is not None:
        cache.layer_class_to_replicate = partial(BufferLayer, capacity)
    return cache
