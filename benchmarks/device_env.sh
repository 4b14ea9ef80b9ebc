#!/usr/bin/env bash
# A CPU copy of the GPU machine's Python image, and the device check run in it (issue 22).
#
#   bash benchmarks/device_env.sh [--data RTE_FOLDER]           # build (or reuse) the venv; gpu_check --cpu; the suite
#   bash benchmarks/device_env.sh --short [--data RTE_FOLDER]   # CI: build (or reuse); gpu_check --cpu (minutes)
#   bash benchmarks/device_env.sh --build-only                  # only the venv; prints its python
#
# The venv (DEVICE_ENV_DIR, default .cache/device-env/, ignored by git): Python 3.12 where one is found
# (DEVICE_ENV_PYTHON, python3.12 on PATH, pyenv's 3.12, uv's; else python3, named in the output), and exactly the
# [install] list of benchmarks/device_image.txt: torch 2.11.0 (the CPU build from PyTorch's CPU index when that is
# reachable, else PyPI's build, whose CUDA libraries are installed but unused here), transformers 5.17.0 and the
# image's other packages at the image's versions. transferlab is not installed: it runs from PYTHONPATH=src as on
# the device. A venv whose stamp (the list and the Python) matches is reused. What the image lacks is carried:
# `gpu_check.sh --prepare` writes .carry/ (its wheels, a bf16 MiniLM, RTE); this script runs it when .carry/ is
# missing or stale and --data is given.
#
# Exit: 0 all passed; 1 a step failed; 2 bad input (e.g. no .carry/ and no --data); 75 the venv build failed on
# the network alone (pip's log shows connection errors, timeouts or 5xx answers, and no resolver or build error):
# CI reports that and goes on, since it says nothing about the code.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE=full
DATA=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --short) MODE=short; shift ;;
    --build-only) MODE=build; shift ;;
    --data) [[ $# -ge 2 ]] || { echo "device_env.sh: --data needs a folder (GLUE RTE)" >&2; exit 2; }
            DATA="$2"; shift 2 ;;
    *) echo "device_env.sh: unknown argument $1 (use --short, --build-only, --data FOLDER)" >&2; exit 2 ;;
  esac
done
ENV_DIR="${DEVICE_ENV_DIR:-$ROOT/.cache/device-env}"
MANIFEST="$ROOT/benchmarks/device_image.txt"
LOG="$ENV_DIR.build.log"
NETWORK_RE='ConnectionError|ReadTimeoutError|Max retries exceeded|Temporary failure in name resolution|Connection reset|Network is unreachable|Connection refused|IncompleteRead|ProtocolError|HTTP error 5[0-9][0-9]|50[234] Server Error'
BUILD_RE='ResolutionImpossible|conflicting dependencies|No matching distribution found for|Failed building wheel|is not a supported wheel'

section() { sed -n "/^\[$1\]/,/^\[/p" "$MANIFEST" | grep -v '^\[' | grep -v '^#' | grep -v '^$'; }

pick_python() {
  local c
  for c in "${DEVICE_ENV_PYTHON:-}" python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12 \
           "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    [[ -n "$c" ]] || continue
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then echo "$c"; return; fi
  done
  if command -v uv >/dev/null && c="$(uv python find 3.12 2>/dev/null)"; then echo "$c"; return; fi
  echo python3
}

install_list() {  # the [install] list into the venv; on failure tell a network failure from any other
  local rc=0
  "$ENV_DIR/bin/python" -m pip install --progress-bar off $(section install) >>"$LOG" 2>&1 || rc=$?
  [[ $rc -eq 0 ]] && return 0
  tail -5 "$LOG" >&2
  if grep -qE "$NETWORK_RE" "$LOG" && ! grep -qE "$BUILD_RE" "$LOG"; then
    echo "device_env: the venv build failed on the network alone ($(grep -m1 -oE "$NETWORK_RE" "$LOG")); log: $LOG"
    exit 75
  fi
  echo "device_env: the venv build failed (pip exit $rc); log: $LOG" >&2
  exit 1
}

build() {
  local py="$1"
  rm -rf "$ENV_DIR"
  mkdir -p "$(dirname "$ENV_DIR")"
  "$py" -m venv "$ENV_DIR"
  : >"$LOG"
  # torch's CPU build first (one quick try: no retries); else PyPI's, CUDA libraries and all, pinned
  if "$ENV_DIR/bin/python" -m pip install -q --no-deps --timeout 15 --retries 0 \
       --index-url https://download.pytorch.org/whl/cpu "torch==2.11.0+cpu" >"$LOG.cpu-index" 2>&1; then
    echo "device_env: torch 2.11.0+cpu from PyTorch's CPU index"
  else
    echo "device_env: no torch 2.11.0+cpu from PyTorch's CPU index (here: $(grep -m1 -oE "$NETWORK_RE|ERROR: [^:]{0,50}" \
      "$LOG.cpu-index" || echo 'no answer')); torch 2.11.0 from PyPI (its CUDA libraries come along, unused on the CPU)"
  fi
  install_list
}

extras() {  # installed packages the image does not hold (printed: they could hide a missing import there)
  local image
  image=" $(section image | tr '\n' ' ' | tr 'A-Z_' 'a-z-') "
  "$ENV_DIR/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 | tr 'A-Z_' 'a-z-' \
    | while read -r name; do [[ "$image" == *" $name "* ]] || printf '%s ' "$name"; done
}

PY="$(pick_python)"
PYVER="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
[[ "$PYVER" == 3.12.* ]] || echo "device_env: no Python 3.12 found; using $PY ($PYVER): the image has 3.12"
STAMP="python $PYVER; $(section install | tr '\n' ' ')"
T0=$(date +%s)
if [[ -f "$ENV_DIR/.stamp" && "$(cat "$ENV_DIR/.stamp")" == "$STAMP" ]] \
   && "$ENV_DIR/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  echo "device_env: reusing $ENV_DIR (python $PYVER)"
elif [[ -f "$ENV_DIR/.stamp" ]] && [[ "$("$ENV_DIR/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' \
        2>/dev/null)" == "$PYVER" ]]; then
  echo "device_env: updating $ENV_DIR to the [install] list (python $PYVER); log: $LOG"
  : >"$LOG"
  install_list
else
  echo "device_env: building $ENV_DIR with $PY (python $PYVER); log: $LOG"
  build "$PY"
fi
echo "$STAMP" >"$ENV_DIR/.stamp"
VPY="$ENV_DIR/bin/python"
echo "device_env: $("$VPY" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")'), ready in $(( $(date +%s) - T0 )) s"
EXTRA="$(extras)"
[[ -z "$EXTRA" ]] || echo "device_env: installed here but not in the image list: $EXTRA"
[[ "$MODE" == build ]] && { echo "$VPY"; exit 0; }

# .carry/: prepared when missing or stale and a data folder is given; gpu_check.sh names the problem otherwise
export PYTHON="$VPY"
if ! bash "$ROOT/benchmarks/gpu_check.sh" --check-carry >/dev/null 2>&1; then
  if [[ -n "$DATA" ]]; then
    bash "$ROOT/benchmarks/gpu_check.sh" --prepare --data "$DATA"
  fi
fi
rc=0
OUT_DIR="${OUT:-$ENV_DIR.out}"
rm -rf "$OUT_DIR"; mkdir -p "$OUT_DIR"
if [[ "$MODE" == short ]]; then  # the steps that prove the image imports, matches HF and trains; not the slow rest
  export GC_ONLY="wheels environment equivalence bench-baselines bench-fused-eager study"
fi
OUT="$OUT_DIR" bash "$ROOT/benchmarks/gpu_check.sh" --cpu || rc=$?
echo "device_env: gpu_check.sh --cpu exit $rc (figures: $OUT_DIR)"
[[ $rc -eq 2 ]] && exit 2
if [[ "$MODE" == full ]]; then
  trc=0
  (cd "$ROOT" && TRANSFERLAB_MINILM="$ROOT/.carry/minilm" PYTHONPATH="$ROOT/src" \
     "$VPY" -m pytest -p no:cacheprovider ${PYTEST_ARGS:-}) || trc=$?
  echo "device_env: the default test suite in the device venv: pytest exit $trc"
  [[ $trc -eq 0 ]] || rc=1
fi
exit $(( rc != 0 ))
