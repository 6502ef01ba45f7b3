"""Datagen throughput: complete traces/s (sample problems + search + render + count + write).

    python scripts/bench_datagen.py                       # every case, 1 worker and all cores
    python scripts/bench_datagen.py --n 50000 --workers 2 --cases countdown4:dfs_sos:sos
    python scripts/bench_datagen.py --profile             # cProfile of the headline case, 1 worker
    python scripts/bench_datagen.py --phases --n 5000     # CPU us/trace per phase of the headline case

A case is `task:search:linearization` (config option names, or an alias below). `countdown4` is
Countdown with 4 numbers at SoS scale (1..99, targets 10..100). `dfs_sos` is `dfs` as the SoS
generator ran it (`dfs(..., threshold=target)` in its countdown_generate.py): a child whose
heuristic exceeds the problem's target is never generated (`search.prune_threshold=target`);
the headline case is Countdown-4 with it, in the sos format. Plain `dfs` (no pruning) explores
about twice the nodes. Every trace is rendered, counted and written (keep_unsolved, overlong
kept), into a temporary directory that is deleted afterwards. Tokens/trace are reported for both
tokenizer modes (words and digits).

Two rates: traces/s on the wall clock (what the datagen stage delivers on this machine now), and
the rate the workers' CPU time implies for idle cores (`cpu/trace`, process time, so it is robust
to other jobs sharing the machine; the main process's small share is not in it).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm at import: no progress bars in the table
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from metacot.config import build  # noqa: E402
from metacot.data.build import build_dataset  # noqa: E402
from metacot.data.options import DataOptions  # noqa: E402
from metacot.data.records import read_manifest, read_split  # noqa: E402
from metacot.data.shards import json_record  # noqa: E402
from metacot.data.tokenizer import TokenCounter, make_tokenizer  # noqa: E402

HEADLINE = "countdown4:dfs_sos:sos"
CASES = [HEADLINE, "countdown4:dfs:sos", "countdown4:bfs:sos", "countdown4:astar:metacot", "countdown:beam:sos",
         "maze:astar:searchformer", "maze:mcts:searchformer", "maze:dfs:sos"]
# (group, alias) -> (config option, overrides): the benchmarked problem family / search settings.
ALIASES = {
    ("task", "countdown4"): ("countdown", ["task.num_count=4", "task.max_number=99", "task.min_target=10",
                                           "task.max_target=100"]),
    ("search", "dfs_sos"): ("dfs", ["search.prune_threshold=target"]),
}
GROUPS = ("task", "search", "linearization")


def engine(case: str, extra: list[str]) -> tuple:
    """(task, search, linearization) from their option files plus `group.key=value` overrides."""
    cfg, overrides = OmegaConf.create(), []
    for group, name in zip(GROUPS, case.split(":"), strict=True):
        option, more = ALIASES.get((group, name), (name, []))
        cfg[group] = OmegaConf.load(ROOT / "conf" / group / f"{option}.yaml")
        overrides += more
    cfg.merge_with_dotlist([*overrides, *extra])
    return build(cfg.task), build(cfg.search), build(cfg.linearization)


def run_case(case: str, n: int, workers: int, extra: list[str]) -> dict:
    task, search, lin = engine(case, extra)
    opts = DataOptions(train=n, val=0, test_unseen=0, workers=workers, keep_unsolved=True,
                       overlong="keep", max_tokens=10**9, seed=random.randrange(10**6))
    with tempfile.TemporaryDirectory(prefix="bench_datagen-") as root:
        d = build_dataset(task, search, lin, opts, root)
        stats = json.loads((d / "build_stats.json").read_text())
        manifest = read_manifest(d)
        sample = [r["completion"] for r in read_split(d, "train")[:2000]]
    digits = TokenCounter(make_tokenizer(task, lin, "digits"))
    return {
        "case": case, "workers": workers, "traces": stats["traces"], "seconds": stats["seconds"],
        "sample_seconds": stats["sample_seconds"], "traces_per_s": stats["traces_per_s"],
        "cpu_us": stats["cpu_us_per_trace"], "sample_cpu_us": 1e6 * stats["sample_cpu_seconds"] / max(1, stats["traces"]),
        "solve_rate": manifest["symbolic_solve_rate"]["train"],
        "tokens_words": manifest["trace_tokens"]["mean"],
        "tokens_p95_words": manifest["trace_tokens"]["p95"],
        "tokens_digits": sum(map(digits.count, sample)) / max(1, len(sample)),
        "chars": sum(map(len, sample)) / max(1, len(sample)),
    }


def phases(case: str, n: int, extra: list[str]) -> None:
    """CPU us/trace of each phase of a worker's loop (one process, process time around each call)."""
    task, search, lin = engine(case, extra)
    counter = TokenCounter(make_tokenizer(task, lin))
    clock = time.process_time
    start = clock()
    problems = task.sample_problems("train", n, random.randrange(10**6))
    spent = {"sample": clock() - start, "search": 0.0, "render+count": 0.0, "stats+record": 0.0}
    for i, problem in enumerate(problems):
        t0 = clock()
        trace = search.run(task, problem, i)
        t1 = clock()
        prompt, completion, n_prompt, n_trace = lin.render_counted(task, problem, trace, counter)
        t2 = clock()
        json_record({"id": i, "prompt": prompt, "completion": completion, "problem": problem,
                     "solved": trace.solved, "trace_tokens": n_trace, "prompt_tokens": n_prompt,
                     "stats": trace.stats()})
        t3 = clock()
        spent["search"] += t1 - t0
        spent["render+count"] += t2 - t1
        spent["stats+record"] += t3 - t2
    print(f"{case}: CPU us/trace by phase ({len(problems)} traces, 1 process, timer overhead included)")
    for name, seconds in spent.items():
        print(f"  {name:<14}{1e6 * seconds / max(1, len(problems)):8.1f}")
    print(f"  {'total':<14}{1e6 * sum(spent.values()) / max(1, len(problems)):8.1f}")


def profile(case: str, n: int, extra: list[str]) -> None:
    prof = cProfile.Profile()
    prof.enable()
    run_case(case, n, 1, extra)
    prof.disable()
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="traces per case and worker count")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default: 1 and all cores)")
    ap.add_argument("--cases", nargs="+", default=CASES, help="task:search:linearization cases")
    ap.add_argument("--profile", action="store_true", help="cProfile the first case with 1 worker")
    ap.add_argument("--phases", action="store_true", help="CPU time per phase of the first case, 1 process")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every case (e.g. search.max_expansions=500)")
    args = ap.parse_args()
    if args.profile:
        profile(args.cases[0], args.n, args.overrides)
        return
    if args.phases:
        phases(args.cases[0], args.n, args.overrides)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    worker_counts = args.workers or sorted({1, cores})
    rows = []
    for case in args.cases:
        for w in worker_counts:
            r = run_case(case, args.n, w, args.overrides)
            rows.append(r)
            print(f"{case:<28} workers={w:<2} {r['traces_per_s']:>9,.0f} traces/s  ({r['traces']} traces in "
                  f"{r['seconds']:.2f}s, sampling {r['sample_seconds']:.2f}s)  cpu/trace {r['cpu_us']:.0f} us "
                  f"(sampling {r['sample_cpu_us']:.0f})  solved {100 * r['solve_rate']:.0f}%  "
                  f"tokens/trace {r['tokens_words']:.0f} words / {r['tokens_digits']:.0f} digits  "
                  f"{r['chars']:.0f} chars", flush=True)
    print(f"\n{'case':<28}{'workers':>8}{'traces/s':>11}{'cpu us/tr':>10}{'cpu-bound/s':>12}{'solved':>8}"
          f"{'tok words':>11}{'tok digits':>11}{'p95 words':>11}")
    for r in rows:  # cpu-bound/s: what the workers' CPU time per trace allows on `workers` idle cores
        print(f"{r['case']:<28}{r['workers']:>8}{r['traces_per_s']:>11,.0f}{r['cpu_us']:>10.0f}"
              f"{r['workers'] * 1e6 / max(r['cpu_us'], 1e-9):>12,.0f}{100 * r['solve_rate']:>7.0f}%"
              f"{r['tokens_words']:>11.0f}{r['tokens_digits']:>11.0f}{r['tokens_p95_words']:>11}")


if __name__ == "__main__":
    main()
