#!/usr/bin/env bash
# All GPU verification of transferlab in one call, in under 9 minutes on a fresh H100/H200 with torch
# preinstalled (issue 13). Every figure goes to one file: $OUT/gpu_check.md (or ./gpu_check_out/).
#
#   bash benchmarks/gpu_check.sh [--rte PATH]      # a GPU machine (PATH: GLUE RTE folder, for the study)
#   bash benchmarks/gpu_check.sh --cpu             # the same steps on the CPU with a tiny model, in seconds
#
# Steps (each under its own time limit, so one slow step cannot eat the others' time):
#   1. environment: torch, device, flash-attn present or not (the package runs from PYTHONPATH=src: nothing is
#      installed, so a shared environment is never repointed; torch and transformers must be preinstalled)
#   2. the GPU tests: the fused encoder against Hugging Face on the device, the CUDA tests of the suite
#   3. bench rows of the targets: BERT-base shape (random init, no hub), batch 32, 128 tokens, Trainer,
#      single, S = 1, 8, 20 fast and general (eager), and the fused S = 20 step compiled (regional compile)
#   4. a torch.profiler table of the fused S = 20 step's top kernels
#   5. the real-data study: 2 arms x 20 seeds x 3 epochs of MiniLM on RTE, load to report, wall time
#   6. peak memory per seed (from bench) and what 20 seeds need
set -uo pipefail
MODE=gpu
RTE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) MODE=cpu; shift ;;
    --rte) RTE="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --cpu, --rte PATH)" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$DEST"
FIG="$DEST/gpu_check.md"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
note() { echo "$*" | tee -a "$FIG"; }
step() { note ""; note "## $1 ($(( $(date +%s) - START )) s in)"; }

if [[ "$MODE" == cpu ]]; then
  MODEL=tiny-bert; BATCH=4; SEQ=16; SEEDS=1,2; BIG=2; STEPS=2; WARM=1; DEVICE=cpu; LIMIT=120; STUDY_SEEDS=2
  STUDY_MODEL=tiny-bert; STUDY_LIMITS="max_train_samples: 64, max_eval_samples: 32, "; STUDY_TRAIN="max_steps: 2"
else
  MODEL=bert-base; BATCH=32; SEQ=128; SEEDS=1,8,20; BIG=20; STEPS=10; WARM=3; DEVICE=cuda; LIMIT=240; STUDY_SEEDS=20
  STUDY_MODEL=minilm; STUDY_LIMITS=""; STUDY_TRAIN="epochs: 3"
fi

: > "$FIG"
note "# transferlab gpu_check ($MODE) $(date -u +%Y-%m-%dT%H:%MZ)"
step "1. environment"
$PY - <<'EOF' 2>&1 | tee -a "$FIG"
import torch, transformers
from transferlab.train.fused import flash_varlen_available
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {dev}, "
      f"flash-attn varlen: {'present' if flash_varlen_available() else 'absent (block-per-sequence fallback)'}")
EOF

step "2. tests"
PICK="on_device or (logits_and_gradients and cls)"
(cd "$ROOT" && timeout $LIMIT $PY -m pytest tests/test_fused.py -q -m "not slow" -k "$PICK" -p no:cacheprovider 2>&1 \
   | tail -3) | tee -a "$FIG"
if [[ "$MODE" == gpu ]]; then
  (cd "$ROOT" && timeout $LIMIT $PY -m pytest tests -q -m "not slow" -k "cuda" -p no:cacheprovider 2>&1 | tail -3) \
    | tee -a "$FIG"
fi

step "3. bench rows (eager), $MODEL, batch $BATCH, $SEQ tokens"
BENCH=(-m transferlab.cli bench --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARM"
       --device "$DEVICE")
timeout $((LIMIT + 60)) $PY "${BENCH[@]}" --compile off --seeds "$SEEDS" --rows trainer,single,parallel,fast \
  --json "$DEST/bench.json" 2>&1 | grep -E '^\||bench:|FAILED' | tee -a "$FIG"
note ""
note "fused S=$BIG with train.checkpoint_layers (each layer recomputed in the backward: the memory row):"
timeout $LIMIT $PY "${BENCH[@]}" --compile off --seeds "$BIG" --rows fast --checkpoint-layers \
  --json "$DEST/bench_ckpt.json" 2>&1 | grep -E '^\| fast|FAILED' | tee -a "$FIG"
if [[ "$MODE" == gpu ]]; then  # on the CPU a compile takes minutes: the CPU mode skips this row
  note ""
  note "compiled fused S=$BIG (regional compile of one layer function):"
  timeout $LIMIT $PY "${BENCH[@]}" --compile on --seeds "$BIG" --rows fast --json "$DEST/bench_compiled.json" \
    2>&1 | grep -E '^\| fast|FAILED|compile' | tee -a "$FIG"
fi

step "4. profile of the fused S=$BIG step (top kernels)"
timeout $LIMIT $PY "${BENCH[@]}" --compile off --seeds "$BIG" --rows fast --steps 2 --warmup 2 --profile "$DEST/traces" 2>&1 \
  | sed -n '/^profile of/,/^  fast/p' | head -40 | tee -a "$FIG"

step "5. real-data study: 2 arms x $STUDY_SEEDS seeds ($STUDY_TRAIN), $STUDY_MODEL on RTE"
if [[ -n "$RTE" && -d "$RTE" ]]; then
  STUDY="$DEST/study_rte.yaml"
  cat > "$STUDY" <<EOF
study: gpu-check-rte
base:
  model: {name: $STUDY_MODEL, max_length: 128}
  task: {name: rte, ${STUDY_LIMITS}path: $RTE}
  head: {name: cls, dropout: 0.1}
  optim: {name: adamw, lr: 2.0e-5, weight_decay: 0.01}
  schedule: {name: linear, warmup_ratio: 0.1}
  train: {$STUDY_TRAIN, batch_size: 32, num_evals: 3, save_model: false, device: $DEVICE}
seeds: [$(seq -s, 0 $((STUDY_SEEDS - 1)))]
arms:
  adamw: {optim.name: adamw}
  bertadam: {optim.name: bertadam}
baseline: adamw
EOF
  T0=$(date +%s%N)
  timeout $LIMIT $PY -m transferlab.cli run "$STUDY" --seed-parallel on --quiet --store "$DEST/study.db" >/dev/null 2>"$DEST/study.err" \
    && timeout 60 $PY -m transferlab.cli report --store "$DEST/study.db" --study gpu-check-rte -o "$DEST/report" >/dev/null 2>>"$DEST/study.err"
  RC=$?
  note "study + report: exit $RC, $(( ($(date +%s%N) - T0) / 1000000 )) ms wall (target < 60 s)"
  [[ $RC -ne 0 ]] && tail -3 "$DEST/study.err" | tee -a "$FIG"
else
  note "skipped: no --rte PATH given (the GLUE RTE folder)"
fi

step "6. peak memory per seed"
$PY - "$DEST/bench.json" "$DEST/bench_ckpt.json" <<'EOF' 2>&1 | tee -a "$FIG"
import json, os, sys
for path, how in ((sys.argv[1], "all activations kept"), (sys.argv[2], "train.checkpoint_layers")):
    if not os.path.exists(path):
        print(f"{how}: no figures ({os.path.basename(path)} missing)")
        continue
    rows = json.load(open(path))["rows"]
    for r in rows:
        if r["mem_per_seed_mb"] is not None:
            print(f"{how}, {r['name']}: {r['mem_per_seed_mb']:.0f} MiB per seed")
    fast = [r for r in rows if r["name"].startswith("fast S=") and r["mem_per_seed_mb"]]
    if fast:
        top = max(fast, key=lambda r: r["seeds"])
        need = 20 * top["mem_per_seed_mb"] / 1024
        print(f"{how}: 20 seeds at {top['name']}'s per-seed peak: {need:.1f} GiB (fits 80 GB: {need < 74.5})")
EOF
note ""
note "total: $(( $(date +%s) - START )) s"
