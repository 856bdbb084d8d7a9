#!/usr/bin/env bash
# The GPU benchmark in one command, for a machine with torch + CUDA, onnx and onnxruntime but
# no network and none of shift's other dependencies. Run from anywhere in the checkout:
#
#     bash benchmarks/gpu_device.sh            # results in $OUT (default /tmp/shift-gpu-out)
#     SHIFT_GPU_VENV=0 PY=.venv/bin/python bash benchmarks/gpu_device.sh --smoke   # try it here
#     BENCH=bench_zoo bash benchmarks/gpu_device.sh --profile gpu   # the zoo's GPU profile
#
# 1. a venv over the system packages (torch stays the image's), the missing packages installed
#    from the wheels in gpu_wheels/ (git-ignored; made by `bash benchmarks/gpu_device.sh
#    --download` on a machine with the package index: cp312 manylinux x86_64, ~6 MB);
# 2. hnswlib built from its sdist there (compiler + pybind11), else the chroma-hnswlib wheel;
# 3. python -m benchmarks.$BENCH (bench_gpu, or bench_zoo) under a time limit; results and logs
#    copied to $OUT.
# The whole script stays under TOTAL_S (default 330 s) seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-gpu_wheels}
# the GPU machine's torch lives in its own venv (/opt/torch/.venv, seen on the H100 image): a venv
# made from the system python would not see it, so install into that one
if [[ -z "${PY:-}" && -x /opt/torch/.venv/bin/python ]]; then
    PY=/opt/torch/.venv/bin/python
    SHIFT_GPU_VENV=${SHIFT_GPU_VENV:-0}
fi
PY=${PY:-python3}
PKGS=(onnx2torch pydantic sqlite-utils pyyaml lark)
BENCH=${BENCH:-bench_gpu}

if [[ "${1:-}" == "--download" ]]; then  # on a machine with the index, not on the GPU machine
    set -e
    mkdir -p "$WHEELS"
    # exactly what `import shift.engine.engine` + the bench need beyond the image's packages
    # (torch, torchvision, onnx, onnxruntime, numpy, pillow), pinned to the versions tested here;
    # --no-deps: onnx2torch's own requirements (torch, torchvision) are the image's
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$WHEELS" \
        onnx2torch==1.5.15 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 typing-extensions==4.16.0 sqlite-utils==4.2.1 \
        sqlite-fts4==1.0.3 click==8.5.1 click-default-group==1.2.4 tabulate==0.10.0 \
        python-dateutil==4.0.0 tzdata==2026.6 pluggy==1.7.0 pyyaml==6.0.4 lark==1.3.1 \
        chroma-hnswlib==0.7.6
    pip download -q --no-deps --no-binary=hnswlib -d "$WHEELS" hnswlib==0.8.0
    du -sh "$WHEELS"; ls "$WHEELS"
    exit 0
fi

OUT=${OUT:-/tmp/shift-gpu-out}
TOTAL_S=${TOTAL_S:-330}
mkdir -p "$OUT"
LOG="$OUT/gpu_device.log"
START=$(date +%s)
log() { echo "[gpu_device +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((TOTAL_S - ($(date +%s) - START))); }

log "python: $($PY -V 2>&1); GPU: $(nvidia-smi -L 2>/dev/null | head -1 || echo none)"
VENV=/tmp/shift-gpu-venv
if [[ "${SHIFT_GPU_VENV:-1}" == 0 ]]; then  # install into $PY's own environment
    log "no venv (SHIFT_GPU_VENV=0): installing into $PY's environment"
elif $PY -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1; then
    PY="$VENV/bin/python"
else
    log "no venv module: installing into the user site"
    export PIP_USER=1 PIP_BREAK_SYSTEM_PACKAGES=1
fi
PIP=("$PY" -m pip install -q --no-index --find-links "$WHEELS" --disable-pip-version-check)
log "installing ${PKGS[*]} from $WHEELS"
"${PIP[@]}" "${PKGS[@]}" >>"$LOG" 2>&1 || log "pip install failed (see the log)"

if ! "$PY" -c "import hnswlib" 2>/dev/null; then
    SDIST=$(ls "$WHEELS"/hnswlib-*.tar.gz 2>/dev/null | head -1)
    log "building hnswlib from ${SDIST:-(no sdist)}"
    if [[ -z "$SDIST" ]] || ! timeout 150 "${PIP[@]}" --no-build-isolation "$SDIST" >>"$LOG" 2>&1
    then
        log "hnswlib build failed: using the chroma-hnswlib wheel (same module, ~1.7x slower)"
        "${PIP[@]}" chroma-hnswlib >>"$LOG" 2>&1 || log "chroma-hnswlib install failed"
    fi
fi
"$PY" - >>"$LOG" 2>&1 <<'EOF' || log "an import failed (see the log): the bench records what it can"
import importlib
for m in ("torch", "torchvision", "onnx", "onnxruntime", "onnx2torch", "pydantic",
          "sqlite_utils", "hnswlib", "shift.engine.engine", "shift.inference.torch.backend"):
    importlib.import_module(m)
    print("import ok:", m)
EOF

BUDGET=$(($(left) - 45))  # the bench stops starting new measurements here; 45 s of slack
log "running $BENCH (budget ${BUDGET} s, hard limit $(($(left) - 10)) s)"
timeout --kill-after=5 $(($(left) - 10)) "$PY" -m "benchmarks.$BENCH" --budget-s "$BUDGET" "$@" \
    2>&1 | tee -a "$LOG"
log "bench exit status ${PIPESTATUS[0]}"
cp benchmarks/results/gpu*.json benchmarks/results/zoo_gpu*.json "$OUT/" 2>/dev/null \
    || log "no results written"
log "done; $OUT: $(ls "$OUT" | tr '\n' ' ')"
