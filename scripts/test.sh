#!/usr/bin/env bash
# Everything CI checks: set-up, formatting, clippy with warnings as errors, the tests, the grpcurl smoke
# test, and the Dockerfiles and Kubernetes manifests under deploy/. Needs no torch: the fixtures under tests/fixtures are committed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
export ORT_DYLIB_PATH="$ROOT/.cache/onnxruntime/lib/libonnxruntime.so"

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy -D warnings" >&2
cargo clippy --locked --all-targets -- -D warnings
echo "test: cargo clippy --features cuda,tensorrt (GPU providers compile; they run only with onnxruntime-gpu)" >&2
cargo clippy --locked --features cuda,tensorrt -- -D warnings
echo "test: cargo test" >&2
cargo test --locked
echo "test: grpcurl smoke test" >&2
scripts/smoke.sh
echo "test: the official openai Python SDK against the HTTP API" >&2
scripts/openai_sdk_test.sh
echo "test: deployment files (hadolint, kustomize, Kubernetes schemas; offline)" >&2
scripts/validate_deploy.sh
echo "test: all passed" >&2
