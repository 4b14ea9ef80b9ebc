#!/usr/bin/env bash
# All GPU verification of transferlab in one call on the bare GPU image (issue 22), proven first on the CPU.
#
#   bash benchmarks/gpu_check.sh --prepare --data RTE_FOLDER   # the CPU machine: write .carry/ (ignored by git)
#   bash benchmarks/gpu_check.sh                               # the device (device tool: carry [".carry"])
#   bash benchmarks/gpu_check.sh --cpu                         # the very same steps on the CPU, tiny model
#   bash benchmarks/gpu_check.sh --check-carry                 # exit 0 when .carry/ fits this Python; else 2
#
# --prepare (benchmarks/gpu_check_lib.py): the wheels that transferlab's core needs and the image lacks (for its
# Python 3.12), a bf16 safetensors copy of MiniLM with its tokenizer, RTE's train/dev; checks tree + .carry/
# <= 60 MiB and prints the one-line device command. A run installs the carried wheels into a temporary site folder
# (pip --target, on PYTHONPATH; never into the image), then runs the steps below in priority order, each under
# `timeout -k 5 BUDGET` (the budgets sum to <= 540 s), its exit status and full output recorded. $OUT (default
# ./gpu_check_out) gets 4 files: summary.md (the step table, every step's last lines, the target figures),
# rows.json (every bench row as soon as it is measured, and the study's), profile.txt (the profiler step's output),
# logs.tar.gz (every step's full log). Exit: 0 every step passed, 1 a step failed, 2 bad input (.carry/ missing
# or stale: one line naming it and --prepare). Environment: PYTHON (default python3), OUT, CARRY (default .carry),
# GC_ONLY (step names to run, the others recorded as skipped: device_env.sh --short), GC_BUDGET_SCALE (the budgets'
# multiplier: 1 on the device, 3 in --cpu mode on a 2-core machine), GC_SET (check, the default: the steps above;
# slots: issue 24's targets in a call of their own: wheels, environment, slots-study, slots-bench).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SELF="$ROOT/benchmarks/gpu_check.sh"
LIB="$ROOT/benchmarks/gpu_check_lib.py"
PY="${PYTHON:-python3}"
CARRY="${CARRY:-$ROOT/.carry}"

if [[ "${1:-}" == --step ]]; then   # one step, run by the loop below under its timeout (settings in GC_*)
  cd "$ROOT"
  BENCH=("$PY" -m transferlab.cli bench --model "$GC_MODEL" --batch "$GC_BATCH" --seq "$GC_SEQ" --steps "$GC_STEPS"
         --warmup "$GC_WARM" --device "$GC_DEVICE")
  # timed_study NAME STUDY DRY LABEL TARGET ROW: $GC_WORK/NAME.yaml from load to report (after its dry run when
  # DRY is --dry-run), the wall time printed and stored as a study row; exits with the first failing command's status
  timed_study() {
    local yaml="$GC_WORK/$1.yaml" db="$GC_WORK/$1.db" report="$GC_WORK/$1-report" t0 secs rc=0
    cat "$yaml"
    t0=$(date +%s%N)
    { [[ -z $3 ]] || "$PY" -m transferlab.cli run "$yaml" --seed-parallel on --dry-run; } \
      && "$PY" -m transferlab.cli run "$yaml" --seed-parallel on --store "$db" \
      && "$PY" -m transferlab.cli report --store "$db" --study "$2" -o "$report" \
      || rc=$?
    secs=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "$4: exit $rc, $secs ms wall, load to report ($5)"
    "$PY" "$LIB" study-row --rows "$GC_ROWS" --name "$6" --seconds "$(awk "BEGIN {print $secs / 1000}")" --exit "$rc"
    exit "$rc"
  }
  case "$2" in
    wheels)
      shopt -s nullglob; wheels=("$CARRY"/wheels/*.whl)
      echo "carried wheels: ${#wheels[@]} -> $GC_SITE"
      [[ ${#wheels[@]} -eq 0 ]] || "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$GC_SITE" "${wheels[@]}" ;;
    environment)
      "$PY" "$LIB" environment
      command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm \
        --format=csv || true ;;
    equivalence)
      "$PY" -m pytest tests/test_fused.py -q -m "not slow" -p no:cacheprovider \
        -k "fused_on_device or (logits_and_gradients and cls)" ;;
    bench-baselines)
      "${BENCH[@]}" --compile off --rows trainer,single --json "$GC_ROWS" --append ;;
    bench-fused-eager)
      "${BENCH[@]}" --compile off --rows fast --seeds "$GC_SEEDS" --json "$GC_ROWS" --append ;;
    bench-fused-compiled)
      "${BENCH[@]}" --compile on --rows fast --seeds "$GC_SEEDS" --json "$GC_ROWS" --append ;;
    study)
      cat >"$GC_WORK/study.yaml" <<EOF
study: gpu-check-rte
base:
  model: {name: $GC_STUDY_MODEL, max_length: 128}
  task: {name: rte, ${GC_STUDY_LIMITS}path: $CARRY/rte}
  head: {name: cls, dropout: 0.1}
  optim: {name: adamw, lr: 2.0e-5, weight_decay: 0.01}
  schedule: {name: linear, warmup_ratio: 0.1}
  train: {$GC_STUDY_TRAIN, batch_size: 32, num_evals: 3, save_model: false, device: $GC_DEVICE}
seeds: [$(seq -s, 0 $((GC_STUDY_SEEDS - 1)))]
arms:
  adamw: {optim.name: adamw}
  bertadam: {optim.name: bertadam}
baseline: adamw
EOF
      timed_study study gpu-check-rte "" "study + report" "target < 60 s on the GPU" \
        "study rte 2 arms x $GC_STUDY_SEEDS seeds ($GC_STUDY_TRAIN)" ;;
    slots-study)  # issue 24's target: 4 arms x 10 seeds of MiniLM on RTE, per-arm LR search, < 3 min load to report
      cat >"$GC_WORK/slots.yaml" <<EOF
study: gpu-slots-rte
base:
  model: {name: $GC_STUDY_MODEL, max_length: 128}
  task: {name: rte, ${GC_STUDY_LIMITS}path: $CARRY/rte}
  head: {name: cls, dropout: 0.1}
  optim: {name: adamw, weight_decay: 0.01}
  schedule: {name: linear, warmup_ratio: 0.1}
  train: {$GC_STUDY_TRAIN, batch_size: 32, num_evals: 3, save_model: false, device: $GC_DEVICE}
seeds: [$(seq -s, 0 $((GC_SLOTS_SEEDS - 1)))]
lr_search: {grid: [1.0e-5, 3.0e-5, 1.0e-4], seeds: [100]}
arms:
  adamw: {optim.name: adamw}
  bertadam: {optim.name: bertadam}
  reinit-top2: {init.reinit_layers: 2}
  layer-decay: {optim.layer_decay: 0.9}
baseline: adamw
EOF
      timed_study slots gpu-slots-rte --dry-run "slots study + report" "target < 180 s on one H200" \
        "slots study rte 4 arms x $GC_SLOTS_SEEDS seeds + lr search" ;;
    slots-bench)  # the per-slot optimizer's and the dropout streams' price against seeds of one recipe
      "${BENCH[@]}" --compile off --rows parallel,slots,slots-dropout --seeds "$GC_SEEDS" --json "$GC_ROWS" --append ;;
    profile)
      "${BENCH[@]}" --compile off --rows fast --seeds "$GC_SEEDS" --steps 2 --warmup 2 --profile "$GC_WORK/traces" ;;
    memory)
      "${BENCH[@]}" --compile off --rows fast --seeds "$GC_SEEDS" --steps 2 --checkpoint-layers --json "$GC_ROWS" --append
      "$PY" "$LIB" memory --rows "$GC_ROWS" ;;
    *) echo "gpu_check.sh: unknown step $2" >&2; exit 2 ;;
  esac
  exit 0
fi

MODE=gpu
DATA=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) MODE=cpu; shift ;;
    --prepare) MODE=prepare; shift ;;
    --check-carry) MODE=check; shift ;;
    --data) [[ $# -ge 2 ]] || { echo "gpu_check.sh: --data needs the GLUE RTE folder" >&2; exit 2; }
            DATA="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --prepare --data FOLDER, --cpu, --check-carry)" >&2; exit 2 ;;
  esac
done
if [[ "$MODE" == prepare ]]; then
  [[ -n "$DATA" ]] || { echo "gpu_check.sh --prepare: --data FOLDER is required (the GLUE RTE folder)" >&2; exit 2; }
  exec "$PY" "$LIB" prepare --data "$DATA" --carry "$CARRY"
fi
command -v "$PY" >/dev/null || { echo "gpu_check.sh: PYTHON=$PY is not a command" >&2; exit 2; }
"$PY" "$LIB" check-carry --carry "$CARRY" || exit 2
[[ "$MODE" == check ]] && exit 0

DEST="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$DEST"
rm -f "$DEST/summary.md" "$DEST/rows.json" "$DEST/profile.txt" "$DEST/logs.tar.gz"
GC_WORK="$(mktemp -d)"
trap 'rm -rf "$GC_WORK"' EXIT
mkdir -p "$GC_WORK/logs" "$GC_WORK/site"
export GC_WORK GC_SITE="$GC_WORK/site" GC_ROWS="$DEST/rows.json" PYTHON="$PY" CARRY
export PYTHONPATH="$ROOT/src:$GC_WORK/site" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
       TRANSFERLAB_MINILM="$CARRY/minilm" TRANSFORMERS_VERBOSITY=error
if [[ "$MODE" == cpu ]]; then
  export GC_MODEL=tiny-bert GC_BATCH=4 GC_SEQ=16 GC_SEEDS=2 GC_STEPS=2 GC_WARM=1 GC_DEVICE=cpu GC_STUDY_SEEDS=2 \
         GC_STUDY_MODEL=tiny-bert GC_STUDY_LIMITS="max_train_samples: 64, max_eval_samples: 32, " GC_STUDY_TRAIN="max_steps: 2" \
         GC_SLOTS_SEEDS=2
else
  export GC_MODEL=bert-base GC_BATCH=32 GC_SEQ=128 GC_SEEDS=20 GC_STEPS=10 GC_WARM=3 GC_DEVICE=cuda GC_STUDY_SEEDS=20 \
         GC_STUDY_MODEL=minilm GC_STUDY_LIMITS="" GC_STUDY_TRAIN="epochs: 3" \
         GC_SLOTS_SEEDS=10
fi

# budgets as written below on the device; the CPU mode (2 shared cores) multiplies them by GC_BUDGET_SCALE (3)
SCALE="${GC_BUDGET_SCALE:-$([[ "$MODE" == cpu ]] && echo 3 || echo 1)}"
START=$(date +%s)
STEP_NO=0
FAILED=0
: >"$GC_WORK/status.tsv"
run_step() {  # NAME BUDGET_S: the step under `timeout -k 5`, its output to the console and its log, its status kept
  local name="$1" budget=$(( $2 * SCALE )) rc t0 log
  STEP_NO=$((STEP_NO + 1))
  if [[ -n "${GC_ONLY:-}" && " $GC_ONLY " != *" $name "* ]]; then
    printf '%s\t%s\t0\t-\tskipped\n' "$name" "$budget" >>"$GC_WORK/status.tsv"
    return 0
  fi
  log="$GC_WORK/logs/$(printf '%02d' "$STEP_NO")-$name.log"
  echo "=== step $STEP_NO: $name (budget $budget s, $(( $(date +%s) - START )) s in) ==="
  t0=$(date +%s)
  set +e
  timeout -k 5 "$budget" bash "$SELF" --step "$name" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  local status=passed
  [[ $rc -eq 0 ]] || { status=failed; FAILED=$((FAILED + 1)); }
  [[ $rc -eq 124 || $rc -eq 137 ]] && status="timed out"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$budget" "$(( $(date +%s) - t0 ))" "$rc" "$status" >>"$GC_WORK/status.tsv"
  echo "=== step $name: $status (exit $rc, $(( $(date +%s) - t0 )) s) ==="
}
# priority order; budgets in seconds (each set's sum <= 540: tests/test_gpu_check.py parses these lines).
# GC_SET=slots: issue 24's GPU targets, a device call of their own after the check.
if [[ "${GC_SET:-check}" == check ]]; then
run_step wheels 15
run_step environment 30
run_step equivalence 60
run_step bench-baselines 70
run_step bench-fused-eager 50
run_step bench-fused-compiled 100
run_step study 110
run_step profile 40
run_step memory 40
else
run_step wheels 15
run_step environment 30
run_step slots-study 300
run_step slots-bench 150
fi

{
  echo "# transferlab gpu_check ($MODE) $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - START )) s"
  echo
  echo "| step | budget s | took s | exit | status |"
  echo "| --- | ---: | ---: | ---: | --- |"
  while IFS=$'\t' read -r name budget took rc status; do echo "| $name | $budget | $took | $rc | $status |"; done \
    <"$GC_WORK/status.tsv"
  echo
  echo "$FAILED of $STEP_NO steps failed${GC_ONLY:+ (run: $GC_ONLY)}."
  echo
  echo "## figures"
  echo '```'
  "$PY" "$LIB" figures --rows "$GC_ROWS" 2>&1 || echo "(figures: exit $?)"
  echo '```'
  for log in "$GC_WORK"/logs/*.log; do
    echo
    echo "## $(basename "$log" .log): last lines (full log in logs.tar.gz)"
    echo '```'
    tail -n 30 "$log"
    echo '```'
  done
} >"$DEST/summary.md"
[[ ! -f "$GC_WORK/logs/08-profile.log" ]] || cp "$GC_WORK/logs/08-profile.log" "$DEST/profile.txt"
tar -czf "$DEST/logs.tar.gz" -C "$GC_WORK" logs
sed -n '1,/^## figures/p' "$DEST/summary.md"
"$PY" "$LIB" figures --rows "$GC_ROWS" 2>&1 || true
echo "gpu_check ($MODE): $FAILED of $STEP_NO steps failed${GC_ONLY:+ (run: $GC_ONLY)}; figures in $DEST (summary.md, rows.json, profile.txt, logs.tar.gz)"
[[ $FAILED -eq 0 ]]
