"""Grouping examples into batches under a token budget, and the per-run batch order.

Packed mode fills rows of `width` tokens with several examples (best fit over a few open rows),
so almost no compute is spent on padding; unpacked mode puts one example per row and groups
examples of similar length. Either way a batch is a list of rows, a row a list of example
indices, and the whole order is a pure function of (seed, epoch) — which is what makes resume
exact and lets every DDP rank compute the same global order and take its own slice.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence

Batch = list[list[int]]  # rows of example indices


def pack_rows(lengths: Sequence[int], order: Sequence[int], width: int, max_open: int = 64) -> list[list[int]]:
    """Rows of example indices whose lengths sum to at most `width`. Best fit: each example goes
    into the open row with the least room that still fits it; a row closes when nothing fits in
    it any more, or (the fullest one) when more than `max_open` rows are open."""
    order = list(order)
    if not order:
        return []
    too_long = [i for i in order if lengths[i] > width]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than the row width {width} (e.g. #{too_long[0]})")
    min_len = min(lengths[i] for i in order)
    closed: list[list[int]] = []
    rows: dict[int, list[int]] = {}
    room: list[tuple[int, int]] = []  # sorted (free tokens, row id) of the open rows
    next_id = 0
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            free, rid = room.pop(k)
        else:
            if len(room) >= max_open:
                closed.append(rows.pop(room.pop(0)[1]))
            rid, free, next_id = next_id, width, next_id + 1
            rows[rid] = []
        rows[rid].append(i)
        free -= n
        if free < min_len:
            closed.append(rows.pop(rid))
        else:
            bisect.insort(room, (free, rid))
    closed.extend(rows[rid] for rid in sorted(rows))
    return closed


def length_batches(lengths: Sequence[int], order: Sequence[int], batch_tokens: int,
                   rng: random.Random, bucket: int = 64) -> list[Batch]:
    """One example per row, padded to the longest in its batch: examples are sorted by length
    within buckets of about `bucket` batches, cut greedily so that rows x longest <= batch_tokens
    (a single longer example forms its own batch), and the batches are shuffled."""
    order = list(order)
    if not order:
        return []
    mean = max(1, sum(lengths[i] for i in order) // len(order))
    chunk = max(1, bucket * max(1, batch_tokens // mean))
    batches: list[Batch] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        current: list[int] = []
        longest = 0
        for i in part:
            if current and (len(current) + 1) * max(longest, lengths[i]) > batch_tokens:
                batches.append([[j] for j in current])
                current, longest = [], 0
            current.append(i)
            longest = max(longest, lengths[i])
        if current:
            batches.append([[j] for j in current])
    rng.shuffle(batches)
    return batches


class RunPlan:
    """The global sequence of batches of a run: epoch 0's batches, then epoch 1's, and so on.

    `epoch_batches(epoch)` gives one epoch's batches (it shuffles with `seed` and `epoch`, and may
    call an augmentation that changes lengths). Global batch g of a run with `world` ranks is used
    by rank g % world as its local batch g // world, so ranks never share a batch and need no
    communication. Epoch sizes found so far are kept (`state_dict`) so that a resumed run finds
    its place without recomputing every earlier epoch.
    """

    def __init__(self, epoch_batches: Callable[[int], list[Batch]]):
        self.epoch_batches = epoch_batches
        self.sizes: list[int] = []  # batches in epoch 0, 1, ...
        self._cache: tuple[int, list[Batch]] | None = None

    def batches(self, epoch: int) -> list[Batch]:
        if self._cache is None or self._cache[0] != epoch:
            batches = self.epoch_batches(epoch)
            if not batches:
                raise ValueError("an epoch of the training data produced no batches (is the train split empty?)")
            self._cache = (epoch, batches)
            if epoch == len(self.sizes):
                self.sizes.append(len(batches))
        return self._cache[1]

    def locate(self, g: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of global batch `g`."""
        epoch, start = 0, 0
        while True:
            size = self.sizes[epoch] if epoch < len(self.sizes) else len(self.batches(epoch))
            if g < start + size:
                return epoch, g - start
            start += size
            epoch += 1

    def iterate(self, start: int, step: int = 1):
        """Yield (epoch, batch) for global batches start, start + step, start + 2 step, ..."""
        epoch, index = self.locate(start)
        while True:
            batches = self.batches(epoch)
            while index < len(batches):
                yield epoch, batches[index]
                index += step
            index -= len(batches)
            epoch += 1

    def state_dict(self) -> dict:
        return {"sizes": list(self.sizes)}

    def load_state_dict(self, state: dict) -> None:
        self.sizes = list(state.get("sizes", []))
