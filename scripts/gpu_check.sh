#!/usr/bin/env bash
# GPU check for an AIR-GAPPED GPU host, run from an unpacked bundle of scripts/gpu_bundle.sh (built elsewhere):
# nothing is downloaded, installed system-wide or compiled. The host needs python3 and its own torch (CUDA);
# the bundle brings the stripped binaries, the CPU ONNX Runtime, the model skeleton, small wheels and fixtures.
# Every stage runs under `timeout` inside one total budget (default 540 s, under the 10 minutes a run gets) and
# records its result or its failure into ONE JSON file, plus a human summary beside it:
#
#   1. verify        the bundle's SHA256SUMS (what came through the transfer)
#   2. wheels        open_clip & co. unpacked for this python3 (no pip, no network)
#   3. model         the full-size ViT-B-32 weights written from the skeleton with the host's torch
#   4. preprocess    the host-side ceiling: decode + resize images/s on all cores, a small JPEG and a 12 MP one
#   5. cpu_server    clip-serve --provider cpu + clip-bench: images/s and texts/s on all cores (the load
#                    generator shares them); the vectors are kept for --cuda-provider parity
#   6. gpu_torch     open_clip ViT-B-32 on the GPU with the host's torch, fp32/tf32/fp16/bf16 at batch 1/32/256,
#                    compute only: the ceiling a CUDA provider should approach. Skipped in a dry run, where a
#                    CPU smoke test of the same code (torch_cpu_smoke) runs instead.
#   7. cuda_server   only with --cuda-provider DIR (onnxruntime-gpu's libraries, brought in parts, see README):
#                    clip-serve --provider cuda, parity with the CPU vectors and clip-bench per batch size
#
#   clip-serve-gpu/scripts/gpu_check.sh [--dry-run] [--budget 540] [--duration 10s] [--batches 1,32,256]
#        [--cuda-provider DIR] [--torch-site DIR] [--keep-work]
#   --dry-run: everything but the GPU stages (automatic when nvidia-smi finds no GPU); says they were skipped.
#   --torch-site: the site-packages holding the host torch's nvidia-* libraries (for --cuda-provider; default:
#   found from python3's torch).
# Result: $OUT/gpu_check.json and $OUT/gpu_check.txt when $OUT is set, else results/ beside the bundle's
# scripts/. Exit status 0 only when no stage failed or timed out (skipped GPU stages in a dry run are fine).
# Random weights: the speed figures stand for the real model, the vectors do not.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
BUDGET=540
DURATION=10s
BATCHES=1,32,256
DRY_RUN=0
CUDA_DIR=""
TORCH_SITE=""
KEEP_WORK=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    --cuda-provider) CUDA_DIR="$(realpath -m "$2")"; shift 2 ;;
    --torch-site) TORCH_SITE="$2"; shift 2 ;;
    --keep-work) KEEP_WORK=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done

for f in bin/clip-serve bin/clip-bench bin/clip-preprocess-bench lib/libonnxruntime.so model/skeleton.json; do
  if [[ ! -e "$ROOT/$f" ]]; then
    echo "gpu_check: $ROOT/$f is missing: run this from an unpacked bundle (scripts/gpu_bundle.sh builds one)" >&2
    exit 2
  fi
done

RESULT_DIR="${OUT:-$ROOT/results}"
mkdir -p "$RESULT_DIR"
RESULT="$RESULT_DIR/gpu_check.json"
SUMMARY="$RESULT_DIR/gpu_check.txt"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # ~700 MB: the filled model
LOGS="$RESULT_DIR/logs"
mkdir -p "$LOGS"
PY="$(command -v python3)"
GC=("$PY" "$ROOT/scripts/gpu_check.py")
NPROC="$(nproc 2>/dev/null || echo 4)"
export ORT_DYLIB_PATH="$ROOT/lib/libonnxruntime.so"

if [[ "$DRY_RUN" -eq 0 ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi finds no GPU: dry run (the GPU stages are skipped)" >&2
  DRY_RUN=1
fi
MODE=gpu
[[ "$DRY_RUN" -eq 1 ]] && MODE=dry-run
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
CPU_FLAGS="$(grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|amx_bf16\|amx_int8' /proc/cpuinfo 2>/dev/null \
  | sort -u | tr '\n' ' ')"
GPU_NAME="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
"${GC[@]}" init --out "$RESULT" --budget "$BUDGET" --meta "mode=$MODE" --meta "work_dir=$WORK" \
  --meta "cpu_model=$CPU_MODEL" --meta "cpu_flags=$CPU_FLAGS" --meta "gpu=${GPU_NAME:-none}" \
  --meta "bundle=$(grep -m1 '"git_head"' "$ROOT/bundle.json" 2>/dev/null | tr -d ' ",' | cut -d: -f2)"

# stage NAME CAP_SECONDS CMD...: run under the budget, record it; returns the command's rc.
stage() {
  local name="$1" cap="$2"; shift 2
  "${GC[@]}" run --out "$RESULT" --name "$name" --cap "$cap" --log "$LOGS/$name.log" -- timeout -k 5 "$cap" "$@"
}
skip() { "${GC[@]}" record --out "$RESULT" --name "$1" --status skipped --note "$2"; }

# 0. the machine (never fails the run)
"${GC[@]}" run --out "$RESULT" --name machine --cap 20 --log "$LOGS/machine.log" -- bash -c \
  'nproc; free -g | head -2; python3 --version; nvidia-smi || echo "no nvidia-smi / no GPU";
   python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda,
     \"available\", torch.cuda.is_available())"' || true

# 1-3. the bundle, the wheels, the model
if [[ -f SHA256SUMS ]]; then
  stage verify 60 sha256sum --quiet -c SHA256SUMS
else
  skip verify "no SHA256SUMS in $ROOT"
fi
PYLIB="$WORK/pylib"
stage wheels 60 "${GC[@]}" wheels --dir "$ROOT/wheels" --target "$PYLIB" --out "$RESULT"
MODEL="$WORK/model"
cp -r "$ROOT/model" "$MODEL"
stage model 120 "$PY" "$ROOT/scripts/model_skeleton.py" fill --model-dir "$MODEL"

# 4. preprocessing ceiling on all cores: the bundled small JPEG and the committed 12 MP one (4000x3000)
SMALL="$ROOT/tests/fixtures/images/chelsea_baseline_420.jpg"
LARGE="$ROOT/tests/fixtures/images/coffee_4000x3000.jpg"
if stage preprocess 60 "$ROOT/bin/clip-preprocess-bench" --threads "$NPROC" --seconds 5 \
  --cfg "$MODEL/visual/preprocess_cfg.json" --json "$WORK/preprocess.json" "$SMALL" "$LARGE"; then
  "${GC[@]}" merge --out "$RESULT" --key preprocess --file "$WORK/preprocess.json" \
    || "${GC[@]}" record --out "$RESULT" --name preprocess --status failed --note "the bench wrote no JSON"
fi

# 5. the server on the CPU, all cores (clip-bench runs on the same cores); the fixtures' vectors only when the
# CUDA provider's run will compare with them
VECTORS=()
[[ -n "$CUDA_DIR" ]] && VECTORS=(--save-vectors "$WORK/cpu_vectors.json")
stage cpu_server 180 "${GC[@]}" server --out "$RESULT" --key cpu --bin "$ROOT/bin/clip-serve" \
  --bench-bin "$ROOT/bin/clip-bench" --model-dir "$MODEL" --provider cpu --intra-op-threads "$NPROC" \
  --images "$ROOT/tests/fixtures/images" --texts "$ROOT/tests/fixtures/texts.json" --bench-image "$SMALL" \
  "${VECTORS[@]}" --concurrency "$(( NPROC > 4 ? NPROC : 4 ))" --items 8 \
  --duration "$DURATION" --limit 170 --server-log "$LOGS/cpu_server.server.log"

# 6. the GPU compute ceiling with the host's torch (or the same code as a CPU smoke test)
if [[ "$DRY_RUN" -eq 0 ]]; then
  stage gpu_torch 240 env PYTHONPATH="$PYLIB" "$PY" "$ROOT/scripts/gpu_torch_bench.py" --device cuda \
    --batches "$BATCHES" --seconds 2 --limit 230 --json "$WORK/gpu_torch.json"
  [[ -f "$WORK/gpu_torch.json" ]] && "${GC[@]}" merge --out "$RESULT" --key gpu_torch --file "$WORK/gpu_torch.json"
else
  skip gpu_torch "dry run: no GPU; unmeasured"
  stage torch_cpu_smoke 120 env PYTHONPATH="$PYLIB" "$PY" "$ROOT/scripts/gpu_torch_bench.py" --device cpu \
    --batches 1 --modes fp32,bf16 --towers image --warmup 1 --min-runs 1 --seconds 0 --limit 110 \
    --json "$WORK/torch_cpu_smoke.json"
  [[ -f "$WORK/torch_cpu_smoke.json" ]] && \
    "${GC[@]}" merge --out "$RESULT" --key torch_cpu_smoke --file "$WORK/torch_cpu_smoke.json"
fi

# 7. the CUDA provider through the server, when its libraries were brought in (README: GPU check)
if [[ -z "$CUDA_DIR" ]]; then
  skip cuda_server "no --cuda-provider DIR (onnxruntime-gpu's libraries are brought separately)"
elif [[ "$DRY_RUN" -eq 1 ]]; then
  skip cuda_server "dry run: no GPU"
else
  if [[ -z "$TORCH_SITE" ]]; then
    TORCH_SITE="$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null)"
  fi
  # onnxruntime-gpu 1.31.1's CUDA provider needs libcublas/libcudart 13 and libcurand 10 (torch's wheels or the
  # host's CUDA 13) and cuDNN 9: missing ones are named by the cuda_libs stage.
  SYS_CUDA=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d "$d" ]] && SYS_CUDA="$SYS_CUDA:$d"
  done
  if LIBS="$("${GC[@]}" libpaths --site-packages "$CUDA_DIR" --site-packages "${TORCH_SITE:-/nonexistent}" \
    --out "$RESULT")"; then
    ORT_GPU="${LIBS%%$'\n'*}"
    LD="${LIBS#*LD_LIBRARY_PATH=}$SYS_CUDA"
    # shellcheck disable=SC2016  # $1 and $out belong to the inner shell
    stage cuda_libs 30 env "LD_LIBRARY_PATH=$LD" bash -c 'out="$(ldd "$1")"; echo "$out"; ! grep "not found" <<<"$out"' \
      _ "$CUDA_DIR/onnxruntime/capi/libonnxruntime_providers_cuda.so"
    stage cuda_server 200 env "$ORT_GPU" "LD_LIBRARY_PATH=$LD" "${GC[@]}" server --out "$RESULT" --key cuda \
      --bin "$ROOT/bin/clip-serve" --bench-bin "$ROOT/bin/clip-bench" --model-dir "$MODEL" --provider cuda \
      --images "$ROOT/tests/fixtures/images" --texts "$ROOT/tests/fixtures/texts.json" --bench-image "$SMALL" \
      --ref "$WORK/cpu_vectors.json" --batches "$BATCHES" --duration 5s --limit 190 \
      --server-log "$LOGS/cuda_server.server.log"
  else
    "${GC[@]}" record --out "$RESULT" --name cuda_server --status failed \
      --note "no libonnxruntime.so* under $CUDA_DIR/onnxruntime/capi"
  fi
fi

"${GC[@]}" finish --out "$RESULT" --summary "$SUMMARY"
rc=$?
echo "gpu_check: wrote $RESULT and $SUMMARY" >&2
if [[ "$KEEP_WORK" -eq 1 ]]; then echo "gpu_check: work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
exit "$rc"
