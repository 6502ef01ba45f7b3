"""Tokenization of (prompt, completion) pairs and collation of rows of examples into tensors.

A training sequence is `<s> prompt completion </s>`; the loss covers the completion and `</s>`
(or, with `loss_on_prompt`, everything after `<s>`). Targets are shifted here, per example, so a
packed row never asks one example to predict the next one's first token. Each example's
position ids restart at 0: Hugging Face models (transformers >= 4.53) read the restarts as
example boundaries and build a block-diagonal causal mask, so packed examples do not attend to
each other. Padding continues the positions of the row's last example: it sits after every real
token, so causal attention never lets a real token see it, and it carries no targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100

# An encoded example: token ids, and the index of the first token the loss predicts.
Encoded = tuple[np.ndarray, int]


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """`<s> prompt`: the exact ids a model sees before its first generated token (eval and RL
    use this, so inference matches training)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer.encode(prompt, add_special_tokens=False))


def encode_example(tokenizer: Any, prompt: str, completion: str,
                   loss_on_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of `<s> prompt completion </s>`, Hugging Face convention (labels align
    with input_ids; -100 = no loss): the prompt is masked unless `loss_on_prompt`."""
    ids, first = encode_pair(tokenizer, encode_prompt(tokenizer, prompt),
                             tokenizer.encode(completion, add_special_tokens=False), loss_on_prompt)
    labels = [IGNORE_INDEX] * first + ids[first:].tolist()
    if loss_on_prompt:
        labels[0] = int(ids[0])  # HF models never predict position 0 anyway
    return ids.tolist(), labels


def encode_pair(tokenizer: Any, prompt_ids: Sequence[int], completion_ids: Sequence[int],
                loss_on_prompt: bool) -> Encoded:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; every completion must end with one")
    ids = np.asarray([*prompt_ids, *completion_ids, tokenizer.eos_token_id], dtype=np.int64)
    first = 1 if loss_on_prompt else len(prompt_ids)
    return ids, min(max(first, 1), len(ids) - 1)


def collate_rows(rows: Sequence[Sequence[Encoded]], pad_id: int, width: int | None = None,
                 multiple_of: int = 8, example_ids: list[int] | None = None) -> dict[str, Any]:
    """Tensors for a batch of rows (each row: one or more examples laid end to end).

    `width` fixes the row length (packing: the same shape every step); None pads to the longest
    row rounded up to `multiple_of`. `n_tokens` (real tokens) and `n_targets` (tokens with loss)
    are Python ints, so logging them costs no device sync.
    """
    lengths = [sum(len(ids) for ids, _ in row) for row in rows]
    longest = max(lengths, default=1)
    if width is None:
        width = max(multiple_of, -(-longest // multiple_of) * multiple_of)
    if longest > width:
        raise ValueError(f"a row holds {longest} tokens but the row width is {width}")
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    position_ids = np.zeros((len(rows), width), dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    n_targets = 0
    for b, row in enumerate(rows):
        pos, last = 0, 0
        for ids, first in row:
            n = len(ids)
            input_ids[b, pos : pos + n] = ids
            position_ids[b, pos : pos + n] = np.arange(n)
            targets[b, pos + first - 1 : pos + n - 1] = ids[first:]
            n_targets += n - first
            pos, last = pos + n, n
        position_ids[b, pos:] = np.arange(last, last + width - pos)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "targets": torch.from_numpy(targets),
        "n_tokens": int(sum(lengths)),
        "n_targets": int(n_targets),
        "example_ids": list(example_ids or []),
    }
