#!/usr/bin/env bash
# GPU check, unattended, on a fresh Linux machine with an NVIDIA GPU, a copy of this working tree, cargo, python3,
# and network access to PyPI and crates.io only. Every stage runs under `timeout` inside one total budget and
# records its result (or its failure) into ONE JSON file; a failing stage never stops the script.
#
#   1. in parallel: a venv with torch + open_clip (scripts/requirements-export.txt), a venv with onnxruntime-gpu
#      (+ its CUDA/cuDNN wheels), TensorRT's wheels and grpcio-tools, and cargo build --release --features
#      cuda,tensorrt
#   2. export the full-size ViT-B-32 architecture with random weights (scripts/export_onnx.py --random-init)
#   3. clip-serve --provider cpu on the committed photographs and texts (the reference vectors), then
#      --provider cuda and --provider tensorrt --trt-fp16 --trt-engine-cache-dir: cosine per item vs CPU,
#      through the gRPC API (Python client generated at run time from proto/clip/v1/clip.proto)
#   4. throughput: clip-bench against --max-batch-size 1/32/256 (CUDA; TensorRT at 32, more if time is left)
#   5. engine-only: onnxruntime session.run loop at fixed batch 1/32/256 (CUDA, then TensorRT fp16)
#   6. optional: the fp16 accuracy gate on CUDA (scripts/quantize.py --fp16), if time is left
#
#   scripts/gpu_check.sh [--budget 420] [--model-dir DIR] [--duration 5s] [--batches 1,32,256] [--skip-build]
#                        [--ort-version 1.32.0] [--no-trt] [--keep-work] [--venv DIR] [--bin-dir DIR]
#   --venv DIR: use that existing venv (no installs); --bin-dir DIR: clip-serve/clip-bench from there (with
#   --skip-build). Both are for re-runs and for testing the script itself on a machine without a GPU.
# Result: $OUT/gpu_check.json when $OUT is set, else bench-results/gpu_check.json. Random weights: the speed
# figures stand for the real model, the vectors do not (parity is GPU vs CPU on the same weights).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUDGET=420
MODEL=""
DURATION=5s
BATCHES=1,32,256
SKIP_BUILD=0
ORT_VERSION="${CLIP_SERVE_ORT_VERSION:-1.32.0}"
NO_TRT=0
KEEP_WORK=0
USE_VENV=""
BIN_DIR="$ROOT/target/release"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --model-dir) MODEL="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --ort-version) ORT_VERSION="$2"; shift 2 ;;
    --no-trt) NO_TRT=1; shift ;;
    --keep-work) KEEP_WORK=1; shift ;;
    --venv) USE_VENV="$2"; shift 2 ;;
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [[ -n "${OUT:-}" ]]; then RESULT="$OUT/gpu_check.json"; else RESULT="$ROOT/bench-results/gpu_check.json"; fi
mkdir -p "$(dirname "$RESULT")"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"
VENV="${USE_VENV:-$WORK/venv}"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
SYSPY="$(command -v python3)"
GC=("$SYSPY" "$ROOT/scripts/gpu_check.py")
NPROC="$(nproc 2>/dev/null || echo 4)"

"${GC[@]}" init --out "$RESULT" --budget "$BUDGET" --meta "work_dir=$WORK" --meta "ort_version=$ORT_VERSION" \
  --meta "git_head=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo none)"
# stage NAME CAP_SECONDS CMD...: run under the budget, record it; returns the command's rc.
stage() { local name="$1" cap="$2"; shift 2; "${GC[@]}" run --out "$RESULT" --name "$name" --cap "$cap" --log "$LOGS/$name.log" -- "$@"; }

# 0. the machine
stage nvidia_smi 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
stage toolchain 20 bash -c 'cargo --version; rustc --version; python3 --version; nproc; free -g | head -2'

# 1. two venvs and the build, in parallel. The export venv is scripts/requirements-export.txt as it is (torch,
# open_clip, CPU onnxruntime); the GPU venv has onnxruntime-gpu with its CUDA/cuDNN wheels, TensorRT's libraries
# and the gRPC client, kept apart so torch's CUDA wheels and onnxruntime-gpu's cannot overwrite each other's
# libraries (nvidia/cudnn/lib is shared by the cu12 and cu13 wheels). A .pth file lets the GPU venv import
# torch/open_clip from the export venv (after its own onnxruntime and numpy) for the fp16 gate.
EXPORT_VENV="${USE_VENV:-$WORK/venv-export}"
GPU_VENV="${USE_VENV:-$WORK/venv-gpu}"
if [[ -z "$USE_VENV" ]]; then
  stage venv_export 300 bash -c "set -e; '$SYSPY' -m venv '$EXPORT_VENV';
    '$EXPORT_VENV/bin/pip' install -q --disable-pip-version-check -r '$ROOT/scripts/requirements-export.txt'" &
  P1=$!
  trt_pkg=""
  [[ "$NO_TRT" -eq 0 ]] && trt_pkg="'tensorrt-cu12-libs>=10,<11'"  # quoted for the inner bash
  numpy_pin="$(grep '^numpy==' "$ROOT/scripts/requirements-export.txt" || echo numpy)"
  stage venv_gpu 300 bash -c "set -e; '$SYSPY' -m venv '$GPU_VENV';
    '$GPU_VENV/bin/pip' install -q --disable-pip-version-check 'onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION' \
      grpcio grpcio-tools protobuf '$numpy_pin' $trt_pkg;
    '$GPU_VENV/bin/python' -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())'" &
  P2=$!
else
  "${GC[@]}" record --out "$RESULT" --name venv --status skipped --note="--venv $USE_VENV"
  P1=""; P2=""
fi
if [[ "$SKIP_BUILD" -eq 0 ]]; then
  stage build 330 cargo build --release --locked --features cuda,tensorrt &
  P3=$!
else
  "${GC[@]}" record --out "$RESULT" --name build --status skipped --note="--skip-build"
  P3=""
fi
for p in $P1 $P2 $P3; do wait "$p" || true; done

PY="$GPU_VENV/bin/python"
EXPORT_PY="$EXPORT_VENV/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo "")"
EXPORT_SITE="$("$EXPORT_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo "")"
if [[ -z "$USE_VENV" && -n "$SITE" && -n "$EXPORT_SITE" ]]; then echo "$EXPORT_SITE" >"$SITE/zz_export_venv.pth"; fi
if [[ -n "$SITE" ]] && eval "$("${GC[@]}" libpaths --site-packages "$SITE" --out "$RESULT" | sed 's/^/export /')"; then
  :
else
  "${GC[@]}" record --out "$RESULT" --name libpaths --status failed --note="no onnxruntime library in $GPU_VENV"
fi

# 2. the model
if [[ -z "$MODEL" ]]; then
  MODEL="$WORK/model"
  stage export 240 "$EXPORT_PY" scripts/export_onnx.py --random-init --out "$MODEL" --threads "$NPROC"
fi

BIN="$BIN_DIR/clip-serve"
BENCH="$BIN_DIR/clip-bench"
IMG="$ROOT/tests/fixtures/images/chelsea_baseline_420.jpg"
TRT_CACHE="$WORK/trt-cache"
common=(--out "$RESULT" --bin "$BIN" --bench-bin "$BENCH" --model-dir "$MODEL" --bench-image "$IMG" --duration "$DURATION")

# 3-4. parity and throughput, by provider (each `provider` call bounds itself with --limit, `timeout` backs it)
left() { "${GC[@]}" left --out "$RESULT"; }
bounded() { # NAME CAP CMD... with the budget's share passed as --limit
  local name="$1" cap="$2"; shift 2
  local l; l="$(left)"; local lim=$(( cap < l - 15 ? cap : l - 15 ))
  if (( lim < 20 )); then "${GC[@]}" record --out "$RESULT" --name "$name" --status skipped --note "budget"; return 125; fi
  stage "$name" "$((lim + 20))" "$@" --limit "$lim"
}
bounded cpu_reference 60 "$PY" scripts/gpu_check.py provider "${common[@]}" --provider cpu --key cpu \
  --save-vectors "$WORK/cpu_vectors.json" --intra-op-threads "$NPROC" --batches ""
bounded cuda 120 "$PY" scripts/gpu_check.py provider "${common[@]}" --provider cuda --ref "$WORK/cpu_vectors.json" \
  --min-cosine 0.999 --batches "$BATCHES"
if [[ "$NO_TRT" -eq 0 ]]; then
  # One engine build (per tower) serves parity and the batch-32 sweep; other batch sizes build their own.
  bounded tensorrt_fp16 200 "$PY" scripts/gpu_check.py provider "${common[@]}" --provider tensorrt --trt-fp16 \
    --trt-engine-cache-dir "$TRT_CACHE" --ref "$WORK/cpu_vectors.json" --min-cosine 0.99 --batches 32 \
    --key tensorrt_fp16
fi

# 5. engine only
bounded engine_cuda 40 "$PY" scripts/gpu_check.py engine-bench --out "$RESULT" --key cuda --model-dir "$MODEL" \
  --providers cuda --batches "$BATCHES" --seconds 2
if [[ "$NO_TRT" -eq 0 ]]; then
  bounded engine_tensorrt_fp16 120 "$PY" scripts/gpu_check.py engine-bench --out "$RESULT" --key tensorrt_fp16 \
    --model-dir "$MODEL" --providers tensorrt --trt-fp16 --trt-cache "$WORK/trt-py" --batches "$BATCHES" --seconds 2
  bounded tensorrt_fp16_sweep 120 "$PY" scripts/gpu_check.py provider "${common[@]}" --provider tensorrt --trt-fp16 \
    --trt-engine-cache-dir "$TRT_CACHE" --batches 1,256 --key tensorrt_fp16_more
fi

# 6. the fp16 gate on CUDA (random weights: says nothing about the real checkpoint's accuracy)
stage fp16_gate_cuda 90 "$PY" scripts/quantize.py --model-dir "$MODEL" --fp16 --fp16-provider cuda --threads "$NPROC"
[[ -f "$MODEL/quantization.json" ]] && "${GC[@]}" merge --out "$RESULT" --key fp16_gate --file "$MODEL/quantization.json"

"${GC[@]}" finish --out "$RESULT"
echo "gpu_check: wrote $RESULT" >&2
[[ "$KEEP_WORK" -eq 1 ]] || rm -rf "$WORK/venv-export" "$WORK/venv-gpu" "$WORK/trt-cache" "$WORK/trt-py"
exit 0
