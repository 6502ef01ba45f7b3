"""Report sections with curves: pass@k, exploration boundary, token budget, training compute."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metacot.eval.passk import pass_at_k_curve
from metacot.eval.plots import passk_curve
from metacot.report.collect import Evaluation, finite, split_label
from metacot.report.figures import FigureSink, budget_figure, compute_figure, passk_figure
from metacot.report.sections import GROUP_COLUMNS, Section, by_group_label, reference_evals, splits_of
from metacot.report.tables import Stat, Table, group_by, stat


def _int(value: Any) -> int | None:
    value = finite(value)
    return int(value) if value is not None and value.is_integer() else None


def sampled(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(num_samples, num_correct) of the rows that counted their samples."""
    out = []
    for r in rows:
        n, c = _int(r.get("num_samples")), _int(r.get("num_correct"))
        if n is not None and c is not None and 0 <= c <= n and n >= 1:
            out.append((n, c))
    return out


def eval_passk(ev: Evaluation, split: str) -> dict[int, float]:
    """Unbiased pass@k from the per-problem sample counts when the rows have them, else the
    `pass@k` metrics the evaluator stored."""
    counts = sampled(ev.problems.get(split, []))
    if counts:
        ns, cs = zip(*counts, strict=True)
        return pass_at_k_curve(list(ns), list(cs))
    return passk_curve({k: v for k, v in ev.metrics.get(split, {}).items() if v is not None})


def mean_curve(curves: list[dict[int, float]]) -> dict[int, Stat]:
    """Mean ± std over runs at each k every run has."""
    curves = [c for c in curves if c]
    if not curves:
        return {}
    ks = sorted(set.intersection(*(set(c) for c in curves)))
    return {k: stat(c[k] for c in curves) for k in ks}


def curve_label(group: tuple, label: str, models: int) -> str:
    _, search, fmt, model, setting = group
    parts = [f"{search}/{fmt}", model if models > 1 else "", setting if setting != "-" else "", label]
    return " ".join(p for p in parts if p)


def symbolic_label(search: str, setting: str) -> str:
    """Words like the model curves' (`legend_labels` drops the ones every curve shares)."""
    return f"{search} symbolic" + (f" {setting}" if setting != "-" else "")


def _symbolic(evals: list[Evaluation], split: str, key: str = "symbolic_solve_rate") -> dict[tuple, Stat]:
    refs = group_by(reference_evals(evals), lambda ev: (ev.run.search, ev.run.setting))
    return {k: stat(ev.metric(split, key) for ev in evs) for k, evs in refs.items()}


def passk_section(evals: list[Evaluation], sink: FigureSink) -> Section:
    rows: list[tuple[list[Any], dict[int, Stat] | Stat]] = []  # a model's curve, or a flat symbolic rate
    figures = []
    for task, task_evals in group_by(evals, lambda ev: ev.run.task).items():
        models = len({ev.run.model for ev in task_evals})
        for split in splits_of(task_evals):
            curves, flat = {}, {}
            for (group, label), evs in by_group_label(task_evals).items():
                curve = mean_curve([eval_passk(ev, split) for ev in evs if split in ev.metrics])
                if curve:
                    curves[curve_label(group, label, models)] = {k: s.mean for k, s in curve.items()}
                    rows.append(([task, split_label(split), *group[1:], label], curve))
            for (search, setting), s in _symbolic(task_evals, split).items():
                if s.mean is not None:
                    flat[symbolic_label(search, setting)] = s.mean
                    rows.append(([task, split_label(split), search, "-", "-", setting, "symbolic"], s))
            if curves or flat:
                fig = passk_figure(curves, flat, f"pass@k — {task}, {split_label(split)} problems")
                figures.append(sink.save(f"passk_{task}_{split}", fig))
    ks = sorted({k for _, c in rows if isinstance(c, dict) for k in c})
    table = Table("passk", ["task", "split", *GROUP_COLUMNS[1:], "stage", "n", *(f"pass@{k}" for k in ks)])
    for head, curve in rows:
        if isinstance(curve, Stat):  # symbolic: deterministic, the same at every k
            table.rows.append([*head, curve.n, *(curve for _ in ks)])
        else:
            table.rows.append([*head, min(s.n for s in curve.values()), *(curve.get(k) for k in ks)])
    intro = ("pass@k: the chance that at least one of k sampled completions solves a problem (unbiased "
             "estimator over n samples per problem, computed from the per-problem counts when present). A "
             "symbolic search is deterministic: its curve is flat at its solve rate. A model curve that rises "
             "above the flat line finds solutions by sampling that its teacher's single run does not.")
    return Section("pass@k", intro, [table] if table.rows else [], figures)


def _solved(row: dict[str, Any]) -> bool:
    return (_int(row.get("num_correct")) or 0) > 0 or bool(row.get("correct"))


def boundary_row(sft: Evaluation, rl: Evaluation, split: str) -> list[Any] | None:
    """Pass@1 / pass@k of both models and the solved-set inclusion counts on the problems both
    evaluated (matched by id); None when they share no problem."""
    a = {r["id"]: r for r in sft.problems.get(split, []) if isinstance(r.get("id"), (int, str))}
    b = {r["id"]: r for r in rl.problems.get(split, []) if isinstance(r.get("id"), (int, str))}
    ids = [i for i in a if i in b]
    if not ids:
        return None
    sa, sb = sampled([a[i] for i in ids]), sampled([b[i] for i in ids])
    full = [s for s in (sa, sb) if len(s) == len(ids)]
    k = min(n for s in full for n, _ in s) if full else None

    def passes(counts: list[tuple[int, int]]) -> list[float | None]:
        if k is None or len(counts) != len(ids):
            return [None, None]
        curve = pass_at_k_curve([n for n, _ in counts], [c for _, c in counts], sorted({1, k}))
        return [curve[1], curve[k]]

    got_a, got_b = {i for i in ids if _solved(a[i])}, {i for i in ids if _solved(b[i])}
    return [len(ids), k, *passes(sa), *passes(sb), len(got_b - got_a), len(got_a - got_b),
            len(got_a & got_b), len(ids) - len(got_a | got_b)]


def boundary_section(evals: list[Evaluation]) -> Section:
    table = Table("boundary", ["task", "run", "rl", "split", "problems", "k", "sft pass@1", "sft pass@k",
                               "rl pass@1", "rl pass@k", "rl solves, sft never", "sft solves, rl never",
                               "both", "neither"])
    for _, evs in group_by(evals, lambda ev: ev.run.path.resolve()).items():
        sfts = [ev for ev in evs if ev.label == "sft"]
        for sft in sfts[:1]:
            for rl in (ev for ev in evs if ev.label.startswith("rl:")):
                for split in splits_of([sft, rl]):
                    row = boundary_row(sft, rl, split)
                    if row is not None:
                        table.rows.append([sft.run.task, sft.run.label, rl.label, split_label(split), *row])
    intro = ("Does RL widen what the model can solve, or only sharpen what it already could? For each run "
             "with both an SFT and an RL evaluation, on the problems both saw (matched by id): pass@1 and "
             "pass@k at the largest k both sampled, and the solved sets (solved = at least one of the n "
             "samples correct, or the greedy answer correct). Many `sft solves, rl never` with a higher RL "
             "pass@1 means RL narrowed exploration; many `rl solves, sft never` means it moved the boundary.")
    return Section("Exploration boundary", intro, [table] if table.rows else [],
                   notes=[] if table.rows else ["No run has both an SFT and an RL evaluation with per-problem rows."])


def budget_fraction(pairs: list[tuple[bool, float | None]], grid: list[float]) -> list[float]:
    """Fraction of all problems solved with at most B tokens, for each B of the grid."""
    if not pairs:
        return [math.nan for _ in grid]
    solved = np.sort([t for ok, t in pairs if ok and t is not None])
    return (np.searchsorted(solved, np.asarray(grid, dtype=float), side="right") / len(pairs)).tolist()


def _model_pairs(rows: list[dict[str, Any]]) -> list[tuple[bool, float | None]]:
    return [(bool(r.get("correct")), finite(r.get("tokens"))) for r in rows]


def _symbolic_pairs(rows: list[dict[str, Any]]) -> list[tuple[bool, float | None]]:
    return [(bool(r.get("symbolic_solved")), finite(r.get("symbolic_tokens"))) for r in rows]


def table_budgets(tokens: list[float], columns: int = 10) -> list[int]:
    """Powers of two from below the smallest to above the largest token count (every other one
    when there would be more than `columns`)."""
    positive = [t for t in tokens if t > 0]
    if not positive:
        return [0]
    lo, hi = math.floor(math.log2(min(positive))), math.ceil(math.log2(max(positive)))
    step = 1 if hi - lo + 1 <= columns else 2
    exponents = list(range(lo, hi + 1, step))
    if exponents[-1] != hi:  # every other one skipped the top: the last budget must cover the longest
        exponents.append(hi)
    return [2 ** e for e in exponents]


def budget_section(evals: list[Evaluation], sink: FigureSink) -> Section:
    body: list[tuple[list[Any], list[list[float]]]] = []  # (row head, per-run curves on grid)
    budgets: list[int] = []
    figures = []
    for task, task_evals in group_by(evals, lambda ev: ev.run.task).items():
        with_rows = [s for s in ("test_unseen", "val", *splits_of(task_evals))
                     if any(ev.problems.get(s) for ev in task_evals)]
        if not with_rows:
            continue
        split = with_rows[0]
        evs_split = [ev for ev in task_evals if ev.problems.get(split)]
        rows_of = {id(ev): ev.problems[split] for ev in evs_split}
        pairs = [p for ev in evs_split for p in _model_pairs(rows_of[id(ev)]) + _symbolic_pairs(rows_of[id(ev)])]
        tokens = sorted({t for _, t in pairs if t is not None})
        grid, budgets = [0.0, *tokens], sorted(set(budgets) | set(table_budgets(tokens)))
        models = len({ev.run.model for ev in evs_split})
        curves, symbolic = {}, {}
        for (group, label), evs in by_group_label(evs_split).items():
            per_run = [_model_pairs(rows_of[id(ev)]) for ev in evs]
            curves[curve_label(group, label, models)] = _mean([budget_fraction(p, grid) for p in per_run])
            body.append(([task, split_label(split), *group[1:], label], per_run))
        refs = group_by(reference_evals(evs_split), lambda ev: (ev.run.search, ev.run.setting))
        for (search, setting), evs in refs.items():
            per_run = [_symbolic_pairs(rows_of[id(ev)]) for ev in evs]
            symbolic[symbolic_label(search, setting)] = _mean([budget_fraction(p, grid) for p in per_run])
            body.append(([task, split_label(split), search, "-", "-", setting, "symbolic"], per_run))
        fig = budget_figure(grid, curves, symbolic, f"solve rate vs token budget — {task}, {split_label(split)}")
        figures.append(sink.save(f"budget_{task}", fig))
    table = Table("budget", ["task", "split", *GROUP_COLUMNS[1:], "stage", "n", *(f"B<={b}" for b in budgets)])
    for head, per_run in body:
        cells = [stat(budget_fraction(p, [b])[0] for p in per_run) for b in budgets]
        table.rows.append([*head, len(per_run), *cells])
    intro = ("Fraction of problems solved with at most B completion tokens (the unseen split when it has "
             "per-problem rows), for the models (greedy answer) and for the symbolic search (its trace "
             "tokens). A model curve left of its teacher's solves the same problems with shorter traces.")
    return Section("Solve rate vs trace-token budget", intro, [table] if table.rows else [], figures)


def _mean(curves: list[list[float]]) -> list[float]:
    return [stat(col).mean if stat(col).mean is not None else math.nan for col in zip(*curves, strict=True)]


def compute_section(evals: list[Evaluation], sink: FigureSink) -> Section:
    table = Table("compute", ["task", *GROUP_COLUMNS[1:], "n", "train tokens", "parameters", "compute",
                              "unseen solve rate"])
    figures, notes = [], []
    sft = [ev for ev in evals if ev.label == "sft" and ev.run.train_tokens is not None]
    for task, task_evals in group_by(sft, lambda ev: ev.run.task).items():
        with_params = all(ev.run.num_parameters for ev in task_evals)
        xlabel = "training tokens x parameters" if with_params else "training tokens (parameter counts missing)"
        if not with_params:
            notes.append(f"{task}: some runs do not report num_parameters, so compute is training tokens only.")
        lines: dict[str, list[tuple[float, float]]] = {}
        for group, evs in group_by(task_evals, lambda ev: ev.run.group).items():
            tokens = stat(ev.run.train_tokens for ev in evs)
            params = stat(ev.run.num_parameters for ev in evs)
            x = stat(ev.run.train_tokens * (ev.run.num_parameters if with_params else 1) for ev in evs)
            y = stat(ev.metric("test_unseen", "solve_rate") for ev in evs)
            table.rows.append([task, *group[1:], len(evs), tokens, params if with_params else None, x, y])
            if x.mean is not None and y.mean is not None:
                lines.setdefault(f"{group[1]}/{group[2]}", []).append((x.mean, y.mean))
        figures.append(sink.save(f"compute_{task}", compute_figure(lines, xlabel, f"solve rate vs compute — {task}")))
    intro = ("Unseen solve rate of the SFT model against its training compute: training tokens x parameters "
             "(tokens from the SFT summary, else steps x batch_tokens), one line per (search, format). At equal "
             "compute, the higher line is the trace format/algorithm that teaches search more efficiently.")
    return Section("Solve rate vs training compute", intro, [table] if table.rows else [], figures, notes)
