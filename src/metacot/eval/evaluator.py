"""Evaluate a causal LM on dataset records: sample, parse, replay, verify, aggregate.

One greedy pass gives the per-problem metrics (solve/optimal rate, SWC, ILR, tokens, fidelity,
format errors, the model's search statistics next to the symbolic algorithm's on the same
problems); an optional pass of `num_samples` sampled completions per problem gives pass@k.
With `reference_searches`, each greedy trace's expansion order is also compared with those
algorithms' on the same problem (`metacot.eval.behaviour`). Besides the flat metrics, the result
carries one row per problem (`EvalResult.problems`). Model output is arbitrary text: nothing here
may raise on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from metacot.eval.behaviour import compare_with_algorithms
from metacot.eval.metrics import STAT_KEYS, EvalMetrics, ProblemResult
from metacot.eval.passk import default_ks
from metacot.linearization.base import ParsedTrace, ParseError
from metacot.tasks.base import Verdict

log = logging.getLogger(__name__)

# Cap on sequences per sampler call in the pass@k pass (n = 1024 samples of hundreds of problems
# would otherwise be one huge list of token lists).
PASSK_SEQUENCES_PER_CALL = 4096


@dataclass
class EvalOptions:
    """`conf/eval/<name>.yaml` builds this. `n_problems` 0 = every record; `num_samples` 0 = no
    pass@k pass; `shard` splits the records over DDP ranks (every rank must call `evaluate`).
    `behaviour` names `conf/search/` options to compare the model's search with: the eval stage
    builds them and passes `evaluate(reference_searches=)`; `evaluate` itself ignores the names
    (so the SFT validation and RL's periodic eval never pay for it). `force_mode` (a linearization
    whose completions start with a mode word, e.g. `dualformer`'s `slow` / `fast`) feeds that word
    as the first completion tokens, so the model completes in that mode; the scored text and token
    counts include it. `reuse` is read by the eval stage only (see `metacot.stages.eval`)."""

    n_problems: int = 0
    max_new_tokens: int | None = 512  # None (conf/eval: null): the stages resolve it (stages.common.eval_options)
    batch_size: int = 64
    num_samples: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    num_examples: int = 4
    shard: bool = False
    name: str = "default"
    behaviour: list[str] = field(default_factory=list)
    force_mode: str | None = None  # Dualformer: "slow" / "fast" written as the completion's first word
    reuse: bool = True  # stage=eval, the experiment's own model: reuse its saved results when nothing changed

    def __post_init__(self) -> None:
        for key, least in (("n_problems", 0), ("batch_size", 1), ("num_samples", 0), ("num_examples", 0)):
            if getattr(self, key) < least:
                raise ValueError(f"eval.{key} must be >= {least}, got {getattr(self, key)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"eval.max_new_tokens must be >= 1 (or null: twice the longest training completion), "
                             f"got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"eval needs temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"eval.num_samples={self.num_samples} with temperature 0 draws {self.num_samples} identical "
                             "greedy samples per problem: set eval.temperature > 0 (pass@k) or eval.num_samples=0")

    @classmethod
    def from_any(cls, options: EvalOptions | dict[str, Any] | None) -> EvalOptions:
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known - {"_target_"}
        if unknown:
            raise ValueError(f"unknown eval options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in options.items() if k in known})


class EvalResult(dict):
    """Flat `metric -> float` dict (log it as is), plus `.examples`: a few rows
    `{"prompt", "completion", "verdict"}` for a text table, and `.problems`: one JSON-able row per
    record evaluated on this rank, in record order (`problem_row`)."""

    def __init__(self, metrics: dict[str, float], examples: list[dict[str, str]],
                 problems: list[dict[str, Any]] | None = None):
        super().__init__(metrics)
        self.examples = examples
        self.problems = problems if problems is not None else []


def evaluate(model: Any, tokenizer: Any, task: Any, linearization: Any, records: Sequence[dict[str, Any]],
             options: EvalOptions | dict[str, Any] | None = None, *, sampler: Any = None,
             encode_prompt: Callable[[Any, str], list[int]] | None = None,
             replay: Callable[..., Any] | None = None,
             reference_searches: dict[str, Any] | None = None) -> EvalResult:
    """Metrics of `model` on `records` (dataset rows). `sampler` (anything with the
    `metacot.generation.Sampler.generate` contract), `encode_prompt(tokenizer, prompt)` and
    `replay(task, problem, parsed, reference_length=)` default to the project's own.
    `reference_searches` (`name -> SearchAlgorithm`) adds `order_similarity/<name>`."""
    opts = EvalOptions.from_any(options)
    if opts.max_new_tokens is None:
        raise ValueError("EvalOptions.max_new_tokens is None: pass a number of tokens, or build the options "
                         "with metacot.stages.common.eval_options (2 x the longest training completion)")
    records = list(records)
    if opts.n_problems > 0:
        records = records[: opts.n_problems]
    rank, world = _rank_world() if opts.shard else (0, 1)
    positions = list(range(len(records)))[rank::world]
    records = records[rank::world]
    references = dict(reference_searches or {})
    encode = encode_prompt or _default_encode()
    if sampler is None:
        from metacot.generation import Sampler

        sampler = Sampler(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ks = default_ks(opts.num_samples) if opts.num_samples > 0 else []
    metrics = EvalMetrics(ks=ks, sync_on_compute=world > 1, references=list(references))
    device = _device(model)
    if world > 1 and device is not None:
        metrics.to(device)  # NCCL reduces CUDA tensors only
    prefix = forced_prefix(tokenizer, linearization, opts.force_mode)
    prompts = [encode(tokenizer, r["prompt"]) + prefix for r in records]

    was_training = bool(getattr(model, "training", False))
    if model is not None and hasattr(model, "eval"):
        model.eval()
    examples: list[dict[str, str]] = []
    results: list[ProblemResult] = []
    counts: list[int] | None = None
    try:
        with torch.no_grad():
            if prompts:  # a rank's shard may be empty; it still joins the metric sync below
                results, examples = _greedy_pass(sampler, tokenizer, task, linearization, records, prompts, opts,
                                                 replay, references, prefix)
                metrics.update(results)
            if ks and prompts:
                counts = _count_correct(sampler, tokenizer, task, linearization, records, prompts, opts, prefix)
                metrics.update_passk(opts.num_samples, counts)
    finally:
        if model is not None and hasattr(model, "train"):
            model.train(was_training)
    problems = [problem_row(rec, pos, res, opts.num_samples if counts is not None else 0,
                            counts[i] if counts is not None else None)
                for i, (rec, pos, res) in enumerate(zip(records, positions, results, strict=True))]
    return EvalResult(metrics.compute(), examples, problems)


def problem_row(record: dict[str, Any], position: int, result: ProblemResult, num_samples: int,
                num_correct: int | None) -> dict[str, Any]:
    """One problem's outcome as plain JSON types. `id` is the record's id (its position among the
    records evaluated when it has none); `length` is the answer's length in actions when it is
    correct, else None; `num_samples` is 0 without a pass@k pass (then `num_correct` is None)."""
    rid = record.get("id")
    return {
        "id": int(rid) if rid is not None else position,
        "correct": bool(result.correct),
        "optimal": bool(result.optimal),
        "tokens": int(result.tokens),
        "well_formed": bool(result.well_formed),
        "length": int(result.length) if result.correct else None,
        "optimal_length": _int_or_none(result.optimal_length),
        "num_samples": int(num_samples),
        "num_correct": _int_or_none(num_correct),
        "model_stats": {k: int(result.model_stats.get(k) or 0) for k in STAT_KEYS},
        "symbolic_solved": bool(result.symbolic_solved),
        "symbolic_tokens": _int_or_none(result.symbolic_tokens),
        "symbolic_stats": dict(result.symbolic_stats),
        "order_similarity": {k: None if v is None else float(v) for k, v in result.order_similarity.items()},
    }


def _int_or_none(x: Any) -> int | None:
    return None if x is None else int(x)


def _greedy_pass(sampler: Any, tokenizer: Any, task: Any, linearization: Any, records: list[dict[str, Any]],
                 prompts: list[list[int]], opts: EvalOptions, replay: Callable[..., Any] | None,
                 references: dict[str, Any], prefix: list[int]) -> tuple[list[ProblemResult], list[dict[str, str]]]:
    """Greedy completions (after the forced `prefix`) scored; (one result per record, the first
    `num_examples` rows)."""
    greedy = sampler.generate(prompts, max_new_tokens=opts.max_new_tokens, num_samples=1, temperature=0.0,
                              batch_size=opts.batch_size)
    if len(greedy.tokens) != len(records):
        raise RuntimeError(f"the sampler returned {len(greedy.tokens)} sequences for {len(records)} prompts")
    results, examples = [], []
    for i, (rec, ids) in enumerate(zip(records, greedy.tokens, strict=True)):
        text = decode(tokenizer, prefix + list(ids))
        result, verdict = score_completion(task, linearization, rec, text, len(prefix) + len(ids), replay,
                                           reference_searches=references, seed=opts.seed)
        results.append(result)
        if i < opts.num_examples:
            examples.append({"prompt": rec["prompt"], "completion": text, "verdict": verdict})
    return results, examples


def score_completion(task: Any, linearization: Any, record: dict[str, Any], text: str, tokens: int,
                     replay: Callable[..., Any] | None = None, *,
                     reference_searches: dict[str, Any] | None = None, seed: int = 0) -> tuple[ProblemResult, str]:
    """Parse, replay and verify one completion against its record; (result, verdict text).
    With `reference_searches`, `result.order_similarity` compares the parsed search with theirs."""
    problem = record["problem"]
    parsed = safe_parse(task, linearization, problem, text)
    optimal_length = record["optimal_length"] if "optimal_length" in record else _optimal_length(task, problem)
    fid = _replay(replay, task, problem, parsed, optimal_length)
    if fid is not None:  # replay verified the answer too (optimal against the record's l*)
        verdict, optimal = fid.verdict, bool(fid.answer_optimal)
    else:
        verdict = safe_verify(task, problem, parsed.answer)
        optimal = verdict.correct and (verdict.length <= optimal_length if optimal_length is not None
                                       else verdict.optimal)
    solution_length, solved = record.get("solution_length"), bool(record.get("solved"))
    result = ProblemResult(
        correct=verdict.correct,
        optimal=verdict.correct and optimal,
        length=verdict.length,
        optimal_length=optimal_length,
        tokens=tokens,
        valid_steps=int(getattr(fid, "valid_steps", 0)),
        total_steps=int(getattr(fid, "total_steps", 0)),
        well_formed=parsed.well_formed,
        model_stats={k: getattr(fid, k, 0) for k in ("nodes", "expansions", "backtracks", "max_depth")},
        symbolic_solved=solved,
        symbolic_optimal=solved and solution_length is not None and optimal_length is not None
        and solution_length <= optimal_length,
        symbolic_tokens=record.get("trace_tokens"),
        symbolic_stats=dict(record.get("stats") or {}),
        order_similarity=_order_similarity(task, problem, parsed, reference_searches, seed),
    )
    return result, verdict_text(parsed, verdict, result.optimal)


def _order_similarity(task: Any, problem: dict[str, Any], parsed: ParsedTrace,
                      references: dict[str, Any] | None, seed: int) -> dict[str, float | None]:
    """`name -> similarity` to each reference algorithm; None for every name when the completion
    parsed to no event (nothing to compare) or the comparison raised (logged, never fatal)."""
    if not references:
        return {}
    if not parsed.events:
        return dict.fromkeys(references)
    try:
        return dict(compare_with_algorithms(task, problem, parsed.to_trace(problem=problem), references, seed=seed))
    except Exception as e:  # noqa: BLE001 - one problem's comparison must not end a long evaluation
        log.warning("search-behaviour comparison raised %r; leaving this problem out of order_similarity", e)
        return dict.fromkeys(references)


def verdict_text(parsed: ParsedTrace, verdict: Verdict, optimal: bool) -> str:
    if verdict.correct:
        return "correct, optimal" if optimal else f"correct, length {verdict.length}"
    if parsed.answer is None:
        return "no answer" + (f" ({parsed.errors[0].message})" if parsed.errors else "")
    return f"wrong: {verdict.error or 'rejected'}"


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def safe_parse(task: Any, linearization: Any, problem: dict[str, Any], text: str) -> ParsedTrace:
    """`linearization.parse`, which must not raise; a bug there is logged and scored as garbage
    instead of ending a long evaluation."""
    try:
        return linearization.parse(task, problem, text)
    except Exception as e:  # noqa: BLE001 - model text is arbitrary; the parser contract is "never raise"
        log.warning("%s.parse raised %r; scoring the completion as unreadable", type(linearization).__name__, e)
        return ParsedTrace(errors=[ParseError(-1, f"parser raised {e!r}")])


def safe_verify(task: Any, problem: dict[str, Any], answer: list[str] | None) -> Verdict:
    if answer is None:
        return Verdict(False, 0, error="no answer")
    try:
        return task.verify(problem, list(answer))
    except Exception as e:  # noqa: BLE001 - same contract as parse
        log.warning("%s.verify raised %r; scoring the answer as wrong", type(task).__name__, e)
        return Verdict(False, 0, error=f"verifier raised {e!r}")


def _replay(replay: Callable[..., Any] | None, task: Any, problem: dict[str, Any], parsed: ParsedTrace,
            reference_length: int | None) -> Any:
    """The `Fidelity` of the parsed search (valid steps, search stats, verdict), or None if replay
    fails (then no step counts and the answer is verified on its own)."""
    if replay is None:
        from metacot.linearization.fidelity import replay as project_replay

        replay = project_replay
    try:
        return replay(task, problem, parsed, reference_length=reference_length)
    except Exception as e:  # noqa: BLE001
        log.warning("fidelity replay raised %r; scoring the trace as invalid", e)
        return None


def _optimal_length(task: Any, problem: dict[str, Any]) -> int | None:
    try:
        return task.optimal_length(problem)
    except Exception:  # noqa: BLE001 - unknown l* just leaves the problem out of SWC
        return None


def _count_correct(sampler: Any, tokenizer: Any, task: Any, linearization: Any, records: list[dict[str, Any]],
                   prompts: list[list[int]], opts: EvalOptions, prefix: list[int]) -> list[int]:
    """Correct completions among `num_samples` sampled ones (after the forced `prefix`), per
    problem (prompt-major order)."""
    n = opts.num_samples
    per_call = max(1, PASSK_SEQUENCES_PER_CALL // n)
    counts: list[int] = []
    for start in range(0, len(records), per_call):
        chunk = prompts[start : start + per_call]
        out = sampler.generate(chunk, max_new_tokens=opts.max_new_tokens, num_samples=n,
                               temperature=opts.temperature, top_p=opts.top_p,
                               seed=opts.seed + start, batch_size=opts.batch_size)
        for j, rec in enumerate(records[start : start + per_call]):
            problem = rec["problem"]
            counts.append(sum(
                safe_verify(task, problem,
                            safe_parse(task, linearization, problem, decode(tokenizer, prefix + list(ids))).answer).correct
                for ids in out.tokens[j * n : (j + 1) * n]
            ))
    return counts


def check_force_mode(linearization: Any, mode: str | None) -> None:
    """Raise a clear error unless `mode` is None or a mode word of `linearization`'s completions."""
    if mode is None:
        return
    dropping = getattr(linearization, "dropping", None)
    words = dropping.keywords() if dropping is not None else []
    if mode not in words:
        raise ValueError(
            f"eval.force_mode={mode!r}: this linearization's completions "
            + (f"start with one of {words}" if words else "start with no mode word")
            + "; use linearization=dualformer (dropping.mode_token: true) or eval.force_mode=null")


def forced_prefix(tokenizer: Any, linearization: Any, mode: str | None) -> list[int]:
    """Token ids of the mode line `force_mode` writes first ([] for None)."""
    check_force_mode(linearization, mode)
    return list(tokenizer.encode(f"{mode}\n", add_special_tokens=False)) if mode is not None else []


def _default_encode() -> Callable[[Any, str], list[int]]:
    # `<s> prompt`, exactly as training encodes it (re-exported by metacot.data.datamodule; imported
    # from its home so evaluating does not pull in Lightning).
    from metacot.data.collate import encode_prompt

    return encode_prompt


def _device(model: Any) -> torch.device | None:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return None


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

