"""The report CLI on a synthetic sweep written by hand: every checked number is computed by hand
from the fixtures below (means/std over seeds, solved-set inclusion, pass@k, budgets, compute)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from metacot.report.__main__ import main
from metacot.report.collect import Run, evaluations, load_runs, share_overrides
from metacot.report.curves import passk_section
from metacot.report.figures import FigureSink, legend_labels, passk_figure
from metacot.report.tables import stat

TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nRuntimeError: out of memory'


def config(search: str, seed: int, stage: str = "pipeline", algo: str = "grpo") -> dict:
    return {"task": {"name": "maze", "size": 5}, "search": {"name": search}, "linearization": {"name": "compact"},
            "model": {"name": "tiny"}, "algo": {"name": algo}, "reward": {"name": "outcome"},
            "sft": {"train_tokens": None, "max_steps": 10, "batch_tokens": 64}, "stage": {"name": stage},
            "seed": seed}


def metrics(solve: float, **extra: float | None) -> dict:
    return {"solve_rate": solve, "symbolic_solve_rate": 1.0, "tokens_per_solve": 50.0, "fidelity": 0.9,
            "invalid_format_rate": 0.1, "ilr": 0.5, "swc": solve, "model_nodes": 4.0, "symbolic_nodes": 6.0,
            "num_problems": 6.0, **extra}


def row(pid: str, correct: bool, tokens: int, num_correct: int | None = None, n: int = 4,
        symbolic_tokens: int = 60) -> dict:
    return {"id": pid, "correct": correct, "optimal": correct, "tokens": tokens, "well_formed": True, "length": 3,
            "optimal_length": 3, "num_samples": n if num_correct is not None else 1, "num_correct": num_correct,
            "model_stats": {"nodes": 4}, "symbolic_solved": pid != "p2", "symbolic_tokens": symbolic_tokens,
            "symbolic_stats": {"nodes": 6}, "order_similarity": {}}


# The pipeline_rl run's per-problem rows on test_unseen (n = 4 samples each). p5 is SFT-only (unmatched).
SFT_ROWS = [row("p0", False, 10, 0), row("p1", True, 20, 2), row("p2", False, 40, 0), row("p3", True, 70, 3),
            row("p4", False, 100, 0), row("p5", True, 30, 1)]
RL_ROWS = [row("p0", True, 10, 1), row("p1", False, 20, 0), row("p2", False, 40, 0), row("p3", True, 70, 4),
           row("p4", True, 100, 0)]


def greedy_rows(solved: int) -> list[dict]:
    return [row(f"q{i}", i < solved, 8 * (i + 1)) for i in range(4)]


def write(d: Path, data: dict | str) -> None:
    d.mkdir(parents=True)
    (d / "results.json").write_text(data if isinstance(data, str) else json.dumps(data))


def results(cfg: dict, overrides: list[str], stages: dict, status: str = "complete", error: str | None = None) -> dict:
    return {"version": 1, "status": status, "config_hash": "ab12", "overrides": overrides, "config": cfg,
            "started": "2026-11-26T07:00:00", "finished": "2026-11-26T07:02:00", "wall_s": 120.0, "error": error,
            "stages": stages}


def eval_stage(val: dict, unseen: dict, problems: dict | None = None) -> dict:
    return {"metrics": {"val": val, "test_unseen": unseen}, "model_source": "x/hf", "problems": problems or {}}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    for seed, (seen, unseen) in enumerate([(0.6, 0.4), (0.8, 0.5)]):  # astar, two seeds
        write(root / str(seed), results(config("astar", seed), ["search=astar", f"seed={seed}"], {
            "datagen": {"dataset_dir": "d"},  # no manifest: tolerated
            "sft": {"steps": 10, "train_tokens": 1000, "num_parameters": 100, "final_train_loss": 1.0},
            "eval": eval_stage(metrics(seen, **{"pass@1": seen, "pass@2": seen + 0.1}), metrics(unseen),
                               {"val": greedy_rows(2), "test_unseen": greedy_rows(seed + 1)})}))
    write(root / "2", results(config("mcts", 0), ["search=mcts", "seed=0"], {  # no train_tokens/params
        "sft": {"steps": 10},
        "eval": eval_stage(metrics(0.3, **{"order_similarity/astar": 0.3, "order_similarity/bfs": 0.8}),
                           metrics(0.2, ilr=1.25))}))
    write(root / "3", results(config("astar", 0, "pipeline_rl"), ["stage=pipeline_rl"], {
        "sft": {"steps": 10, "train_tokens": 2000, "num_parameters": 100},
        "eval": eval_stage(metrics(0.5), metrics(0.5, **{"pass@2": 0.99}), {"test_unseen": SFT_ROWS}),
        "rl": {"steps": 5, "before": {}, "after": {}, "history": []},
        "eval_rl": eval_stage(metrics(0.7), metrics(0.6), {"test_unseen": RL_ROWS})}))
    write(root / "4", results(config("bfs", 0), ["search=bfs"], {}, status="failed", error=TRACEBACK))
    write(root / "5", '{"version": 1, "status": "compl')  # truncated: corrupt
    return root


@pytest.fixture(scope="module")
def report(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main([str(sweep), "--out", str(out)]) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def pick(rows: list[dict[str, str]], **where: str) -> dict[str, str]:
    found = [r for r in rows if all(r[k] == v for k, v in where.items())]
    assert len(found) == 1, (where, found)
    return found[0]


def test_solve_rate_is_mean_and_std_over_seeds(report: Path):
    rows = read_csv(report / "solve_rate.csv")
    sft = pick(rows, search="astar", setting="-", stage="sft")
    assert float(sft["seen"]) == pytest.approx(0.7)
    assert float(sft["seen_std"]) == pytest.approx(math.sqrt(0.02))  # sample std of 0.6, 0.8
    assert float(sft["unseen"]) == pytest.approx(0.45)
    assert sft["n"] == "2" and sft["seen_n"] == "2"
    symbolic = pick(rows, search="astar", setting="-", stage="symbolic")
    assert float(symbolic["seen"]) == 1.0 and symbolic["seen_std"] == "0.0"
    rl = pick(rows, search="astar", setting="stage=pipeline_rl", stage="rl:grpo")
    assert float(rl["unseen"]) == pytest.approx(0.6) and rl["unseen_std"] == "" and rl["n"] == "1"
    assert not [r for r in rows if r["search"] == "bfs"]  # the failed run is not in the tables
    md = (report / "report.md").read_text()
    assert "| maze | astar | compact | tiny | - | sft | 2 | 0.700 ± 0.141 | 0.450 ± 0.071 |" in md


def test_failed_and_corrupt_runs_are_listed(report: Path):
    md = (report / "report.md").read_text()
    assert "`search=bfs` (4) is **failed**: RuntimeError: out of memory" in md  # the traceback's last line
    assert "unreadable" in md and str(Path("5") / "results.json") in md
    status = {r["dir"]: (r["run"], r["status"]) for r in read_csv(report / "status.csv")}
    assert status == {"0": ("search=astar seed=0", "complete"), "1": ("search=astar seed=1", "complete"),
                      "2": ("search=mcts seed=0", "complete"), "3": ("stage=pipeline_rl", "complete"),
                      "4": ("search=bfs", "failed")}


def test_runs_csv_has_one_row_per_run_model_split(report: Path):
    rows = read_csv(report / "runs.csv")
    assert len(rows) == 2 + 2 + 2 + 4
    r = pick(rows, run="3", stage="eval_rl", split="test_unseen")
    assert (r["label"], r["search"], r["algo"], r["train_tokens"]) == ("rl:grpo", "astar", "grpo", "2000")
    assert float(r["solve_rate"]) == 0.6
    assert pick(rows, run="2", stage="eval", split="val")["train_tokens"] == "640"  # steps x batch_tokens


def test_exploration_boundary_counts_and_passk(report: Path):
    r = pick(read_csv(report / "boundary.csv"), run="stage=pipeline_rl", split="unseen")
    # SFT solved {p1, p3}; RL {p0, p3, p4 (greedy correct)}; p2 neither; p5 is not in the RL eval.
    assert (r["problems"], r["k"]) == ("5", "4")
    assert (r["rl solves, sft never"], r["sft solves, rl never"], r["both"], r["neither"]) == ("2", "1", "1", "1")
    assert float(r["sft pass@1"]) == pytest.approx(5 / 20) and float(r["sft pass@k"]) == pytest.approx(2 / 5)
    assert float(r["rl pass@1"]) == pytest.approx(5 / 20) and float(r["rl pass@k"]) == pytest.approx(2 / 5)


def test_passk_from_rows_else_from_metrics(report: Path):
    rows = read_csv(report / "passk.csv")
    sft = pick(rows, setting="stage=pipeline_rl", stage="sft", split="unseen")
    # n = 4, c = [0, 2, 0, 3, 0, 1]: pass@2 = 1 - C(4-c, 2)/C(4, 2) = [0, 5/6, 0, 1, 0, 1/2] (not the 0.99 metric)
    assert float(sft["pass@2"]) == pytest.approx((5 / 6 + 1 + 1 / 2) / 6)
    assert float(sft["pass@4"]) == pytest.approx(3 / 6)
    greedy = pick(rows, setting="-", search="astar", stage="sft", split="seen")  # rows lack counts: metrics
    assert float(greedy["pass@1"]) == pytest.approx(0.7) and float(greedy["pass@2"]) == pytest.approx(0.8)
    symbolic = pick(rows, setting="-", search="astar", stage="symbolic", split="unseen")
    assert float(symbolic["pass@1"]) == float(symbolic["pass@4"]) == 1.0


def test_budget_fractions(report: Path):
    rows = read_csv(report / "budget.csv")
    sft = pick(rows, setting="stage=pipeline_rl", stage="sft")
    assert sft["split"] == "unseen"
    # Correct with tokens: p1 20, p3 70, p5 30, out of 6 problems.
    assert float(sft["B<=16"]) == 0.0 and float(sft["B<=32"]) == pytest.approx(2 / 6)
    assert float(sft["B<=128"]) == pytest.approx(3 / 6)
    seeds = pick(rows, setting="-", stage="sft")  # seed 0 solves q0 (8 tokens), seed 1 q0, q1 (16)
    assert float(seeds["B<=8"]) == pytest.approx(0.25) and float(seeds["B<=16"]) == pytest.approx(0.375)
    symbolic = pick(rows, setting="stage=pipeline_rl", stage="symbolic")  # all but p2, 60 tokens each
    assert float(symbolic["B<=32"]) == 0.0 and float(symbolic["B<=64"]) == pytest.approx(5 / 6)


def test_compute_falls_back_to_tokens_when_params_missing(report: Path):
    rows = read_csv(report / "compute.csv")
    astar = pick(rows, search="astar", setting="-")
    assert float(astar["compute"]) == 1000 and float(astar["unseen solve rate"]) == pytest.approx(0.45)
    assert float(pick(rows, search="mcts")["compute"]) == 640
    assert "some runs do not report num_parameters" in (report / "report.md").read_text()


def test_behaviour_order_similarity_and_ilr(report: Path):
    md = (report / "report.md").read_text()
    assert "trained on mcts traces searches most like **bfs** on seen problems (similarity 0.800)" in md
    assert "**1.250**" in md and "shorter than its teacher" in md
    sim = pick(read_csv(report / "order_similarity.csv"), **{"trained on": "mcts", "split": "seen"})
    assert (float(sim["astar"]), float(sim["bfs"])) == (0.3, 0.8)
    behaviour = pick(read_csv(report / "behaviour.csv"), search="astar", setting="-", split="seen")
    assert float(behaviour["model nodes"]) == 4.0 and float(behaviour["symbolic nodes"]) == 6.0


def test_order_similarity_keeps_runs_of_other_settings_apart(tmp_path: Path):
    """Two learning rates of one trained-on search are two rows (as in every other table), and
    only seeds are averaged."""
    for i, (lr, seed, bfs) in enumerate([("1e-4", 0, 0.8), ("1e-4", 1, 0.6), ("5e-4", 0, 0.2)]):
        cfg = {**config("mcts", seed), "sft": {"lr": float(lr), "train_tokens": None, "max_steps": 10}}
        write(tmp_path / "runs" / str(i), results(cfg, ["search=mcts", f"sft.lr={lr}", f"seed={seed}"], {
            "sft": {"steps": 10},
            "eval": eval_stage(metrics(0.5, **{"order_similarity/bfs": bfs, "order_similarity/dfs": 0.5}),
                               metrics(0.5))}))
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    rows = [r for r in read_csv(out / "order_similarity.csv") if r["split"] == "seen"]
    by_setting = {r["setting"]: (r["n"], float(r["bfs"])) for r in rows}
    assert by_setting == {"sft.lr=1e-4": ("2", pytest.approx(0.7)), "sft.lr=5e-4": ("1", 0.2)}
    md = (out / "report.md").read_text()
    assert "trained on mcts traces (sft.lr=5e-4) searches most like **dfs**" in md


def test_plots_and_tensorboard(report: Path):
    for name in ("passk_maze_val", "passk_maze_test_unseen", "budget_maze", "compute_maze"):
        png = report / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert f"![{name}.png]({name}.png)" in (report / "report.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = [p for p in (report / "tensorboard").iterdir() if p.name.startswith("events.out.tfevents")]
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == sorted(f"report/{n}" for n in ("passk_maze_val", "passk_maze_test_unseen",
                                                                          "budget_maze", "compute_maze"))


def test_default_out_dir_and_printed_summary(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    single = tmp_path / "run"
    write(single, results(config("astar", 0), [], {"eval": eval_stage(metrics(0.5), metrics(0.25))}))
    assert main([str(single)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(single / "report" / "report.md")
    assert printed[1].startswith("report: 1 runs (1 complete")
    assert (single / "report" / "solve_rate.csv").is_file()


def test_missing_or_empty_dirs_exit_with_a_message(tmp_path: Path):
    with pytest.raises(SystemExit, match="no such directory"):
        main([str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="must contain results.json"):
        main([str(tmp_path)])


def test_overrides_every_run_shares_are_not_a_setting():
    runs = [Run(str(i), Path("."), "complete", ["data.train=48", f"search={s}", f"seed={i}", *more], {}, {})
            for i, (s, more) in enumerate([("astar", []), ("mcts", []), ("mcts", ["sft.lr=0.1"])])]
    assert share_overrides(runs) == ["data.train=48"]
    assert [r.setting for r in runs] == ["-", "-", "sft.lr=0.1"]
    assert [r.label for r in runs] == ["search=astar seed=0", "search=mcts seed=1", "search=mcts seed=2 sft.lr=0.1"]


def test_stat_and_setting():
    s = stat([0.6, None, float("nan"), 0.8])
    assert (s.mean, s.n) == (pytest.approx(0.7), 2) and s.std == pytest.approx(math.sqrt(0.02))
    assert stat([]).mean is None and stat([3]).std is None
    run = Run("r", Path("."), "complete", ["seed=3", "search=dfs", "+rl.seed=2", "sft.lr=0.1", "hydra.job.chdir=true"],
              {}, {})
    assert run.setting == "sft.lr=0.1"
    assert Run("r", Path("."), "failed", [], {}, {}, error="ValueError: bad\nmore").error_line == "ValueError: bad"
    assert Run("r", Path("."), "failed", [], {}, {}, error=TRACEBACK, error_message="E: x").error_line == "E: x"


def rl_eval_run(d: Path, model_info: dict | None) -> None:
    """A `stage=eval stage.source=rl` run whose own config says algo=grpo (the default)."""
    cfg = {**config("astar", 0, "eval"), "stage": {"name": "eval", "source": "rl"}}
    stage = eval_stage(metrics(0.5), metrics(0.25))
    if model_info is not None:
        stage["model_info"] = model_info
    write(d, results(cfg, ["stage=eval", "stage.source=rl"], {"eval": stage}))


def test_rl_eval_is_labelled_by_the_algo_that_trained_the_model(tmp_path: Path):
    """`stage.source=rl` evaluates the latest RL export, whatever algo trained it: the label comes from
    the export's own record (`model_info`), not from the eval run's `algo` config."""
    rl_eval_run(tmp_path / "runs" / "0", {"source": "rl", "path": "exp/rl/hf", "algo": "rloo", "reward": "outcome",
                                          "global_step": 40})
    runs, _ = load_runs([tmp_path / "runs"])
    [ev] = evaluations(runs)
    assert (runs[0].algo, ev.label, ev.algo) == ("grpo", "rl:rloo", "rloo")
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert {(r["label"], r["algo"]) for r in read_csv(out / "runs.csv")} == {("rl:rloo", "rloo")}


@pytest.mark.parametrize("model_info", [None, {"source": "rl", "path": "exp/rl/hf"}], ids=["old", "no-algo"])
def test_rl_eval_without_a_recorded_algo_falls_back_to_the_run_config(tmp_path: Path, model_info: dict | None):
    rl_eval_run(tmp_path / "0", model_info)
    [ev] = evaluations(load_runs([tmp_path])[0])
    assert ev.label == "rl:grpo"


def test_sft_eval_with_model_info_stays_sft(tmp_path: Path):
    write(tmp_path / "0", results(config("astar", 0, "eval"), ["stage=eval"], {
        "eval": {**eval_stage(metrics(0.5), metrics(0.25)), "model_info": {"source": "sft", "global_step": 10}}}))
    [ev] = evaluations(load_runs([tmp_path])[0])
    assert ev.label == "sft"


class RecordingSink(FigureSink):
    """Keeps the figures instead of writing them."""

    def __init__(self):
        super().__init__(Path("."))
        self.figures: dict = {}

    def save(self, name: str, fig) -> str:
        self.figures[name] = fig
        return f"{name}.png"


def legend(fig) -> tuple[list[str], str]:
    box = fig.axes[0].get_legend()
    return [t.get_text() for t in box.get_texts()], box.get_title().get_text()


def test_passk_legend_shows_only_what_differs_between_the_runs(tmp_path: Path):
    """Runs of a mixed report that differ in one override: the legend names that override, not every
    override the figure's runs share (those go once into the legend's title)."""
    shared = ["data.train=48", "sft.max_steps=2000", "trainer=gpu", "stage=pipeline_rl"]
    for i, lr in enumerate(["1e-4", "5e-4"]):
        write(tmp_path / str(i), results(config("astar", 0), [*shared, f"sft.lr={lr}"], {
            "eval": eval_stage(metrics(0.5, **{"pass@1": 0.5, "pass@2": 0.6}), metrics(0.25))}))
    write(tmp_path / "2", results({**config("astar", 0), "task": {"name": "countdown"}}, ["task=countdown"], {
        "eval": eval_stage(metrics(0.5, **{"pass@1": 0.5}), metrics(0.25))}))  # another task: nothing common
    runs, _ = load_runs([tmp_path])
    sink = RecordingSink()
    passk_section(evaluations(runs), sink)
    labels, title = legend(sink.figures["passk_maze_val"])
    assert labels == ["astar/compact sft.lr=1e-4 sft", "astar/compact sft.lr=5e-4 sft",
                      "astar symbolic sft.lr=1e-4", "astar symbolic sft.lr=5e-4"]
    assert title == "data.train=48 sft.max_steps=2000\nstage=pipeline_rl trainer=gpu"  # shared, once
    assert all(len(line) <= 36 for text in [*labels, title] for line in text.splitlines())


def test_legend_labels_drop_shared_words_and_go_outside_when_long():
    assert legend_labels(["a x=1 sft", "a x=2 sft"]) == (["x=1", "x=2"], "a sft")
    assert legend_labels(["a b", "b a"]) == (["a b", "b a"], "")  # would be empty: kept whole
    assert legend_labels(["only one label"]) == (["only one label"], "")
    curves = {f"astar/compact seed={i} " + "long.override=" + "x" * 60: {1: 0.1 * i, 2: 0.2} for i in range(8)}
    fig = passk_figure(curves, {}, "t")
    labels, _ = legend(fig)
    assert labels == [f"seed={i}" for i in range(8)]
    box = fig.axes[0].get_legend()
    fig.canvas.draw()
    assert box.get_window_extent().x0 > fig.axes[0].get_window_extent().x1  # beside the axes, not over them


def test_rerun_does_not_split_the_seeds_of_one_experiment(tmp_path: Path):
    """`rerun=true` (run complete jobs again) is not part of what a run is (sweep.NON_IDENTITY_KEYS)."""
    for seed in range(4):
        overrides = ["search=astar", f"seed={seed}"] + (["rerun=true"] if seed >= 2 else [])
        write(tmp_path / f"j{seed}", results(config("astar", seed), overrides,
                                             {"eval": eval_stage(metrics(0.1 * seed), metrics(0.1 * seed))}))
    runs, _ = load_runs([tmp_path])
    assert {r.setting for r in runs} == {"-"} and not any("rerun" in r.label for r in runs)


def test_runs_of_two_roots_with_the_same_name_stay_apart(tmp_path: Path):
    """The same sweep on two machines (a/sweeps/x, b/sweeps/x): names stay unique, and each run's
    symbolic numbers count (runs are told apart by directory, not by name)."""
    from metacot.report.sections import reference_evals

    for machine, symbolic in (("a", 1.0), ("b", 0.5)):
        write(tmp_path / machine / "x" / "0", results(config("astar", 0), ["search=astar"], {
            "eval": eval_stage(metrics(0.2, symbolic_solve_rate=symbolic), metrics(0.2))}))
    runs, _ = load_runs([tmp_path / "a" / "x", tmp_path / "b" / "x"])
    assert sorted(r.name for r in runs) == ["a/x/0", "b/x/0"]
    refs = reference_evals(evaluations(runs))
    assert sorted(ev.metric("val", "symbolic_solve_rate") for ev in refs) == [0.5, 1.0]


def test_a_directory_without_results_among_others_is_an_error(tmp_path: Path):
    write(tmp_path / "good" / "0", results(config("astar", 0), ["search=astar"], {}))
    (tmp_path / "typo").mkdir()
    with pytest.raises(SystemExit, match=r"no results.json under .*typo"):
        load_runs([tmp_path / "good", tmp_path / "typo"])


def test_budget_columns_reach_the_longest_trace():
    from metacot.report.curves import table_budgets

    budgets = table_budgets([1, 2000])
    assert budgets[0] <= 1 and budgets[-1] >= 2000 and len(budgets) <= 12
    assert table_budgets([3, 40]) == [2, 4, 8, 16, 32, 64]
