"""The Task interface: a verifiable reasoning problem family.

A task knows its rules (successors, goal test, heuristic), how to sample problems per split, and
how to write its states and actions as whitespace-separated words. It verifies an answer *by
replaying it* on its own simulator — model text is never executed.

Problems are plain JSON-able dicts (they go into datasets). States are hashable Python values.
Tasks import no torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

SPLITS = ("train", "val", "test_unseen")

Problem = dict[str, Any]
State = Any


@dataclass(frozen=True)
class Successor:
    action: str  # action text as written in traces and answers (whitespace-separated words)
    state: State
    cost: float = 1.0


@dataclass(frozen=True)
class Verdict:
    """Result of replaying an answer (a list of action strings) against a problem."""

    correct: bool
    length: int  # number of actions replayed successfully before stopping
    optimal: bool = False
    error: str | None = None  # why it is not correct (illegal action at step k, goal not reached, ...)


class Task(ABC):
    """Base class; subclasses are instantiated from `conf/task/<name>.yaml`."""

    name: str = "task"

    # --- problems ---------------------------------------------------------------------------
    @abstractmethod
    def sample_problems(self, split: str, n: int, seed: int) -> list[Problem]:
        """`n` distinct problems of `split` (one of SPLITS), deterministic in `seed`.

        Splits never share a problem; `test_unseen` uses held-out targets/instances as the task
        defines them. May return fewer than `n` only when the split's space is exhausted.
        """

    def problem_id(self, problem: Problem) -> str:
        """A stable identity used to check that splits are disjoint."""
        return repr(sorted(problem.items()))

    # --- rules ------------------------------------------------------------------------------
    @abstractmethod
    def initial_state(self, problem: Problem) -> State: ...

    @abstractmethod
    def successors(self, problem: Problem, state: State) -> list[Successor]: ...

    @abstractmethod
    def is_goal(self, problem: Problem, state: State) -> bool: ...

    @abstractmethod
    def heuristic(self, problem: Problem, state: State) -> float:
        """Estimated cost to the goal (admissible where the task says so)."""

    def scored_successors(self, problem: Problem, state: State,
                          max_h: float = math.inf) -> list[tuple[float, str, State, float]]:
        """Every successor as an `(h, action, state, cost)` tuple, h = `heuristic` of the child,
        in `successors` order; children with h > max_h may be left out (a pruning search never
        tries them, so a task need not build them).

        Searches that score every child (DFS) call this once per node; a task whose search is hot
        (datagen) overrides it with one fused loop that builds no `Successor` objects."""
        h = self.heuristic
        return [(h(problem, s.state), s.action, s.state, s.cost) for s in self.successors(problem, state)]

    @abstractmethod
    def optimal_length(self, problem: Problem) -> int | None:
        """Length (number of actions) of an optimal solution, or None if unsolvable."""

    def optimal_lengths(self, problems: list[Problem]) -> list[int | None]:
        """`optimal_length` of each problem; tasks with a batched solver override it."""
        return [self.optimal_length(p) for p in problems]

    def is_dead_end(self, problem: Problem, state: State) -> bool:
        """A non-goal state from which no action is possible (or worth trying)."""
        return not self.is_goal(problem, state) and not self.successors(problem, state)

    # --- verification -----------------------------------------------------------------------
    def verify(self, problem: Problem, actions: list[str]) -> Verdict:
        """Replay `actions` from the initial state; correct iff every action is legal and the
        final state is a goal. Never raises on arbitrary strings."""
        state = self.initial_state(problem)
        for i, action in enumerate(actions):
            nxt = self.apply(problem, state, action)
            if nxt is None:
                return Verdict(False, i, error=f"illegal action at step {i + 1}: {action!r}")
            state = nxt
        if not self.is_goal(problem, state):
            return Verdict(False, len(actions), error="the answer does not reach the goal")
        best = self.optimal_length(problem)
        return Verdict(True, len(actions), optimal=best is not None and len(actions) <= best)

    def apply(self, problem: Problem, state: State, action: str) -> State | None:
        """The state reached by `action` from `state`, or None if it is not legal. Actions match
        word for word (spacing aside, on both sides: formats write actions as words)."""
        action = " ".join(action.split())
        for s in self.successors(problem, state):
            if s.action == action or " ".join(s.action.split()) == action:
                return s.state
        return None

    # --- text -------------------------------------------------------------------------------
    @abstractmethod
    def prompt_text(self, problem: Problem) -> str:
        """The problem as words (what every format puts in the prompt)."""

    @abstractmethod
    def state_text(self, problem: Problem, state: State) -> str:
        """A state as whitespace-separated words, parseable by `parse_state`."""

    @abstractmethod
    def parse_state(self, problem: Problem, text: str) -> State | None:
        """Inverse of `state_text`; None (never an exception) on malformed text."""

    def alphabet(self) -> list[str]:
        """Every word this task can write (numbers, cells, operators): the tokenizer's vocabulary
        is built from this plus the format's keywords, so no split's data is needed for it."""
        return []

    def describe(self) -> dict[str, Any]:
        """The parameters that shape this task's problems (enter the dataset cache key)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
