"""Report sections built from tables: runs, solve rate, efficiency, search behaviour.

Rows are groups of runs that differ only in their seeds (`Run.group`); each number is the mean ±
std over the runs of the group, n says how many had a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metacot.report.collect import Evaluation, Run, split_label
from metacot.report.tables import Table, group_by, stage_order, stat

GROUP_COLUMNS = ["task", "search", "format", "model", "setting"]
SPLIT_ORDER = {"val": 0, "test_unseen": 1}
PIPELINE_ORDER = {"datagen": 0, "sft": 1, "eval": 2, "rl": 3, "eval_rl": 4}


@dataclass
class Section:
    title: str
    intro: str
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # PNG names under the output directory
    notes: list[str] = field(default_factory=list)  # bullet lines under the tables


def splits_of(evals: list[Evaluation]) -> list[str]:
    """Every split seen, `val` (seen) and `test_unseen` (unseen) first."""
    names = {s for ev in evals for s in ev.metrics}
    return sorted(names, key=lambda s: (SPLIT_ORDER.get(s, 2), s))


def by_group_label(evals: list[Evaluation]) -> dict[tuple, list[Evaluation]]:
    """Evaluations keyed by (run group, model label), symbolic/sft/rl order within a group."""
    grouped = group_by(evals, lambda ev: (ev.run.group, ev.label))
    return dict(sorted(grouped.items(), key=lambda kv: (kv[0][0], stage_order(kv[0][1]))))


def reference_evals(evals: list[Evaluation]) -> list[Evaluation]:
    """One evaluation per run to read the symbolic algorithm's numbers from (its SFT eval when it
    has one: the symbolic numbers are on the same problems for every model of a run)."""
    per_run = group_by(evals, lambda ev: ev.run.path.resolve())
    return [min(evs, key=lambda ev: stage_order(ev.label)) for evs in per_run.values()]


def runs_section(runs: list[Run], unreadable: list[tuple[Path, str]]) -> Section:
    table = Table("status", ["run", "status", "task", "search", "format", "model", "seed", "stages", "wall_s",
                             "dir"], formats={"wall_s": ".1f"})
    for r in runs:
        stages = sorted(r.stages, key=lambda s: (PIPELINE_ORDER.get(s, len(PIPELINE_ORDER)), s))
        table.rows.append([r.label, r.status, r.task, r.search, r.linearization, r.model, r.seed,
                           ", ".join(stages) or "-", r.wall_s, r.name])
    notes = [f"`{r.label}` ({r.name}) is **{r.status}**: {r.error_line or '(no error recorded)'}"
             for r in runs if r.status != "complete"]
    notes += [f"unreadable `{path}` skipped: {reason}" for path, reason in unreadable]
    done = sum(r.status == "complete" for r in runs)
    common = sorted(runs[0].common) if runs else []
    intro = (f"{len(runs)} runs found, {done} complete. Only complete runs enter the tables below; "
             "failed and running ones are listed here with their error. `run` names a run by its overrides "
             "that not every run shares" + (f"; all of them share `{' '.join(common)}`." if common else "."))
    return Section("Runs", intro, [table], notes=notes)


def solve_section(evals: list[Evaluation]) -> Section:
    splits = splits_of(evals)
    table = Table("solve_rate", [*GROUP_COLUMNS, "stage", "n", *(split_label(s) for s in splits)])
    for group, evs in group_by(evals, lambda ev: ev.run.group).items():
        rows = [("symbolic", reference_evals(evs), "symbolic_solve_rate")]
        rows += [(label, [e for e in evs if e.label == label], "solve_rate")
                 for label in sorted({e.label for e in evs}, key=stage_order)]
        for label, members, key in rows:
            table.rows.append([*group, label, len(members), *(stat(e.metric(s, key) for e in members) for s in splits)])
    intro = ("Fraction of problems solved (the answer replays to the goal), on seen (`val`) and unseen "
             "(`test_unseen`) problems. `symbolic` is the search algorithm that wrote the training traces, "
             "run on the same problems; `sft` the model trained on them; `rl:<algo>` that model after RL.")
    return Section("Solve rate", intro, [table])


EFFICIENCY = ["tokens_per_solve", "tokens_per_problem", "fidelity", "invalid_format_rate", "optimal_rate", "ilr", "swc"]


def efficiency_section(evals: list[Evaluation]) -> Section:
    table = Table("efficiency", [*GROUP_COLUMNS, "stage", "split", "n", *EFFICIENCY])
    for (group, label), evs in by_group_label(evals).items():
        for split in splits_of(evs):
            members = [e for e in evs if split in e.metrics]
            table.rows.append([*group, label, split_label(split), len(members),
                               *(stat(e.metric(split, k) for e in members) for k in EFFICIENCY)])
    intro = ("Cost and quality of the model's own traces: tokens per solve (all generated tokens / solves), "
             "fidelity (fraction of claimed search steps that are legal), invalid format rate, and on mazes "
             "ILR (reference trace tokens / model tokens, > 1 = shorter than the teacher) and SWC (solution "
             "length weighted correctness). Columns no run has are left out.")
    return Section("Tokens, fidelity and format", intro, [table.drop_empty(keep=EFFICIENCY[:4])])


BEHAVIOUR = [("nodes", "model_nodes", "symbolic_nodes"), ("expansions", "model_expansions", "symbolic_expansions"),
             ("backtracks", "model_backtracks", "symbolic_backtracks"), ("depth", "model_depth", "symbolic_depth"),
             ("tokens", "tokens_per_problem", "symbolic_tokens")]


# ILR above this counts as "shorter than the teacher" (ILR within a few % of 1 is the same search).
ILR_SHORTER = 1.05


def behaviour_section(evals: list[Evaluation]) -> Section:
    cols = [c for name, _, _ in BEHAVIOUR for c in (f"model {name}", f"symbolic {name}")]
    table = Table("behaviour", [*GROUP_COLUMNS, "stage", "split", "n", *cols, "ilr"])
    notes = []
    for (group, label), evs in by_group_label(evals).items():
        for split in splits_of(evs):
            members = [e for e in evs if split in e.metrics]
            cells = [stat(e.metric(split, k) for e in members) for _, m, s in BEHAVIOUR for k in (m, s)]
            ilr = stat(e.metric(split, "ilr") for e in members)
            if ilr.mean is not None and ilr.mean > ILR_SHORTER:
                table.bold.add((len(table.rows), len(table.columns) - 1))
                notes.append(f"{group[1]}/{group[2]} {label} on {split_label(split)} problems: ILR "
                             f"{ilr.mean:.3f} > {ILR_SHORTER}, its traces are shorter than its teacher's.")
            table.rows.append([*group, label, split_label(split), len(members), *cells, ilr])
    matrix, sentences = order_similarity(evals)
    intro = ("How the model searches compared with the symbolic algorithm on the same problems (means per "
             f"problem). Bold ILR (> {ILR_SHORTER}): the model's traces are clearly shorter than its teacher's.")
    tables = [table.drop_empty(keep=cols[:2])] + ([matrix] if matrix.rows else [])
    if matrix.rows:
        intro += (" The order-similarity matrix compares the order in which the model expands nodes with the "
                  "order each reference algorithm would (rows: the search the model was trained on, columns: "
                  "the reference; 1 = same order).")
    return Section("Search behaviour", intro, tables, notes=notes + sentences)


def order_similarity(evals: list[Evaluation]) -> tuple[Table, list[str]]:
    """Rows (run group — task, trained-on search, format, model, setting — split, model) x columns
    (reference algorithm) of the mean `order_similarity/<alg>` metric over the group's runs (its
    seeds), plus a sentence per row naming the best match. Runs that differ in anything but the seed
    stay apart, as in every other table."""
    prefix = "order_similarity/"
    algs = sorted({k[len(prefix):] for ev in evals for m in ev.metrics.values() for k in m
                   if k.startswith(prefix)})
    columns = ["task", "trained on", "format", "model", "setting", "split", "stage", "n"]
    table = Table("order_similarity", [*columns, *algs])
    sentences = []
    if not algs:
        return table, sentences
    keyed = [(ev, s) for ev in evals for s in ev.metrics
             if any(ev.metric(s, prefix + a) is not None for a in algs)]
    rows = group_by(keyed, lambda es: (es[0].run.group, SPLIT_ORDER.get(es[1], 2), es[1],
                                       stage_order(es[0].label), es[0].label))
    for (group, _, split, _, label), members in rows.items():
        cells = [stat(ev.metric(s, prefix + a) for ev, s in members) for a in algs]
        table.rows.append([*group, split_label(split), label, len(members), *cells])
        scored = [(c.mean, a) for c, a in zip(cells, algs, strict=True) if c.mean is not None]
        best = max((m for m, _ in scored), default=None)
        leaders = [a for m, a in scored if m == best]
        if not best or len(leaders) > 1:  # no similarity, or a tie: no single algorithm to name
            continue
        alg = leaders[0]
        table.bold.add((len(table.rows) - 1, len(columns) + algs.index(alg)))
        task, search, setting = group[0], group[1], group[4]
        where = "" if setting == "-" else f" ({setting})"
        sentences.append(f"{task}: the {label} model trained on {search} traces{where} searches most like "
                         f"**{alg}** on {split_label(split)} problems (similarity {best:.3f}).")
    return table, sentences
