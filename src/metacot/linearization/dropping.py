"""Dualformer-style randomized trace dropping (Su et al. 2024), applied at training time.

One level is drawn per training example:

  0  the full trace
  1  drop every EXPAND ("close") step
  2  also drop the cost / value annotations (`c<g> c<h>`, `v<k>`)
  3  also drop `create_drop_fraction` of the GENERATE ("create") steps, chosen at random
  4  drop the whole trace: the answer only

Only the search steps are dropped; DEAD_END / GOAL / BUDGET lines stay at levels 1-3. With
`mode_token`, every completion starts with `slow` (a trace follows) or `fast` (level 4), so a
mode can be forced at inference by feeding that word as the first completion token.

The probabilities default to ours, not the paper's: half the examples keep the full trace, a
quarter are answer-only.
"""

from __future__ import annotations

import random
from typing import Any

from metacot.search.trace import EXPAND, GENERATE, TraceEvent

LEVELS = 5
SLOW, FAST = "slow", "fast"


class DualformerDropping:
    def __init__(
        self,
        p_level: list[float] | tuple[float, ...] = (0.5, 0.1, 0.05, 0.1, 0.25),
        mode_token: bool = True,
        create_drop_fraction: float = 0.3,
    ):
        p = [float(x) for x in p_level]
        if len(p) != LEVELS or any(x < 0 for x in p) or abs(sum(p) - 1.0) > 1e-6:
            raise ValueError(
                f"p_level must be {LEVELS} non-negative probabilities (levels 0..4) summing to 1, got {list(p_level)}"
            )
        if not 0.0 <= create_drop_fraction <= 1.0:
            raise ValueError(f"create_drop_fraction must be in [0, 1], got {create_drop_fraction}")
        self.p_level = p
        self.mode_token = mode_token
        self.create_drop_fraction = create_drop_fraction

    def sample_level(self, rng: random.Random) -> int:
        return rng.choices(range(LEVELS), weights=self.p_level)[0]

    def keep_mask(self, level: int, events: list[TraceEvent], rng: random.Random) -> list[bool]:
        """Which events survive `level` (annotations are the renderer's business: `annotated`)."""
        if not 0 <= level < LEVELS:
            raise ValueError(f"level must be in 0..{LEVELS - 1}, got {level}")
        if level == 0:
            return [True] * len(events)
        if level == 4:
            return [False] * len(events)
        keep = [e.kind != EXPAND for e in events]
        if level == 3:
            creates = [i for i, e in enumerate(events) if e.kind == GENERATE]
            for i in rng.sample(creates, round(self.create_drop_fraction * len(creates))):
                keep[i] = False
        return keep

    @staticmethod
    def annotated(level: int) -> bool:
        """Whether cost / value tokens are written at this level."""
        return level < 2

    def mode_word(self, level: int) -> str | None:
        """The first line of the completion at this level (None without `mode_token`)."""
        if not self.mode_token:
            return None
        return FAST if level == LEVELS - 1 else SLOW

    def keywords(self) -> list[str]:
        return [SLOW, FAST] if self.mode_token else []

    def describe(self) -> dict[str, Any]:
        return {"p_level": list(self.p_level), "mode_token": self.mode_token,
                "create_drop_fraction": self.create_drop_fraction}
