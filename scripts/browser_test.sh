#!/usr/bin/env bash
# The browser playground (GET /) and Swagger UI (GET /docs) in headless Chromium: Debian's `chromium`
# (installed with apt-get when missing) driven by Playwright from PyPI (pinned, into .cache/browser-venv
# or $CLIP_SERVE_BROWSER_VENV; it uses the system browser: `playwright install` is never run). Starts
# the server on the tiny fixture model with an API key, classifies a committed photo on the page and
# checks the top bar against /v1/classify, then writes docs/playground.png (or $CLIP_SERVE_SCREENSHOT).
# Without a Chromium or Playwright it prints a SKIPPED line and exits 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PINS=("playwright==1.65.2")
BIN="${CLIP_SERVE_BIN:-$ROOT/target/debug/clip-serve}"
VENV="${CLIP_SERVE_BROWSER_VENV:-$ROOT/.cache/browser-venv}"
SHOT="${CLIP_SERVE_SCREENSHOT:-$ROOT/docs/playground.png}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
skip() { echo "browser-test: SKIPPED: $*" >&2; exit 0; }

find_chromium() { command -v chromium || command -v chromium-browser || true; }
CHROMIUM="${CLIP_SERVE_CHROMIUM:-$(find_chromium)}"
if [[ -z "$CHROMIUM" ]]; then
  SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
  echo "browser-test: installing Debian's chromium" >&2
  { $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; }; } || true
  CHROMIUM="$(find_chromium)"
  [[ -n "$CHROMIUM" ]] || skip "no chromium (apt-get install -y chromium failed)"
fi
[[ -n "${CLIP_SERVE_BIN:-}" ]] || cargo build --locked --quiet
source "$ROOT/scripts/lib/venv.sh"
pinned_venv "$VENV" "${PINS[@]}" || skip "Playwright did not install (no PyPI?)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC="127.0.0.1:$(free_port)"
HTTP="127.0.0.1:$(free_port)"
LOG="$(mktemp)"
DATA="$(mktemp -d)"
KEYS="$DATA/keys"
KEY="browser-test-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
printf '# test keys\n%s\n' "$KEY" >"$KEYS"
"$BIN" serve --probe-addr 127.0.0.1:0 --model-dir tests/fixtures/model --grpc-addr "$GRPC" --http-addr "$HTTP" --data-dir "$DATA/data" \
  --intra-op-threads 1 --api-key-file "$KEYS" >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; rm -rf "$LOG" "$DATA"; }
trap cleanup EXIT
fail() { echo "browser-test: FAILED: $*" >&2; echo "--- server log ---" >&2; cat "$LOG" >&2; exit 1; }
for _ in $(seq 1 300); do
  if python3 -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1]).status != 200)' "http://$HTTP/readyz" 2>/dev/null; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || fail "server exited during start-up"
  sleep 0.1
done
mkdir -p "$(dirname "$SHOT")"
"$VENV/bin/python" scripts/browser_test.py --http "http://$HTTP" --chromium "$CHROMIUM" --key "$KEY" \
  --image tests/fixtures/images/chelsea_baseline_420.jpg --screenshot "$SHOT" || fail "the browser test"
kill -TERM "$PID"
wait "$PID" || fail "server did not exit 0 on SIGTERM"
trap - EXIT
rm -rf "$LOG" "$DATA"
