"""Countdown under the Stream-of-Search rules.

Given a target and N numbers, repeatedly replace two numbers a >= b by a + b, a - b, a * b or a / b
(division only when exact) until one number remains; solved iff it equals the target (all numbers
are used, so every solution has N - 1 steps). A state is the sorted tuple of remaining numbers; an
action is the text "a op b = c" with the larger operand first.

Splits: a seeded shuffle of the targets holds out `holdout_fraction` of them for `test_unseen`.
`train` and `val` share the seen targets and are told apart by a stable hash of the problem
(target + sorted numbers), so a val problem can never be drawn for train however much each split
samples.

Sampling law (per attempt): pick a target uniformly from the split's targets, draw number tuples
uniformly from [min_number, max_number]^N until one can reach the target, keep that first solvable
tuple; drop it if it belongs to another split or was already drawn. Solvability of whole batches
of candidates is checked at once by `countdown_solver.reachable` (same rules, same law as the
one-at-a-time loop, ~50x faster).
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left, insort
from functools import lru_cache

import numpy as np

from metacot.tasks.base import SPLITS, Problem, State, Successor, Task
from metacot.tasks.countdown_solver import max_exact_value, reachable, scored_children, solve, value_bound

ROUND = 1024  # attempts drawn per round; fixed, so a larger n extends a smaller n's sample
PATIENCE = 20  # rounds in a row that bring nothing new => the split's space is exhausted
MAX_DRAWS = 20_000  # per target: no solvable tuple in this many draws => the config is wrong
KEYWORDS = ["target", "numbers", "+", "-", "*", "/", "="]
ALPHABET_CAP = 10_000  # larger numbers are left to the tokenizer (digits)
TEXT_CACHE = 1 << 16  # state texts remembered (a few MB); the cache restarts when full
_TEXTS: dict[tuple, str] = {}


def sum_heuristic(numbers: tuple[int, ...], target: int) -> float:
    """SoS "sum": mean |n - target| over the remaining numbers (0 exactly at the goal)."""
    return sum(abs(x - target) for x in numbers) / len(numbers)


@lru_cache(maxsize=4096)
def _factors(target: int) -> tuple[int, ...]:
    """Divisors >= 2 of the target (the target itself included)."""
    if target < 2:
        return (target,)
    return tuple(d for d in range(2, target + 1) if target % d == 0)


def _factor_distance(x: int, target: int) -> int:
    """Distance from x to the nearest factor of the target (mult's per-number term)."""
    factors = _factors(target)
    k = bisect_left(factors, x)
    return min(abs(x - f) for f in factors[max(0, k - 1):k + 1])


def mult_heuristic(numbers: tuple[int, ...], target: int) -> float:
    """SoS "mult": sum over remaining numbers of the distance to the nearest factor of the target
    (numbers near factors can be multiplied into it; 0 exactly at the goal)."""
    return float(sum(_factor_distance(x, target) for x in numbers))


HEURISTICS = {"sum": sum_heuristic, "mult": mult_heuristic}
# Both heuristics add one term per number; sum then takes the mean (`scored_successors` fuses them).
_TERMS = {"sum": None, "mult": _factor_distance}  # None: the inlined |x - target| mean


@lru_cache(maxsize=65_536)
def _solution(numbers: tuple[int, ...], target: int) -> tuple[str, ...] | None:
    sol = solve(numbers, target)
    return None if sol is None else tuple(sol)


def _int(word: str) -> int | None:
    """A canonical non-negative integer word ("0", "17"), else None."""
    if 0 < len(word) <= 18 and word.isascii() and word.isdigit() and (word[0] != "0" or word == "0"):
        return int(word)
    return None


def _unit_hash(text: str) -> float:
    """A stable hash of `text` in [0, 1) (blake2b; Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


class CountdownTask(Task):
    def __init__(
        self,
        name: str = "countdown",
        num_count: int = 3,
        min_number: int = 1,
        max_number: int = 25,
        min_target: int = 10,
        max_target: int = 100,
        holdout_fraction: float = 0.1,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        heuristic: str = "sum",
    ):
        if not 2 <= num_count <= 5:
            raise ValueError(f"num_count must be in 2..5 (SoS uses 4), got {num_count}")
        if not 0 <= min_number <= max_number:
            raise ValueError(f"need 0 <= min_number <= max_number, got {min_number}..{max_number}")
        if not 1 <= min_target <= max_target:
            raise ValueError(f"need 1 <= min_target <= max_target, got {min_target}..{max_target}")
        if value_bound(max_number, num_count) >= max_exact_value:
            raise ValueError(f"max_number={max_number} is too large for num_count={num_count}")
        if not 0 <= holdout_fraction < 1 or not 0 <= val_fraction < 1:
            raise ValueError("holdout_fraction and val_fraction must be in [0, 1)")
        if heuristic not in HEURISTICS:
            raise ValueError(f"unknown heuristic {heuristic!r}; choose one of {sorted(HEURISTICS)}")
        self.name = name
        self.num_count = num_count
        self.min_number = min_number
        self.max_number = max_number
        self.min_target = min_target
        self.max_target = max_target
        self.holdout_fraction = holdout_fraction
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.heuristic_name = heuristic
        self._h = HEURISTICS[heuristic]
        self._term = _TERMS[heuristic]
        targets = np.random.default_rng(split_seed).permutation(np.arange(min_target, max_target + 1))
        k = round(holdout_fraction * len(targets))
        if holdout_fraction > 0:
            k = min(max(k, 1), len(targets) - 1)
        self._heldout = sorted(targets[:k].tolist())
        self._seen = sorted(targets[k:].tolist())
        self._heldout_set = frozenset(self._heldout)
        self._batch: int | None = None  # candidates per target per round (see _batch_size)

    # --- problems ---------------------------------------------------------------------------
    def split_targets(self, split: str) -> list[int]:
        """The targets a split draws from: held-out ones for test_unseen, the rest otherwise."""
        _check_split(split)
        return list(self._heldout if split == "test_unseen" else self._seen)

    def problem_id(self, problem: Problem) -> str:
        return f"{problem['target']}:{','.join(map(str, sorted(problem['numbers'])))}"

    def split_of(self, problem: Problem) -> str:
        """Which split a problem belongs to (held-out target, else the hash partition)."""
        if problem["target"] in self._heldout_set:
            return "test_unseen"
        return self._seen_split(self.problem_id(problem))

    def _seen_split(self, key: str) -> str:
        return "val" if _unit_hash(f"{self.split_seed}|{key}") < self.val_fraction else "train"

    def sample_problems(self, split: str, n: int, seed: int) -> list[Problem]:
        targets = np.asarray(self.split_targets(split))
        if n <= 0:
            return []
        if split == "test_unseen" and not len(targets):
            raise ValueError("holdout_fraction=0 holds out no targets: set task.holdout_fraction > 0 "
                             "or ask for 0 test_unseen problems")
        if split == "val" and self.val_fraction == 0:
            raise ValueError("val_fraction=0 leaves val empty: set task.val_fraction > 0 or ask for 0 val problems")
        rng = np.random.default_rng([seed % 2**63, SPLITS.index(split)])
        out: list[Problem] = []
        taken: set[str] = set()
        idle = 0
        while len(out) < n and idle < PATIENCE:
            tgts = rng.choice(targets, size=ROUND)
            rows = self._first_solvable(tgts, rng)
            before = len(out)
            for target, numbers in zip(tgts.tolist(), rows.tolist(), strict=True):
                problem = {"target": target, "numbers": numbers}
                key = self.problem_id(problem)
                if key in taken or (split != "test_unseen" and self._seen_split(key) != split):
                    continue
                taken.add(key)
                out.append(problem)
                if len(out) == n:
                    break
            idle = idle + 1 if len(out) == before else 0
        return out

    def _first_solvable(self, tgts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each target, the first solvable tuple of an i.i.d. stream of draws (drawn
        `_batch_size()` at a time per target, all targets checked in one vectorised call)."""
        b, n = self._batch_size(), self.num_count
        out = np.empty((len(tgts), n), dtype=np.int64)
        pending = np.arange(len(tgts))
        draws = 0
        while pending.size:
            cand = rng.integers(self.min_number, self.max_number + 1, size=(pending.size, b, n))
            ok = reachable(cand.reshape(-1, n), np.repeat(tgts[pending], b)).reshape(-1, b)
            has = ok.any(axis=1)
            first = ok.argmax(axis=1)
            out[pending[has]] = cand[has, first[has]]
            pending = pending[~has]
            draws += b
            if pending.size and draws >= MAX_DRAWS:
                raise ValueError(
                    f"no solvable numbers for target {int(tgts[pending[0]])} in {draws} draws: with "
                    f"{n} numbers in {self.min_number}..{self.max_number} it is (almost) unreachable; "
                    "lower task.max_target or widen the number range"
                )
        return out

    def _batch_size(self) -> int:
        """Candidates per target per round, from the solvable rate p measured once on a fixed
        seed. ~0.75/p balanced wasted checks against extra rounds best (Countdown-4, 1..99)."""
        if self._batch is None:
            rng = np.random.default_rng(12345)
            cand = rng.integers(self.min_number, self.max_number + 1, size=(4096, self.num_count))
            tgts = rng.integers(self.min_target, self.max_target + 1, size=4096)
            rate = max(reachable(cand, tgts).mean(), 1 / 4096)
            self._batch = int(min(64, max(2, math.ceil(0.75 / rate))))
        return self._batch

    def describe(self) -> dict:
        d = super().describe()
        d["heuristic"] = d.pop("heuristic_name")
        return d

    # --- rules ------------------------------------------------------------------------------
    def initial_state(self, problem: Problem) -> State:
        return tuple(sorted(problem["numbers"]))

    def successors(self, problem: Problem, state: State) -> list[Successor]:
        out = []
        seen = set()
        for i in range(len(state)):
            b = state[i]
            for j in range(i + 1, len(state)):
                a = state[j]
                if (b, a) in seen:
                    continue
                seen.add((b, a))
                rest = list(state[:i] + state[i + 1 : j] + state[j + 1 :])
                results = [("+", a + b), ("-", a - b), ("*", a * b)]
                if b != 0 and a % b == 0:
                    results.append(("/", a // b))
                for op, c in results:
                    child = rest.copy()
                    insort(child, c)
                    out.append(Successor(f"{a} {op} {b} = {c}", tuple(child)))
        return out

    def scored_successors(self, problem: Problem, state: State,
                          max_h: float = math.inf) -> list[tuple[float, str, State, float]]:
        """`successors` with their heuristic in one loop that builds no `Successor` objects and
        leaves out children over `max_h` (the DFS datagen hot path; see `scored_children`)."""
        if len(state) < 2:
            return []
        return scored_children(state, problem["target"], max_h, self._term)

    def apply(self, problem: Problem, state: State, action: str) -> State | None:
        """Parse "a op b = c" directly (no successor enumeration). + and * also accept the
        smaller operand first; - and / need the larger first, as the task writes them."""
        try:
            words = action.split()
        except AttributeError:
            return None
        if len(words) != 5 or words[3] != "=":
            return None
        a, op, b, c = _int(words[0]), words[1], _int(words[2]), _int(words[4])
        if a is None or b is None or c is None:
            return None
        if op == "+":
            ok = a + b == c
        elif op == "*":
            ok = a * b == c
        elif op == "-":
            ok = a >= b and a - b == c
        elif op == "/":
            ok = a >= b and b != 0 and a == b * c
        else:
            return None
        if not ok:
            return None
        rest = list(state)
        try:
            rest.remove(a)
            rest.remove(b)
        except ValueError:
            return None
        insort(rest, c)
        return tuple(rest)

    def is_goal(self, problem: Problem, state: State) -> bool:
        return len(state) == 1 and state[0] == problem["target"]

    def is_dead_end(self, problem: Problem, state: State) -> bool:
        return len(state) == 1 and state[0] != problem["target"]  # two numbers can always be added

    def heuristic(self, problem: Problem, state: State) -> float:
        return self._h(state, problem["target"])

    def optimal_length(self, problem: Problem) -> int | None:
        return None if self.solution(problem) is None else len(problem["numbers"]) - 1

    def optimal_lengths(self, problems: list[Problem]) -> list[int | None]:
        """One vectorised solvability check per number count (~5 us a problem, vs ~0.2-0.5 ms for
        the recursive solver): every solution uses all N numbers, so it has N - 1 steps."""
        out: list[int | None] = [None] * len(problems)
        by_size: dict[int, list[int]] = {}
        for k, p in enumerate(problems):
            nums, target = p["numbers"], p["target"]
            if nums and target >= 1 and min(nums) >= 0 and value_bound(max(nums), len(nums)) < max_exact_value:
                by_size.setdefault(len(nums), []).append(k)
            else:  # outside what the vectorised check handles exactly
                out[k] = self.optimal_length(p)
        for n, idx in by_size.items():
            nums = np.array([problems[k]["numbers"] for k in idx], dtype=np.int64)
            ok = reachable(nums, np.array([problems[k]["target"] for k in idx], dtype=np.int64))
            for k, solvable in zip(idx, ok.tolist(), strict=True):
                out[k] = n - 1 if solvable else None
        return out

    def solution(self, problem: Problem) -> list[str] | None:
        """One solution (action texts) found by the exact recursive solver, or None."""
        sol = _solution(tuple(sorted(problem["numbers"])), problem["target"])
        return None if sol is None else list(sol)

    # --- text -------------------------------------------------------------------------------
    def prompt_text(self, problem: Problem) -> str:
        return f"target {problem['target']} numbers {' '.join(map(str, problem['numbers']))}"

    def state_text(self, problem: Problem, state: State) -> str:
        try:
            text = _TEXTS.get(state)  # states recur across problems: remember their texts
        except TypeError:  # an unhashable state (a list)
            return " ".join(map(str, state))
        if text is None:
            if len(_TEXTS) >= TEXT_CACHE:
                _TEXTS.clear()
            text = _TEXTS[state] = " ".join(map(str, state))
        return text

    def parse_state(self, problem: Problem, text: str) -> State | None:
        try:
            words = text.split()
        except AttributeError:
            return None
        if not 1 <= len(words) <= self.num_count:
            return None
        nums = [_int(w) for w in words]
        if None in nums:
            return None
        return tuple(sorted(nums))

    def alphabet(self) -> list[str]:
        bound = min(max(self.max_target, self.max_number**2), ALPHABET_CAP)
        return KEYWORDS + [str(i) for i in range(bound + 1)]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
