"""Rollout collection: sample G completions per prompt, then parse, replay and verify each one.

This is the "experience" half of RL, kept apart from the update (`metacot.modules.rl`): it runs
the fast sampler, scores every completion with the same code the evaluator uses
(`metacot.eval.evaluator.score_completion`: parse → fidelity replay → verify, never executing
model text), turns the verdicts into rewards with a `RewardFunction`, and packs the result into
padded tensors for the log-prob passes. Samples are prompt-major (the G samples of prompt i are
rows i*G .. i*G+G-1), the convention of `metacot.rl.advantages`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from metacot.rl.rewards import RewardFunction, RolloutOutcome


def step_seed(seed: int, step: int, rank: int = 0, salt: str = "") -> int:
    """A 31-bit seed that is a pure function of (seed, step, rank): resuming at step k replays
    exactly the sampling an uninterrupted run did at step k."""
    return random.Random(f"{seed}:{step}:{rank}:{salt}").getrandbits(31)


def step_indices(num_records: int, per_rank: int, step: int, rank: int = 0, world: int = 1,
                 seed: int | str = 0) -> list[int]:
    """Record indices of this rank's prompts at `step`: epochs of seeded permutations of the
    training set, consumed `per_rank * world` at a time, so the data position is the step counter
    and no prompt repeats before every prompt was used once."""
    if num_records < 1:
        raise ValueError("no training records to sample RL prompts from")
    if per_rank < 1:
        raise ValueError(f"prompts per step must be >= 1, got {per_rank}")
    start = (step * world + rank) * per_rank
    out: list[int] = []
    perm_epoch, perm = -1, []
    for pos in range(start, start + per_rank):
        epoch, offset = divmod(pos, num_records)
        if epoch != perm_epoch:
            perm = list(range(num_records))
            random.Random(f"{seed}:rl-epoch:{epoch}").shuffle(perm)
            perm_epoch = epoch
        out.append(perm[offset])
    return out


@dataclass
class RolloutTensors:
    """Padded tensors of a rollout batch. `input_ids` [N, L] = prompt + response, right-padded (so
    causal attention alone keeps real tokens from seeing padding: no attention mask is needed);
    `positions` [N, T] index the response tokens in `input_ids`; `mask` [N, T] marks real ones."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    seq_lens: torch.Tensor  # [N] prompt + response length

    def rows(self, idx: torch.Tensor | slice) -> RolloutTensors:
        """A micro-batch, cropped to its own longest sequence and response."""
        lens = self.seq_lens[idx]
        width = max(int(lens.max().item()), 1) if lens.numel() else 1
        mask = self.mask[idx]
        t = max(int(mask.sum(dim=1).max().item()), 1) if mask.numel() else 1
        return RolloutTensors(self.input_ids[idx, :width], self.positions[idx, :t], mask[:, :t], lens)

    def to(self, device: torch.device | str) -> RolloutTensors:
        return RolloutTensors(*(x.to(device) for x in (self.input_ids, self.positions, self.mask, self.seq_lens)))


@dataclass
class Rollout:
    """A scored rollout batch: B records × G samples, prompt-major."""

    records: list[dict[str, Any]]
    group_size: int
    prompts: list[list[int]]  # B encoded prompts (`<s> prompt`)
    responses: list[list[int]]  # B*G generated ids, the eos appended when the sample finished
    finished: list[bool]
    texts: list[str]
    outcomes: list[RolloutOutcome]
    rewards: list[float]
    parts: list[dict[str, float]]  # every reward component of every sample
    verdicts: list[str]
    sample_seconds: float = 0.0
    score_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.responses)

    def record_of(self, i: int) -> dict[str, Any]:
        return self.records[i // self.group_size]

    def prompt_of(self, i: int) -> list[int]:
        return self.prompts[i // self.group_size]

    @property
    def components(self) -> dict[str, float]:
        """Batch mean of every reward component."""
        if not self.parts:
            return {}
        return {k: sum(p[k] for p in self.parts) / len(self.parts) for k in self.parts[0]}

    def informative_groups(self) -> list[int]:
        """Groups whose G rewards are not all equal (the others carry no group-baseline signal)."""
        g = self.group_size
        return [i for i in range(len(self.records)) if len(set(self.rewards[i * g : (i + 1) * g])) > 1]

    def groups(self, idx: Sequence[int]) -> Rollout:
        """The rollout of the groups `idx`, in that order."""
        rows = [i * self.group_size + j for i in idx for j in range(self.group_size)]
        pick = lambda xs: [xs[r] for r in rows]  # noqa: E731
        return Rollout([self.records[i] for i in idx], self.group_size, [self.prompts[i] for i in idx],
                       pick(self.responses), pick(self.finished), pick(self.texts), pick(self.outcomes),
                       pick(self.rewards), pick(self.parts), pick(self.verdicts), self.sample_seconds,
                       self.score_seconds)

    def __add__(self, other: Rollout) -> Rollout:
        if other.group_size != self.group_size:
            raise ValueError("cannot concatenate rollouts of different group sizes")
        return Rollout(self.records + other.records, self.group_size, self.prompts + other.prompts,
                       self.responses + other.responses, self.finished + other.finished, self.texts + other.texts,
                       self.outcomes + other.outcomes, self.rewards + other.rewards, self.parts + other.parts,
                       self.verdicts + other.verdicts, self.sample_seconds + other.sample_seconds,
                       self.score_seconds + other.score_seconds)

    def reward_tensor(self) -> torch.Tensor:
        return torch.tensor(self.rewards, dtype=torch.float32)

    def tensors(self, pad_id: int) -> RolloutTensors:
        n = len(self.responses)
        seqs = [self.prompt_of(i) + self.responses[i] for i in range(n)]
        width = max([len(s) for s in seqs] + [1])
        t = max([len(r) for r in self.responses] + [1])
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        positions = torch.zeros((n, t), dtype=torch.long)
        mask = torch.zeros((n, t), dtype=torch.bool)
        for i, seq in enumerate(seqs):
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            p, r = len(self.prompt_of(i)), len(self.responses[i])
            positions[i, :r] = torch.arange(p, p + r)
            positions[i, r:] = max(p, 1)  # a valid index; masked out
            mask[i, :r] = True
        lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        return RolloutTensors(input_ids, positions, mask, lens)

    def table(self, rows: int = 8, max_chars: int = 1500) -> str:
        """A Markdown table of the first `rows` samples (TensorBoard text)."""
        def cell(text: str) -> str:
            text = text if len(text) <= max_chars else text[:max_chars] + " …"
            return text.replace("|", "\\|").replace("\n", "<br>")

        lines = ["| # | prompt | completion | verdict | reward | tokens |", "|---|---|---|---|---|---|"]
        for i in range(min(rows, len(self))):
            lines.append(f"| {i} | {cell(self.record_of(i)['prompt'])} | {cell(self.texts[i])} | "
                         f"{cell(self.verdicts[i])} | {self.rewards[i]:.3f} | {len(self.responses[i])} |")
        return "\n".join(lines)


def summarize(rollout: Rollout) -> dict[str, float]:
    """Scalar statistics of a rollout batch for logging (rewards, solve rate, lengths, speed)."""
    n = max(len(rollout), 1)
    rewards = rollout.reward_tensor()
    groups = rewards.reshape(-1, rollout.group_size) if len(rollout) else rewards.reshape(0, 1)
    zero_var = (groups.max(dim=1).values == groups.min(dim=1).values).float() if len(rollout) else rewards
    lengths = [len(r) for r in rollout.responses]
    correct = [o.correct for o in rollout.outcomes]
    solved_groups = [any(correct[i : i + rollout.group_size]) for i in range(0, len(correct), rollout.group_size)]
    fids = [o.fidelity for o in rollout.outcomes if o.fidelity is not None]
    seconds = max(rollout.sample_seconds, 1e-9)
    stats = {
        "reward/mean": float(rewards.mean()) if len(rollout) else 0.0,
        "reward/std": float(rewards.std(correction=0)) if len(rollout) else 0.0,
        "rollout/solve_rate": sum(correct) / n,
        "rollout/pass_at_group": sum(solved_groups) / max(len(solved_groups), 1),
        "rollout/well_formed": sum(o.well_formed for o in rollout.outcomes) / n,
        "rollout/optimal_rate": sum(o.optimal for o in rollout.outcomes) / n,
        "rollout/fidelity": sum(fids) / len(fids) if fids else 0.0,
        "rollout/zero_variance_frac": float(zero_var.mean()) if len(rollout) else 0.0,
        "response/len_mean": sum(lengths) / n,
        "response/len_max": float(max(lengths, default=0)),
        "response/truncated_frac": sum(not f for f in rollout.finished) / n,
        "perf/rollout_tokens_per_s": sum(lengths) / seconds,
        "time/sample_s": rollout.sample_seconds,
        "time/score_s": rollout.score_seconds,
    }
    stats.update({f"reward/{k}": v for k, v in rollout.components.items() if k != "total"})
    return stats


class RolloutCollector:
    """Samples and scores rollouts for a (task, linearization, tokenizer, reward) combination.

    `encode_prompt(tokenizer, prompt)` and `score(task, linearization, record, text, tokens)`
    default to the project's own (`metacot.data.collate.encode_prompt`,
    `metacot.eval.evaluator.score_completion`); tests may pass fakes.
    """

    def __init__(self, task: Any, linearization: Any, tokenizer: Any, reward: RewardFunction,
                 encode_prompt: Callable[[Any, str], list[int]] | None = None,
                 score: Callable[..., tuple[Any, str]] | None = None):
        if encode_prompt is None:
            from metacot.data.collate import encode_prompt
        if score is None:
            from metacot.eval.evaluator import score_completion as score
        self.task = task
        self.linearization = linearization
        self.tokenizer = tokenizer
        self.reward = reward
        self.encode_prompt = encode_prompt
        self.score = score
        self._prompt_cache: dict[str, list[int]] = {}

    def encode(self, record: dict[str, Any]) -> list[int]:
        key = record["prompt"]
        if key not in self._prompt_cache:
            self._prompt_cache[key] = list(self.encode_prompt(self.tokenizer, key))
        return self._prompt_cache[key]

    def collect(self, sampler: Any, records: Sequence[dict[str, Any]], group_size: int, max_new_tokens: int,
                temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                batch_size: int | None = None) -> Rollout:
        """Sample `group_size` completions of each record's prompt and score them."""
        records = list(records)
        prompts = [self.encode(r) for r in records]
        t0 = time.perf_counter()
        with torch.no_grad():
            out = sampler.generate(prompts, max_new_tokens=max_new_tokens, num_samples=group_size,
                                   temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size)
        t1 = time.perf_counter()
        if len(out.tokens) != len(records) * group_size:
            raise RuntimeError(f"the sampler returned {len(out.tokens)} sequences for {len(records)} prompts "
                               f"x {group_size} samples")
        return self.score_samples(records, prompts, group_size, [list(t) for t in out.tokens],
                                  [bool(f) for f in out.finished], sample_seconds=t1 - t0)

    def score_samples(self, records: list[dict[str, Any]], prompts: list[list[int]], group_size: int,
                      tokens: list[list[int]], finished: list[bool], sample_seconds: float = 0.0) -> Rollout:
        """Decode, parse, replay and verify generated ids (eos excluded, as the sampler returns them)."""
        t0 = time.perf_counter()
        eos = self.tokenizer.eos_token_id
        texts, outcomes, verdicts, responses = [], [], [], []
        for i, (ids, done) in enumerate(zip(tokens, finished, strict=True)):
            record = records[i // group_size]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            response = ids + [eos] if done else ids
            result, verdict = self.score(self.task, self.linearization, record, text, len(response))
            total = getattr(result, "total_steps", 0)
            fidelity = getattr(result, "valid_steps", 0) / total if total else None
            outcomes.append(RolloutOutcome(correct=bool(result.correct), optimal=bool(result.optimal),
                                           well_formed=bool(result.well_formed), num_tokens=len(response),
                                           truncated=not done, fidelity=fidelity))
            texts.append(text)
            verdicts.append(verdict)
            responses.append(response)
        scored = [self.reward(o) for o in outcomes]
        return Rollout(records=records, group_size=group_size, prompts=prompts, responses=responses,
                       finished=list(finished), texts=texts, outcomes=outcomes, rewards=[t for t, _ in scored],
                       parts=[p for _, p in scored], verdicts=verdicts, sample_seconds=sample_seconds,
                       score_seconds=time.perf_counter() - t0)

    def collect_step(self, sampler: Any, records: Sequence[dict[str, Any]], step: int, rank: int, world: int,
                     per_rank: int, group_size: int, max_new_tokens: int, temperature: float = 1.0,
                     top_p: float = 1.0, seed: int = 0, batch_size: int | None = None,
                     refill_rounds: int = 0) -> tuple[Rollout, Rollout]:
        """This rank's rollout at `step`: (rollout to learn from, everything sampled).

        Prompts and sampler seeds are pure functions of (seed, step, rank). With `refill_rounds`,
        up to that many more batches of fresh prompts (independent streams) are sampled to replace
        groups whose rewards are all equal (DAPO's dynamic sampling); the result keeps `per_rank`
        groups either way (same shapes on every rank), informative groups first.
        """
        sampled: Rollout | None = None
        for r in range(refill_rounds + 1):
            stream = seed if r == 0 else f"{seed}/refill{r}"
            idx = step_indices(len(records), per_rank, step, rank, world, stream)
            part = self.collect(sampler, [records[i] for i in idx], group_size, max_new_tokens, temperature, top_p,
                                seed=step_seed(seed, step, rank, f"rollout{r}"), batch_size=batch_size)
            sampled = part if sampled is None else sampled + part
            if len(sampled.informative_groups()) >= per_rank:
                break
        assert sampled is not None
        if refill_rounds == 0:
            return sampled, sampled
        useful = sampled.informative_groups()
        rest = [i for i in range(len(sampled.records)) if i not in set(useful)]
        return sampled.groups((useful + rest)[:per_rank]), sampled

