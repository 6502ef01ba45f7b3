"""Does RL improve the default SFT model? GRPO and RLOO from the same SFT model, before/after table.

    python train.py                              # builds the default SFT model once (the main job)
    python scripts/rl_cpu_experiment.py          # RL with grpo and rloo, ~12 min each on 2 cores
    python scripts/rl_cpu_experiment.py --algos grpo --minutes 5 -- task.size=5 rl.lr=3e-4

Every run is `python train.py stage=rl algo=<algo> <overrides>` in its own process, as a user runs
it, starting fresh (`rl.resume=false`). The RL stage evaluates the SFT model at step 0 and the RL
model at the end with the same evaluator options (greedy solve rate on held-out problems: `val`
and `test_unseen`), so the before/after columns are directly comparable. Anything after `--` is a
Hydra override for every run (the task/model overrides must match the SFT model's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# CPU-sized defaults: small rollout batches, frequent updates, a cheap greedy evaluation (whose
# token budget stays near the traces' length: a degraded model would otherwise decode to the context).
DEFAULTS = [
    "rl.prompts_per_step=16", "algo.group_size=8", "rl.lr=3e-5", "rl.micro_batch_size=32", "rl.refill_rounds=2",
    "rl.eval_every=0", "rl.table_every=5", "eval.n_problems=200", "eval.num_samples=0", "eval.batch_size=100",
    "eval.max_new_tokens=256",
]


def run(algo: str, minutes: float, steps: int, overrides: list[str], out: Path, threads: int | None) -> dict:
    run_dir = out / algo
    args = [sys.executable, str(REPO / "train.py"), "stage=rl", f"algo={algo}", *DEFAULTS,
            f"rl.steps={steps}", f"rl.max_time_s={minutes * 60:.0f}", "rl.resume=false",
            "trainer.enable_progress_bar=false", *overrides, f"hydra.run.dir={run_dir}"]
    print("$ " + " ".join(args[1:]), flush=True)
    t0 = time.perf_counter()
    log = (out / f"{algo}.log").open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    res = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = (out / f"{algo}.log").read_text()[-3000:]
        raise SystemExit(f"{algo} failed (exit {res.returncode}); end of {out / f'{algo}.log'}:\n{tail}")
    summary = json.loads((run_dir / "metrics.json").read_text())
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def rate(summary: dict, when: str, split: str) -> str:
    v = summary[when].get(split, {}).get("solve_rate")
    return "-" if v is None else f"{100 * v:.1f}%"


def table(results: dict[str, dict]) -> str:
    head = f"{'algo':<10}{'steps':>6}{'min':>6}  {'val before':>10}{'val after':>10}  {'unseen before':>13}{'unseen after':>13}"
    lines = [head, "-" * len(head)]
    for algo, s in results.items():
        lines.append(f"{algo:<10}{s['steps']:>6}{s['wall_s'] / 60:>6.1f}  {rate(s, 'before', 'val'):>10}"
                     f"{rate(s, 'after', 'val'):>10}  {rate(s, 'before', 'test_unseen'):>13}"
                     f"{rate(s, 'after', 'test_unseen'):>13}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["grpo", "rloo"])
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget of each RL run")
    parser.add_argument("--steps", type=int, default=1000, help="step cap (the time budget usually ends first)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (OMP_NUM_THREADS); 1 is much faster on a busy machine")
    parser.add_argument("--out", type=Path, default=None, help="default: logs/rl_experiment/<time>")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    a = parser.parse_args()
    root = Path(os.environ.get("METACOT_ROOT", "."))
    out = a.out or root / "logs" / "rl_experiment" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    results = {algo: run(algo, a.minutes, a.steps, a.overrides, out, a.threads) for algo in a.algos}
    text = table(results)
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "table.txt").write_text(text + "\n")
    print(f"\nheld-out greedy solve rate, before (SFT) and after RL\n{text}\n(details: {out})")


if __name__ == "__main__":
    main()
