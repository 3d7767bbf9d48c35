#!/usr/bin/env bash
# Runs scripts/openai_sdk_test.py (the official `openai` Python SDK, pinned, installed into
# .cache/openai-venv from PyPI) against clip-serve on the tiny fixture model with an API key.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OPENAI_VERSION="3.57.0"
BIN="${CLIP_SERVE_BIN:-$ROOT/target/debug/clip-serve}"
GRPCURL="$ROOT/.cache/tools/bin/grpcurl"
VENV="$ROOT/.cache/openai-venv"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
[[ -n "${CLIP_SERVE_BIN:-}" ]] || cargo build --locked --quiet
if [[ ! -x "$GRPCURL" ]]; then
  echo "openai-sdk-test: SKIPPED: no grpcurl for $(uname -m)" >&2
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"
  }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC="127.0.0.1:$(free_port)"
HTTP="127.0.0.1:$(free_port)"
LOG="$(mktemp)"
DATA="$(mktemp -d)"
KEYS="$DATA/keys"
KEY="sdk-test-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
printf '# test keys\n%s\n' "$KEY" >"$KEYS"
"$BIN" serve --probe-addr 127.0.0.1:0 --model-dir tests/fixtures/model --grpc-addr "$GRPC" --http-addr "$HTTP" --data-dir "$DATA/data" \
  --intra-op-threads 1 --api-key-file "$KEYS" >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; rm -rf "$LOG" "$DATA"; }
trap cleanup EXIT
fail() { echo "openai-sdk-test: FAILED: $*" >&2; echo "--- server log ---" >&2; cat "$LOG" >&2; exit 1; }
for _ in $(seq 1 300); do
  if python3 -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1]).status != 200)' "http://$HTTP/readyz" 2>/dev/null; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || fail "server exited during start-up"
  sleep 0.1
done
"$VENV/bin/python" scripts/openai_sdk_test.py --http "http://$HTTP" --grpc "$GRPC" --key "$KEY" \
  --grpcurl "$GRPCURL" --image tests/fixtures/images/chelsea_baseline_420.jpg || fail "the SDK test"
kill -TERM "$PID"
wait "$PID" || fail "server did not exit 0 on SIGTERM"
trap - EXIT
rm -rf "$LOG" "$DATA"
