"""Expert iteration / STaR: sample, keep verified-correct outputs, fine-tune on them, repeat.

There is no policy-gradient loss: each round the RL stage samples `samples_per_problem`
completions per training problem, calls `select` to pick the ones to keep, and runs the SFT
trainer on them. `keep="shortest"` is Searchformer's search-dynamics bootstrapping (keep the
shortest correct trace per problem, 3 rounds of 64 samples), which teaches the model to search
more economically than the algorithm it imitated; `keep="all"` is plain STaR.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence


def _keep_all(indices: list[int], lengths: Sequence[int]) -> list[int]:
    return indices


def _keep_shortest(indices: list[int], lengths: Sequence[int]) -> list[int]:
    return [min(indices, key=lambda i: (lengths[i], i))]  # ties: the first sampled


SELECTORS: dict[str, Callable[[list[int], Sequence[int]], list[int]]] = {
    "all": _keep_all,
    "shortest": _keep_shortest,
}


def select_for_sft(
    problem_ids: Sequence[Hashable], correct: Sequence[bool], lengths: Sequence[int], keep: str = "all"
) -> list[int]:
    """Indices (ascending) of the samples to fine-tune on.

    `problem_ids[i]` names the problem of sample i (samples need not be contiguous), `correct[i]` is
    the verifier's verdict, `lengths[i]` the completion length in tokens. Only correct samples are
    kept; problems without a correct sample contribute nothing.
    """
    if keep not in SELECTORS:
        raise ValueError(f"keep must be one of {sorted(SELECTORS)}, got {keep!r}")
    if not (len(problem_ids) == len(correct) == len(lengths)):
        raise ValueError(
            f"problem_ids, correct and lengths differ in length: "
            f"{len(problem_ids)}, {len(correct)}, {len(lengths)}"
        )
    by_problem: dict[Hashable, list[int]] = {}
    for i, (pid, ok) in enumerate(zip(problem_ids, correct, strict=True)):
        if ok:
            by_problem.setdefault(pid, []).append(i)
    chosen = [i for indices in by_problem.values() for i in SELECTORS[keep](indices, lengths)]
    return sorted(chosen)


class ExpertIterationObjective:
    """Config of expert iteration (`algo=expert_iteration`); the SFT trainer does the learning."""

    uses_reference = False

    def __init__(
        self,
        name: str = "expert_iteration",
        rounds: int = 3,
        samples_per_problem: int = 64,
        keep: str = "shortest",
    ) -> None:
        if keep not in SELECTORS:
            raise ValueError(f"keep must be one of {sorted(SELECTORS)}, got {keep!r}")
        if rounds < 1 or samples_per_problem < 1:
            raise ValueError(
                f"rounds and samples_per_problem must be >= 1, got {rounds}, {samples_per_problem}"
            )
        self.name = name
        self.rounds = rounds
        self.samples_per_problem = samples_per_problem
        self.keep = keep

    @property
    def group_size(self) -> int:
        return self.samples_per_problem

    def select(
        self, problem_ids: Sequence[Hashable], correct: Sequence[bool], lengths: Sequence[int]
    ) -> list[int]:
        """`select_for_sft` with this config's `keep` rule."""
        return select_for_sft(problem_ids, correct, lengths, self.keep)

    def __repr__(self) -> str:
        return f"ExpertIterationObjective(rounds={self.rounds}, samples={self.samples_per_problem}, keep={self.keep})"
