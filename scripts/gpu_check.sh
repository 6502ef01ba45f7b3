#!/usr/bin/env bash
# Every GPU check of metacot in one run (~5 minutes on one H100): GPU tests, the sampler benchmark
# (CUDA graphs vs generate), an SFT + RL smoke run with trainer=fsdp, the training benchmark.
# Each step has its own timeout and the run goes on when one fails; logs go to $OUT/<step>.log and
# a summary table to the console and $OUT/summary.md. Exit status: 0 when every step that ran passed.
#
#   OUT=/tmp/gpu_check WHEELS=shared/wheels bash scripts/gpu_check.sh           # everything
#   bash scripts/gpu_check.sh bench_generation pytest_sampler                     # some steps only
#   bash scripts/gpu_check.sh --dry-run                                           # print the commands
#
# WHEELS: a directory of *.whl installed first with `pip install --no-deps` (e.g. hydra-core,
# omegaconf, antlr4 where the machine lacks them). The package is not installed: PYTHONPATH=src.
# BUDGET (seconds, default 290): steps that would start after it is spent are skipped, and a step
# never runs past it.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
ONLY=()
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) ONLY+=("$arg") ;;
  esac
done
OUT=${OUT:-logs/gpu_check}
BUDGET=${BUDGET:-290}
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$SECONDS
SUMMARY=()
FAILED=0

wanted() {  # wanted <step>: no step names given, or this one is among them
  [[ ${#ONLY[@]} -eq 0 ]] && return 0
  local s
  for s in "${ONLY[@]}"; do [[ $s == "$1" ]] && return 0; done
  return 1
}

step() {  # step <name> <timeout s> <tail lines> <command...>: run it with a timeout, log, record
  local name=$1 limit=$2 lines=$3
  shift 3
  wanted "$name" || return 0
  local log="$OUT/$name.log" left=$((BUDGET - (SECONDS - START)))
  if ((DRY)); then
    printf '[dry-run] %s (timeout %ss): %s\n' "$name" "$limit" "$*"
    SUMMARY+=("| $name | DRY | | | \`$*\` |")
    return 0
  fi
  if ((left < 20)); then
    SUMMARY+=("| $name | SKIPPED | | | time budget spent (BUDGET=$BUDGET s) |")
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (timeout ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local status=PASS
  ((rc == 124 || rc == 137)) && status=TIMEOUT
  ((rc != 0 && rc != 124 && rc != 137)) && status=FAIL
  [[ $status == PASS ]] || FAILED=1
  tail -n "$lines" "$log"
  local detail
  detail=$(grep -E "BAR|passed|failed|skipped|[Ee]rror" "$log" | tail -n 1 | tr '|' '/' | cut -c1-160)
  SUMMARY+=("| $name | $status | $rc | $((SECONDS - t0)) | ${detail:-see $name.log} |")
}

skip() {  # skip <name> <why>
  wanted "$1" || return 0
  SUMMARY+=("| $1 | SKIPPED | | | $2 |")
}

# --- set-up --------------------------------------------------------------------------------------
if [[ -n ${WHEELS:-} ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if ((${#wheels[@]})); then
    step wheels 120 5 "$PY" -m pip install --no-deps --no-index --quiet "${wheels[@]}"
  else
    skip wheels "no *.whl in WHEELS=$WHEELS"
  fi
fi
step env 60 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PY -c 'import torch, transformers, lightning; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
  \"available\", torch.cuda.is_available()); print(\"transformers\", transformers.__version__, \"lightning\", lightning.__version__)'"

# --- tests ---------------------------------------------------------------------------------------
step pytest_sampler 150 15 "$PY" -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider \
  --ignore=tests/gpu/test_fsdp.py --junitxml="$OUT/pytest_sampler.xml"
step pytest_fsdp 200 15 "$PY" -m pytest -m gpu tests/gpu/test_fsdp.py -q -rA -p no:cacheprovider \
  --junitxml="$OUT/pytest_fsdp.xml"

# --- sampler benchmark: CUDA graphs vs eager vs generate (bar: >= 20x generate, small, batch 64) --
step bench_generation 150 40 "$PY" scripts/bench_generation.py --device cuda

# --- SFT (trainer=gpu) then RL (trainer=fsdp) on the tiny model, in their own METACOT_ROOT ---------
# (sft.* is part of the experiment key: the RL runs find the SFT export only with the same values)
SMOKE=(task=maze task.size=5 search=astar linearization=compact model=tiny data.train=256 data.val=16
  data.test_unseen=16 data.workers=2 data.max_tokens=512 trainer.enable_progress_bar=false trainer.devices=1
  eval.n_problems=8 eval.max_new_tokens=128 eval.num_samples=2 eval.batch_size=16
  sft.max_steps=${SFT_STEPS:-30} sft.warmup_steps=3 sft.val_every_steps=15 sft.batch_tokens=16384
  sft.solve_rate_problems=8 sft.solve_rate_max_new_tokens=128 sft.log_every_n_steps=5 sft.ckpt_every_steps=15)
SFT=(stage=sft trainer=gpu)
RL=(stage=rl rl.steps=${RL_STEPS:-3} rl.prompts_per_step=8 rl.max_new_tokens=128 rl.micro_batch_size=16 rl.eval_every=0
  rl.table_every=1)
export METACOT_ROOT="$OUT/smoke_root"
step sft_gpu 120 12 "$PY" train.py "${SFT[@]}" "${SMOKE[@]}" hydra.run.dir="$OUT/runs/sft_gpu"
step rl_fsdp 120 12 "$PY" train.py "${RL[@]}" trainer=fsdp "${SMOKE[@]}" hydra.run.dir="$OUT/runs/rl_fsdp"
unset METACOT_ROOT

# --- training benchmark (scripts/bench_train.py, written separately: its flags are read from --help)
if [[ -f scripts/bench_train.py ]]; then
  help=$("$PY" scripts/bench_train.py --help 2>/dev/null || true)
  args=(--device cuda --model base --seq 1024)
  if [[ $help == *"--compile {"* || $help == *"--compile COMPILE"* ]]; then
    args+=(--compile on)
  else
    args+=(--compile)
  fi
  [[ $help == *"--steps"* ]] && args+=(--steps 10)
  [[ $help == *"--warmup"* ]] && args+=(--warmup 3)
  [[ $help == *"--repeats"* ]] && args+=(--repeats 2)
  [[ $help == *"--json"* ]] && args+=(--json "$OUT/bench_train.json")
  step bench_train 150 30 "$PY" scripts/bench_train.py "${args[@]}"
else
  skip bench_train "scripts/bench_train.py not found"
fi

# --- RL on one plain GPU (trainer=gpu: rollouts through the CUDA-graph sampler), if time is left --
export METACOT_ROOT="$OUT/smoke_root"
step rl_gpu 90 12 "$PY" train.py "${RL[@]}" trainer=gpu "${SMOKE[@]}" hydra.run.dir="$OUT/runs/rl_gpu"
unset METACOT_ROOT

# --- summary -------------------------------------------------------------------------------------
{
  echo "## gpu_check ($(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START)) s, logs in $OUT)"
  echo
  echo "| step | status | rc | seconds | detail |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
} | tee "$OUT/summary.md"
exit "$FAILED"
