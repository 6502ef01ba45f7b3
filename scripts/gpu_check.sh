#!/usr/bin/env bash
# Every GPU check of metacot in one run (~7 minutes on one H100; BUDGET caps it). Two phases:
#   1. correctness, concurrently (tiny models: host-bound, the GPU has room): the GPU tests
#      (CUDA-graph sampler, FSDP vs DDP vs one device, resume, export), and an SFT (trainer=gpu)
#      -> RL (trainer=fsdp) smoke run through train.py;
#   2. timing, one at a time: the sampler benchmark (CUDA graphs vs eager vs generate), the training
#      benchmark (Lightning vs a plain loop, eager and compiled, MFU), and an RL run on one GPU whose
#      summary gives the step's time split (rollout / log-probs / update); then, if time is left, the
#      training benchmark with SDPA instead of the default FlexAttention (the baseline of its gain).
# Each step has its own timeout and the run goes on when one fails. Logs and runs go to $WORK; $OUT
# gets a few files only (summary.md, the benchmark JSONs and logs.tar.gz with every log), so the
# results travel back from a lent machine. Exit status: 0 when every step that ran passed.
#
#   OUT=/tmp/gpu_check bash scripts/gpu_check.sh              # everything
#   bash scripts/gpu_check.sh bench_generation pytest_sampler  # some steps only
#   bash scripts/gpu_check.sh --dry-run                        # print the commands
#
# WHEELS: a directory of *.whl (hydra-core, omegaconf, antlr4 where the machine lacks them),
# installed first into $WORK/site with `pip install --no-deps --target`. KEEP_WORK=1 keeps the
# previous call's smoke runs (by default they are deleted first). TRAIN_COMPILE=on|off|both (default both):
# the arms of bench_train. SFT_EXTRA: more overrides for the sft_gpu smoke run (e.g. sft.compile=true). metacot itself is not
# installed: PYTHONPATH=src. BUDGET (seconds, default 480): a step never runs past it, and steps that
# would start after it is spent are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
ONLY=()
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) ONLY+=("$arg") ;;
  esac
done
OUT=${OUT:-logs/gpu_check}
WORK=${WORK:-/tmp/metacot_gpu_check}
BUDGET=${BUDGET:-480}
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$OUT" "$WORK/rows"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
rm -f "$WORK"/rows/*
# a fresh smoke experiment each time (the RL runs would otherwise resume an earlier call's checkpoints)
((DRY)) || [[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK/runs" "$WORK/smoke_root"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
START=$SECONDS

wanted() {  # wanted <step>: no step names given, or this one is among them
  [[ ${#ONLY[@]} -eq 0 ]] && return 0
  local s
  for s in "${ONLY[@]}"; do [[ $s == "$1" ]] && return 0; done
  return 1
}

row() {  # row <name> <text>: one summary row (rows sort by the second the step started, then name)
  printf '| %s | %s |\n' "$1" "$2" >"$WORK/rows/$(printf %05d "${T0:-$((SECONDS - START))}")_$1"
}

step() {  # step <name> <timeout s> <log lines shown> <command...>: run it with a timeout, log it, record a row
  local name=$1 limit=$2 lines=$3
  shift 3
  wanted "$name" || return 0
  local log="$WORK/$name.log" left=$((BUDGET - (SECONDS - START)))
  if ((DRY)); then
    printf '[dry-run] %s (timeout %ss): %s\n' "$name" "$limit" "$*"
    row "$name" "DRY | | | \`$*\`"
    return 0
  fi
  if ((left < 20)); then
    row "$name" "SKIPPED | | | time budget spent (BUDGET=$BUDGET s)"
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (timeout ${limit}s, at $((SECONDS - START)) s): $*"
  local t0=$SECONDS rc status=PASS detail T0=$((SECONDS - START))
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  ((rc == 124 || rc == 137)) && status=TIMEOUT
  ((rc != 0 && rc != 124 && rc != 137)) && status=FAIL
  detail=$(grep -E "BAR|passed|failed|[0-9] skipped|Error|ratio|MFU|rollout|resuming from" "$log" | tail -n 1 | tr '|' '/' | cut -c1-200)
  row "$name" "$status | $rc | $((SECONDS - t0)) | ${detail:-see $name.log}"
  [[ $status == PASS ]] || lines=$((lines > 25 ? lines : 25))
  ((lines)) && tail -n "$lines" "$log" | cut -c1-300
  echo "=== $name: $status (rc $rc, $((SECONDS - t0)) s)"
}

skip() {  # skip <name> <why>
  wanted "$1" || return 0
  row "$1" "SKIPPED | | | $2"
}

# --- set-up --------------------------------------------------------------------------------------
if [[ -n ${WHEELS:-} ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if ((${#wheels[@]})); then
    step wheels 120 3 "$PY" -m pip install --no-deps --no-index --no-compile --quiet --upgrade \
      --target "$WORK/site" "${wheels[@]}"
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
  else
    skip wheels "no *.whl in WHEELS=$WHEELS"
  fi
fi
step env 60 6 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PY -c 'import torch, transformers, lightning, hydra, omegaconf; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
  \"available\", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"\"); \
  print(\"transformers\", transformers.__version__, \"lightning\", lightning.__version__, \"hydra\", hydra.__version__)'"

# --- phase 1: correctness, concurrently ----------------------------------------------------------
SMOKE=(task=maze task.size=5 search=astar linearization=compact model=tiny data.train=256 data.val=16
  data.test_unseen=16 data.workers=2 data.max_tokens=512 trainer.enable_progress_bar=false trainer.devices=1
  eval.n_problems=8 eval.max_new_tokens=128 eval.num_samples=2 eval.batch_size=16
  sft.max_steps=${SFT_STEPS:-150} sft.warmup_steps=3 sft.val_every_steps=15 sft.batch_tokens=16384
  sft.solve_rate_problems=8 sft.solve_rate_max_new_tokens=128 sft.log_every_n_steps=5 sft.ckpt_every_steps=15)
RL=(stage=rl rl.prompts_per_step=8 rl.max_new_tokens=128 rl.micro_batch_size=16 rl.eval_every=0 rl.table_every=1)
ROOT="$WORK/smoke_root"  # METACOT_ROOT of the smoke runs (sft.* is in the experiment key: same values throughout)
# (150 SFT steps: ~75% sampled solve rate, so RL groups have reward variance; 30 steps solve nothing)

step pytest_sampler 200 0 "$PY" -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider \
  --ignore=tests/gpu/test_fsdp.py --junitxml="$WORK/pytest_sampler.xml" &
step pytest_fsdp 240 0 "$PY" -m pytest -m gpu tests/gpu/test_fsdp.py -q -rA -p no:cacheprovider \
  --junitxml="$WORK/pytest_fsdp.xml" &
(
  export METACOT_ROOT=$ROOT
  # shellcheck disable=SC2086  # SFT_EXTRA: more overrides, word-split on purpose
  step sft_gpu 150 0 "$PY" train.py stage=sft trainer=gpu "${SMOKE[@]}" ${SFT_EXTRA:-} hydra.run.dir="$WORK/runs/sft_gpu"
  step rl_fsdp 150 0 "$PY" train.py "${RL[@]}" rl.steps=${RL_STEPS:-3} trainer=fsdp "${SMOKE[@]}" \
    hydra.run.dir="$WORK/runs/rl_fsdp"
  # the same run, 2 steps longer: resumes from its sharded last.ckpt
  step rl_fsdp_resume 150 0 "$PY" train.py "${RL[@]}" rl.steps=$((${RL_STEPS:-3} + 2)) trainer=fsdp "${SMOKE[@]}" \
    hydra.run.dir="$WORK/runs/rl_fsdp_resume"
) &
wait

# --- phase 2: timing, one at a time --------------------------------------------------------------
step bench_generation 170 40 "$PY" scripts/bench_generation.py --device cuda --json "$OUT/bench_generation.json"
step bench_train 170 30 "$PY" scripts/bench_train.py --device cuda --model base --seq 1024 --compile "${TRAIN_COMPILE:-both}" \
  --steps 10 --warmup 5 --repeats 3 --json "$OUT/bench_train.json"
# RL on one GPU at the GPU experiments' rollout size (conf/experiment/*_gpu.yaml: 64 prompts per step,
# micro-batch 128) from the smoke SFT model: rollouts through the CUDA-graph sampler, and the split
export METACOT_ROOT=$ROOT
step rl_gpu 120 12 "$PY" train.py "${RL[@]}" rl.steps=${RL_GPU_STEPS:-6} trainer=gpu "${SMOKE[@]}" \
  rl.prompts_per_step=64 rl.micro_batch_size=128 hydra.run.dir="$WORK/runs/rl_gpu"
unset METACOT_ROOT
# the baseline of the attention gain: bench_train above uses sft.attention=auto (FlexAttention for packed
# rows on a GPU); the same compiled benchmark with SDPA (a dense block-diagonal mask); runs if time is left
step bench_train_sdpa 150 12 "$PY" scripts/bench_train.py --device cuda --model base --seq 1024 --compile on \
  --attn sdpa --steps 10 --warmup 5 --repeats 3 --json "$OUT/bench_train_sdpa.json"

# --- summary -------------------------------------------------------------------------------------
{
  echo "## gpu_check ($(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START)) s)"
  echo
  echo "| step | status | rc | seconds | detail |"
  echo "|---|---|---|---|---|"
  cat "$WORK"/rows/* 2>/dev/null
} | tee "$OUT/summary.md"
if ((!DRY)); then  # every log, the junit files and the runs' summaries/metrics (no checkpoints)
  (cd "$WORK" && find . -maxdepth 1 \( -name '*.log' -o -name '*.xml' \) -print0 >files.lst &&
    find runs smoke_root -type f \( -name '*.json' -o -name '*.log' -o -name '*.md' -o -name '*.yaml' \
      -o -name 'events.out.tfevents*' \) -size -4M -print0 2>/dev/null >>files.lst
    tar -czf "$OUT/logs.tar.gz" --null -T files.lst 2>/dev/null)
fi
grep -q -E '\| (FAIL|TIMEOUT) \|' "$WORK"/rows/* 2>/dev/null && exit 1
exit 0
