#!/usr/bin/env bash
# Runs scripts/clients_test.py (the real cohere, huggingface_hub and langchain-community clients, pinned,
# installed from PyPI into .cache/clients-venv, or $CLIP_SERVE_CLIENTS_VENV) against clip-serve on the tiny
# fixture model, with an API key and the model aliases those clients send. One server start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PINS=("cohere==7.0.9" "huggingface_hub==1.28.0" "langchain-community==0.3.23")
BIN="${CLIP_SERVE_BIN:-$ROOT/target/debug/clip-serve}"
VENV="${CLIP_SERVE_CLIENTS_VENV:-$ROOT/.cache/clients-venv}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
[[ -n "${CLIP_SERVE_BIN:-}" ]] || cargo build --locked --quiet
source "$ROOT/scripts/lib/venv.sh"
pinned_venv "$VENV" "${PINS[@]}" || {
  echo "clients-test: SKIPPED: the pinned clients did not install (no PyPI?)" >&2
  exit 0
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC="127.0.0.1:$(free_port)"
HTTP="127.0.0.1:$(free_port)"
LOG="$(mktemp)"
DATA="$(mktemp -d)"
KEYS="$DATA/keys"
KEY="clients-test-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
printf '# test keys\n%s\n' "$KEY" >"$KEYS"
"$BIN" serve --probe-addr 127.0.0.1:0 --model-dir tests/fixtures/model --grpc-addr "$GRPC" --http-addr "$HTTP" --data-dir "$DATA/data" \
  --intra-op-threads 1 --api-key-file "$KEYS" --model-alias jina-clip-v2,rerank-v3.5,embed-v4.0 >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; rm -rf "$LOG" "$DATA"; }
trap cleanup EXIT
fail() { echo "clients-test: FAILED: $*" >&2; echo "--- server log ---" >&2; cat "$LOG" >&2; exit 1; }
for _ in $(seq 1 300); do
  if python3 -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1]).status != 200)' "http://$HTTP/readyz" 2>/dev/null; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || fail "server exited during start-up"
  sleep 0.1
done
"$VENV/bin/python" scripts/clients_test.py --http "http://$HTTP" --key "$KEY" \
  --image tests/fixtures/images/chelsea_baseline_420.jpg || fail "the client test"
kill -TERM "$PID"
wait "$PID" || fail "server did not exit 0 on SIGTERM"
trap - EXIT
rm -rf "$LOG" "$DATA"
