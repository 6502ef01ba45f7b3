#!/usr/bin/env bash
# The CPU-scale experiments behind docs/RESULTS.md, as sweeps. Re-running this script skips every
# job already complete (results.json), so it can be interrupted and resumed; each sweep's report
# is written to logs/reports/<question> (jobs under logs/sweeps/<question>). About 2 hours on an idle 2-core machine.
#   bash scripts/results_cpu.sh            # all four questions
#   bash scripts/results_cpu.sh q2         # one of them
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
which=${1:-all}
status=0

sweep() {  # sweep <question> <overrides...>: run the sweep, then its report
  local q=$1; shift
  [[ $which == all || $which == "$q" ]] || return 0
  python train.py -m hydra.sweep.dir="logs/sweeps/$q" "$@" || status=1
  python -m metacot.report "logs/sweeps/$q" --out "logs/reports/$q" || status=1
}

# Q1: search traces (A*, compact) vs solution-only, against training tokens, mazes and Countdown.
sweep q1 task=maze,countdown linearization=compact,solution sft.train_tokens=500000,1500000,3000000 \
  eval.num_samples=0 seed=0
# Q2: A* vs BFS vs DFS vs MCTS traces at equal training tokens (mazes, compact format).
sweep q2 task=maze linearization=compact search=astar,bfs,dfs,mcts sft.train_tokens=2000000 eval.num_samples=0 \
  seed=0,1,2
# Q3: SFT vs SFT+RL across objectives, pass@k up to k=32 (a cap of 256 new tokens: maze traces are < 100), from a partly trained SFT model (1.5M tokens).
sweep q3 stage=pipeline_rl task=maze linearization=compact sft.train_tokens=1500000 \
  algo=grpo,rloo,dr_grpo rl.steps=80 rl.prompts_per_step=16 rl.eval_every=0 rl.eval_at_start=false \
  eval.n_problems=100 eval.num_samples=32 eval.max_new_tokens=256
# Q3, spread: GRPO with two more RL seeds (same SFT model: rl.seed, not seed, which would retrain it).
sweep q3_seeds stage=pipeline_rl task=maze linearization=compact sft.train_tokens=1500000 \
  algo=grpo rl.seed=1,2 rl.steps=80 rl.prompts_per_step=16 rl.eval_every=0 rl.eval_at_start=false \
  eval.n_problems=100 eval.num_samples=32 eval.max_new_tokens=256
# Q4: bootstrapping (expert iteration, keep the shortest correct of 64 samples, 3 rounds of 128 problems,
# supervised fine-tuning at lr 5e-4 and 1e-4) from the converged SFT model (3M tokens).
sweep q4 stage=pipeline_rl task=maze linearization=compact sft.train_tokens=3000000 \
  algo=expert_iteration rl.prompts_per_step=128 rl.lr=5e-4,1e-4 rl.sft_epochs=2 rl.eval_every=0 rl.eval_at_start=false \
  eval.num_samples=0 eval.max_new_tokens=256
exit $status
