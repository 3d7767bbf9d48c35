#!/usr/bin/env bash
# Build, HERE (with network to PyPI), what scripts/gpu_check.sh needs on an air-gapped GPU host that accepts one
# transfer of at most 64 MiB and has CUDA 13, cuDNN 9, PyTorch 2.11 and python3, but no ONNX Runtime GPU build,
# no open_clip, no cargo and no network. One tarball, clip-serve-gpu/ inside:
#
#   bin/        clip-serve, clip-bench and clip-preprocess-bench, release builds, stripped
#   lib/        the CPU ONNX Runtime of scripts/setup.sh (.cache/onnxruntime/lib)
#   wheels/     open_clip_torch and the small packages it imports that torch does not bring (ftfy, wcwidth, tqdm;
#               regex as binary wheels for CPython 3.10-3.14, manylinux x86_64); `pip download --no-deps`
#   model/      the full-size ViT-B-32 (random init) as a skeleton: the ONNX graphs without their ~600 MB of
#               weights, which the host writes with its own torch (scripts/model_skeleton.py fill)
#   tests/fixtures/images, tests/fixtures/texts.json, scripts/ (gpu_check.sh and its Python halves)
#   SHA256SUMS, bundle.json   checksums and provenance (git commit, versions, sizes)
#
#   scripts/gpu_bundle.sh [--out FILE] [--bin-dir DIR] [--preprocess-bin FILE] [--model-dir DIR]
#                         [--export-python PY] [--max-mib 64] [--no-build]
#     --bin-dir: clip-serve, clip-bench and clip-preprocess-bench from there (default target/release, built
#       when missing unless --no-build); --preprocess-bin: that one from elsewhere; --model-dir: a full-size
#       export of scripts/export_onnx.py (default: exported now with
#       --export-python, default .cache/export-venv/bin/python, which also needs onnx for the skeleton).
#   scripts/gpu_bundle.sh --check FILE [--max-mib 64]
#     the size and checksum checks alone, on an existing tarball (no build; scripts/tests runs it).
#   scripts/gpu_bundle.sh --cuda-provider-parts [--ort-gpu-version 1.31.1] [--part-mib 60] [--out-dir DIR]
#     onnxruntime-gpu's libraries (the CUDA provider alone is ~284 MB) as a .tar.gz split into parts of at most
#     --part-mib MiB plus ort-gpu-<version>.SHA256SUMS, for several transfers; README "GPU check" says how to join
#     them on the host and run gpu_check.sh --cuda-provider.
# Fails loudly (exit 1, the tarball removed) when the bundle is over --max-mib MiB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT_FILE="$ROOT/bench-results/clip-serve-gpu-bundle.tar.gz"
BIN_DIR="$ROOT/target/release"
PRE_BIN=""
MODEL_DIR=""
EXPORT_PY="$ROOT/.cache/export-venv/bin/python"
MAX_MIB=64
NO_BUILD=0
CHECK=""
PARTS=0
ORT_GPU_VERSION=1.31.1
PART_MIB=60
PARTS_DIR="$ROOT/bench-results/ort-gpu-parts"
PYTHONS=(3.10 3.11 3.12 3.13 3.14)
# Pinned like scripts/requirements-export.txt (tqdm and wcwidth: the versions that file's resolve installs).
WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 tqdm==4.70.1)
# regex has no CPython 3.10 wheel after 2026.9.29; the newest otherwise.
regex_for() { if [[ "$1" == 3.10 ]]; then echo regex==2026.9.29; else echo regex==2026.11.19; fi; }
PLATFORM_ARGS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT_FILE="$(realpath -m "$2")"; shift 2 ;;
    --bin-dir) BIN_DIR="$(realpath -m "$2")"; shift 2 ;;
    --preprocess-bin) PRE_BIN="$(realpath -m "$2")"; shift 2 ;;
    --model-dir) MODEL_DIR="$(realpath -m "$2")"; shift 2 ;;
    --export-python) EXPORT_PY="$2"; shift 2 ;;
    --max-mib) MAX_MIB="$2"; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --check) CHECK="$(realpath -m "$2")"; shift 2 ;;
    --cuda-provider-parts) PARTS=1; shift ;;
    --ort-gpu-version) ORT_GPU_VERSION="$2"; shift 2 ;;
    --part-mib) PART_MIB="$2"; shift 2 ;;
    --out-dir) PARTS_DIR="$(realpath -m "$2")"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_bundle: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { printf 'gpu_bundle: %s\n' "$*" >&2; }
die() { printf 'gpu_bundle: ERROR: %s\n' "$*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# check_bundle FILE: at most MAX_MIB MiB, and every file inside matches SHA256SUMS (returns 1 otherwise).
check_bundle() {
  local file="$1" bytes tmp rc=0
  [[ -f "$file" ]] || { log "ERROR: $file: no such file"; return 1; }
  bytes="$(stat -c %s "$file")"
  if (( bytes > MAX_MIB * 1048576 )); then
    log "ERROR: $file is $(mib "$bytes") MiB, over the ${MAX_MIB} MiB a transfer allows"
    return 1
  fi
  tmp="$(mktemp -d)"
  if ! tar -xzf "$file" -C "$tmp"; then
    log "ERROR: $file: not a readable .tar.gz"; rc=1
  elif [[ ! -f "$tmp/clip-serve-gpu/SHA256SUMS" ]]; then
    log "ERROR: $file has no clip-serve-gpu/SHA256SUMS"; rc=1
  elif ! (cd "$tmp/clip-serve-gpu" && sha256sum --quiet -c SHA256SUMS); then
    log "ERROR: $file: checksums differ"; rc=1
  fi
  rm -rf "$tmp"
  [[ "$rc" -eq 0 ]] && log "$file: $(mib "$bytes") MiB of ${MAX_MIB}, checksums ok"
  return "$rc"
}

if [[ -n "$CHECK" ]]; then
  check_bundle "$CHECK" || exit 1
  exit 0
fi

WORK="$(mktemp -d /tmp/gpu_bundle.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

if [[ "$PARTS" -eq 1 ]]; then
  # onnxruntime-gpu's native libraries, in parts. The wheel's Python tag does not matter for the .so files.
  log "fetching onnxruntime-gpu==$ORT_GPU_VERSION from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORM_ARGS[@]}" -d "$WORK/wheel" "onnxruntime-gpu==$ORT_GPU_VERSION"
  mkdir -p "$WORK/stage" "$PARTS_DIR"
  python3 - "$WORK"/wheel/onnxruntime_gpu-*.whl "$WORK/stage" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1:3]
with zipfile.ZipFile(wheel) as z:
    # The native libraries only: clip-serve loads libonnxruntime.so itself (not the Python binding's .so).
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/lib") and ".so" in os.path.basename(n)]
    if not any("providers_cuda" in n for n in names):
        sys.exit(f"{wheel}: no onnxruntime/capi/libonnxruntime_providers_cuda.so")
    for n in names:
        z.extract(n, out)
PY
  name="ort-gpu-$ORT_GPU_VERSION"
  rm -f "$PARTS_DIR/$name".*
  tar -C "$WORK/stage" -czf "$WORK/$name.tar.gz" onnxruntime
  (cd "$WORK" && split -b "${PART_MIB}M" -d -a 2 "$name.tar.gz" "$PARTS_DIR/$name.tar.gz.part")
  (cd "$WORK" && sha256sum "$name.tar.gz" >"$PARTS_DIR/$name.SHA256SUMS")
  (cd "$PARTS_DIR" && sha256sum "$name".tar.gz.part* >>"$name.SHA256SUMS")
  (cd "$WORK/stage" && find onnxruntime -type f -printf '%s %p\n') >"$PARTS_DIR/$name.contents"
  for p in "$PARTS_DIR/$name".tar.gz.part*; do
    (( $(stat -c %s "$p") <= 64 * 1048576 )) || die "$p is over 64 MiB"
  done
  ls -l "$PARTS_DIR" >&2
  log "carry every $name.tar.gz.part* and $name.SHA256SUMS (one transfer each); see README, GPU check"
  exit 0
fi

# 1. binaries
[[ -n "$PRE_BIN" ]] || PRE_BIN="$BIN_DIR/clip-preprocess-bench"
if [[ ! -x "$BIN_DIR/clip-serve" || ! -x "$BIN_DIR/clip-bench" || ! -x "$PRE_BIN" ]]; then
  [[ "$NO_BUILD" -eq 0 ]] || die "no clip-serve, clip-bench or clip-preprocess-bench in $BIN_DIR (--no-build)"
  log "cargo build --release --bins"
  cargo build --release --locked --bins
fi
[[ -x "$PRE_BIN" ]] || die "preprocess bench binary not found ($PRE_BIN)"

B="$WORK/clip-serve-gpu"
mkdir -p "$B/bin" "$B/lib" "$B/wheels" "$B/scripts" "$B/tests/fixtures"
strip -o "$B/bin/clip-serve" "$BIN_DIR/clip-serve"
strip -o "$B/bin/clip-bench" "$BIN_DIR/clip-bench"
strip -o "$B/bin/clip-preprocess-bench" "$PRE_BIN"

# 2. ONNX Runtime (CPU), as scripts/setup.sh installs it
ORT_LIB="$(readlink -f "$ROOT/.cache/onnxruntime/lib/libonnxruntime.so" || true)"
[[ -f "$ORT_LIB" ]] || die "no .cache/onnxruntime/lib/libonnxruntime.so: run scripts/setup.sh"
cp "$ORT_LIB" "$B/lib/"
ln -s "$(basename "$ORT_LIB")" "$B/lib/libonnxruntime.so"

# 3. wheels (cached in .cache/gpu-bundle-wheels: pip download skips what is there)
WHEEL_CACHE="$ROOT/.cache/gpu-bundle-wheels"
mkdir -p "$WHEEL_CACHE"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEEL_CACHE" "${WHEELS[@]}"
for w in "${WHEELS[@]}"; do
  n="${w%%==*}"; ver="${w#*==}"
  compgen -G "$WHEEL_CACHE/${n}-${ver}-*.whl" >/dev/null || die "no wheel for $w in $WHEEL_CACHE"
  cp "$WHEEL_CACHE/${n}-${ver}-"*.whl "$B/wheels/"
done
for v in "${PYTHONS[@]}"; do
  r="$(regex_for "$v")"; tag="cp${v/./}"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
    --abi "$tag" "${PLATFORM_ARGS[@]}" -d "$WHEEL_CACHE" "$r"
  compgen -G "$WHEEL_CACHE/regex-${r#*==}-${tag}-${tag}-*.whl" >/dev/null || die "no $r wheel for CPython $v"
  cp "$WHEEL_CACHE/regex-${r#*==}-${tag}-${tag}-"*.whl "$B/wheels/"
done

# 4. the model, as a skeleton
if [[ -z "$MODEL_DIR" ]]; then
  [[ -x "$EXPORT_PY" ]] || die "no --model-dir and no $EXPORT_PY to export one (scripts/requirements-export.txt)"
  log "exporting the full-size ViT-B-32 (random init) with $EXPORT_PY"
  MODEL_DIR="$WORK/full-model"
  "$EXPORT_PY" scripts/export_onnx.py --random-init --no-verify --out "$MODEL_DIR" --threads "$(nproc)" >&2
fi
"$EXPORT_PY" scripts/model_skeleton.py strip --model-dir "$MODEL_DIR" --out "$B/model" >&2

# 5. fixtures and scripts
cp -r tests/fixtures/images "$B/tests/fixtures/images"
cp tests/fixtures/texts.json "$B/tests/fixtures/"
cp scripts/gpu_check.sh scripts/gpu_check.py scripts/gpu_torch_bench.py scripts/model_skeleton.py "$B/scripts/"

# 6. provenance and checksums
python3 - "$B" <<PY
import json, os, sys
b = sys.argv[1]
files = {}
for d, _, names in os.walk(b):
    for n in names:
        p = os.path.join(d, n)
        if not os.path.islink(p):
            files[os.path.relpath(p, b)] = os.path.getsize(p)
doc = {"git_head": "$(git rev-parse HEAD)", "git_dirty": bool("$(git status --porcelain | head -c 1)"),
       "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "onnxruntime": "$(basename "$ORT_LIB")",
       "wheels": sorted(os.listdir(os.path.join(b, "wheels"))), "bytes_unpacked": sum(files.values()),
       "files": dict(sorted(files.items()))}
with open(os.path.join(b, "bundle.json"), "w") as f:
    json.dump(doc, f, indent=1)
PY
(cd "$B" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum >"$WORK/SHA256SUMS")
mv "$WORK/SHA256SUMS" "$B/SHA256SUMS"

mkdir -p "$(dirname "$OUT_FILE")"
tar -C "$WORK" -czf "$OUT_FILE" clip-serve-gpu
if ! check_bundle "$OUT_FILE"; then
  rm -f "$OUT_FILE"
  die "no bundle written (see above); leave out fixtures or wheels, or split the transfer"
fi
log "wrote $OUT_FILE ($(mib "$(stat -c %s "$OUT_FILE")") MiB; unpacked $(du -sh "$B" | cut -f1))"
log "on the host: tar xzf $(basename "$OUT_FILE") && clip-serve-gpu/scripts/gpu_check.sh   (results in \$OUT)"
