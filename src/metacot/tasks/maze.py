"""Grid mazes under the Searchformer rules.

An n x n grid, 4-connected unit-cost moves, walls at a density drawn uniformly from
[wall_density_min, wall_density_max], a start and a goal on free cells; instances are kept only if
the goal is reachable and the optimal plan has at least `min_plan_length` steps. A state is the
cell (x, y); an action is the destination cell written as ONE word "x,y" (so a plan is a cell
list, like Searchformer's `plan x y`, but one token per cell).

Splits: a stable hash of the instance sends a fixed slice to `test_unseen`, another to `val`, the
rest to `train`, so the splits never share an instance however much each one samples.

Sampling is vectorised: a batch of candidate mazes is drawn at once and their start-goal distances
come from a batched breadth-first flood fill, one numpy step per distance unit.
"""

from __future__ import annotations

import hashlib
from collections import deque

import numpy as np

from metacot.tasks.base import SPLITS, Problem, State, Successor, Task

MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))  # successor order: x+1, x-1, y+1, y-1
KEYWORDS = ["start", "goal", "walls"]
PATIENCE = 20  # rounds in a row that bring nothing new => the split's space is exhausted


def cell_word(x: int, y: int) -> str:
    return f"{x},{y}"


def parse_cell(text: str, size: int) -> tuple[int, int] | None:
    """"x,y" with 0 <= x, y < size (canonical integers), else None. Never raises."""
    try:
        word = text.strip()
    except AttributeError:
        return None
    parts = word.split(",")
    if len(parts) != 2:
        return None
    out = []
    for p in parts:
        if not (0 < len(p) <= 3 and p.isascii() and p.isdigit() and (p[0] != "0" or p == "0")):
            return None
        v = int(p)
        if v >= size:
            return None
        out.append(v)
    return out[0], out[1]


def _unit_hash(text: str) -> float:
    """A stable hash of `text` in [0, 1) (blake2b; Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def flood_distances(free: np.ndarray, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Shortest 4-connected path lengths for a batch of grids: free (K, n, n) bool, start/goal
    (K,) flat cell indices. Returns (K,) ints, -1 where the goal is unreachable."""
    k, n, _ = free.shape
    dist = np.full(k, -1, dtype=np.int64)
    dist[start == goal] = 0
    reach = np.zeros((k, n * n), dtype=bool)
    reach[np.arange(k), start] = True
    active = np.flatnonzero(start != goal)
    reach, free, goal = reach[active].reshape(-1, n, n), free[active], goal[active]
    step = 0
    while active.size:
        step += 1
        grown = reach.copy()
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown[:, :, 1:] |= reach[:, :, :-1]
        grown[:, :, :-1] |= reach[:, :, 1:]
        grown &= free
        flat = grown.reshape(len(active), -1)
        hit = flat[np.arange(len(active)), goal]
        dist[active[hit]] = step
        keep = ~hit & (flat != reach.reshape(len(active), -1)).any(axis=1)  # still growing
        active, reach, free, goal = active[keep], grown[keep], free[keep], goal[keep]
    return dist


class MazeTask(Task):
    def __init__(
        self,
        name: str = "maze",
        size: int = 7,
        wall_density_min: float = 0.3,
        wall_density_max: float = 0.5,
        min_plan_length: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
    ):
        if not 2 <= size <= 64:
            raise ValueError(f"size must be in 2..64 (Searchformer uses 10..30), got {size}")
        if not 0 <= wall_density_min <= wall_density_max < 1:
            raise ValueError("need 0 <= wall_density_min <= wall_density_max < 1, got "
                             f"{wall_density_min}, {wall_density_max}")
        min_plan_length = size if min_plan_length is None else int(min_plan_length)
        if not 1 <= min_plan_length <= size * size:
            raise ValueError(f"min_plan_length must be in 1..size*size, got {min_plan_length}")
        if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
            raise ValueError("need val_fraction, test_fraction >= 0 and val_fraction + test_fraction < 1")
        self.name = name
        self.size = size
        self.wall_density_min = wall_density_min
        self.wall_density_max = wall_density_max
        self.min_plan_length = min_plan_length
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self._round = max(64, (1 << 16) // (size * size))  # candidate mazes per vectorised round
        # One-entry cache of per-problem data (wall set, successor lists, optimal length): a
        # search asks about one problem many times in a row. Problems must not be mutated.
        self._cache_problem: Problem | None = None
        self._wall_set: set[tuple[int, int]] = set()
        self._succ: dict[State, tuple[Successor, ...]] = {}
        self._optimal: list[int | None] = []

    # --- problems ---------------------------------------------------------------------------
    def problem_id(self, problem: Problem) -> str:
        walls = " ".join(cell_word(x, y) for x, y in problem["walls"])
        return f"{problem['size']};{cell_word(*problem['start'])};{cell_word(*problem['goal'])};{walls}"

    def split_of(self, problem: Problem) -> str:
        return self._split_of_id(self.problem_id(problem))

    def _split_of_id(self, key: str) -> str:
        u = _unit_hash(f"{self.split_seed}|{key}")
        if u < self.test_fraction:
            return "test_unseen"
        return "val" if u < self.test_fraction + self.val_fraction else "train"

    def sample_problems(self, split: str, n: int, seed: int) -> list[Problem]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if n <= 0:
            return []
        if {"val": self.val_fraction, "test_unseen": self.test_fraction}.get(split, 1.0) == 0:
            raise ValueError(f"the {split} split is empty (its fraction is 0): raise task.val_fraction / "
                             f"task.test_fraction or ask for 0 {split} problems")
        rng = np.random.default_rng([seed % 2**63, SPLITS.index(split)])
        n_ = self.size
        out: list[Problem] = []
        seen: set[bytes] = set()  # raw candidates already decided (kept or in another split)
        idle = feasible = 0
        while len(out) < n and idle < PATIENCE:
            before = len(out)
            wall, start, goal = self._candidates(rng)
            feasible += len(start)
            raw = np.concatenate([np.packbits(wall, axis=1), start[:, None], goal[:, None]], axis=1,
                                 dtype=np.int64, casting="unsafe")
            for i in range(len(start)):
                rb = raw[i].tobytes()
                if rb in seen:
                    continue
                seen.add(rb)
                problem = {"size": n_, "walls": [[c // n_, c % n_] for c in np.flatnonzero(wall[i]).tolist()],
                           "start": list(divmod(int(start[i]), n_)), "goal": list(divmod(int(goal[i]), n_))}
                if self.split_of(problem) == split:
                    out.append(problem)
                    if len(out) == n:
                        break
            idle = idle + 1 if len(out) == before else 0
        if not feasible:
            raise ValueError(
                f"no {self.size}x{self.size} maze with a plan of >= {self.min_plan_length} steps in "
                f"{PATIENCE * self._round} tries: lower task.min_plan_length or the wall densities"
            )
        return out

    def _candidates(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One round of rejection sampling: random walls (exact count from a uniform density),
        distinct random free start and goal; keep those whose optimal plan is long enough.
        Returns walls (K', n*n) bool and start, goal (K',) flat cell indices."""
        k, n = self._round, self.size
        cells = n * n
        density = rng.uniform(self.wall_density_min, self.wall_density_max, size=k)
        num_walls = np.minimum(np.rint(density * cells).astype(np.int64), cells - 2)
        wall = rng.random((k, cells)).argsort(axis=1).argsort(axis=1) < num_walls[:, None]
        keys = rng.random((k, cells))
        keys[wall] = -1.0
        start = keys.argmax(axis=1)
        keys[np.arange(k), start] = -1.0
        goal = keys.argmax(axis=1)
        ok = flood_distances(~wall.reshape(k, n, n), start, goal) >= self.min_plan_length
        return wall[ok], start[ok], goal[ok]

    # --- rules ------------------------------------------------------------------------------
    def _walls(self, problem: Problem) -> set[tuple[int, int]]:
        if problem is not self._cache_problem:
            self._cache_problem = problem
            self._wall_set = {(x, y) for x, y in problem["walls"]}
            self._succ = {}
            self._optimal = []
        return self._wall_set

    def initial_state(self, problem: Problem) -> State:
        return tuple(problem["start"])

    def successors(self, problem: Problem, state: State) -> list[Successor]:
        walls, n = self._walls(problem), problem["size"]
        cached = self._succ.get(state)
        if cached is None:
            x, y = state
            cached = tuple(
                Successor(cell_word(x + dx, y + dy), (x + dx, y + dy))
                for dx, dy in MOVES
                if 0 <= x + dx < n and 0 <= y + dy < n and (x + dx, y + dy) not in walls
            )
            self._succ[state] = cached
        return list(cached)

    def apply(self, problem: Problem, state: State, action: str) -> State | None:
        cell = parse_cell(action, problem["size"])
        if cell is None or abs(cell[0] - state[0]) + abs(cell[1] - state[1]) != 1:
            return None
        return None if cell in self._walls(problem) else cell

    def is_goal(self, problem: Problem, state: State) -> bool:
        goal = problem["goal"]
        return state[0] == goal[0] and state[1] == goal[1]

    def heuristic(self, problem: Problem, state: State) -> float:
        goal = problem["goal"]
        return float(abs(state[0] - goal[0]) + abs(state[1] - goal[1]))  # Manhattan: admissible

    def optimal_length(self, problem: Problem) -> int | None:
        self._walls(problem)
        if not self._optimal:
            self._optimal.append(self._bfs(problem))
        return self._optimal[0]

    def _bfs(self, problem: Problem) -> int | None:
        start = self.initial_state(problem)
        dist = {start: 0}
        queue = deque([start])
        while queue:
            s = queue.popleft()
            if self.is_goal(problem, s):
                return dist[s]
            for succ in self.successors(problem, s):
                if succ.state not in dist:
                    dist[succ.state] = dist[s] + 1
                    queue.append(succ.state)
        return None

    # --- text -------------------------------------------------------------------------------
    def prompt_text(self, problem: Problem) -> str:
        walls = " ".join(cell_word(x, y) for x, y in problem["walls"])
        return f"start {cell_word(*problem['start'])} goal {cell_word(*problem['goal'])} walls {walls}".rstrip()

    def state_text(self, problem: Problem, state: State) -> str:
        return cell_word(*state)

    def parse_state(self, problem: Problem, text: str) -> State | None:
        return parse_cell(text, problem["size"])

    def alphabet(self) -> list[str]:
        return KEYWORDS + [cell_word(x, y) for x in range(self.size) for y in range(self.size)]

