#!/usr/bin/env bash
# How fast a Batch API job runs to `completed` on each store (by hand; not in CI): one server on
# `--store local`, then one on `--store postgres` (a fresh database on POSTGRES_URL, default
# scripts/postgres.sh's), each running one batch of LINES lines of 8 texts with nothing else on the
# server; rounds alternate (ROUNDS). Prints lines/s per round. The difference is the store's cost
# per line (local: two fsyncs per line record; PostgreSQL: one INSERT .. with the counts per line).
#
#   scripts/bench_batch_store.sh [--model-dir DIR]   env: CLIP_SERVE_BIN, LINES (2000), ROUNDS (3),
#                                                     POSTGRES_URL, CONCURRENCY (4: --batch-line-concurrency)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="tests/fixtures/model"
[[ "${1:-}" == "--model-dir" ]] && MODEL="$2"
BIN="${CLIP_SERVE_BIN:-$ROOT/target/debug/clip-serve}"
LINES="${LINES:-2000}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-4}"
ADMIN="${POSTGRES_URL:-$(scripts/postgres.sh url)}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
DATA="$(mktemp -d)"
PID=""
trap '[[ -n "$PID" ]] && kill $PID 2>/dev/null; rm -rf "$DATA"' EXIT
run() { # store args...
  local name="$1"; shift
  local http="127.0.0.1:$(free_port)"
  rm -rf "$DATA/data"
  "$BIN" serve --probe-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --model-dir "$MODEL" --http-addr "$http" \
    --data-dir "$DATA/data" --batch-line-concurrency "$CONCURRENCY" "$@" >"$DATA/log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do curl -fs -o /dev/null "http://$http/readyz" && break; sleep 0.1; done
  python3 - "http://$http" "$LINES" "$name" <<'PY'
import json, sys, time, urllib.request
base, n, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jsonl = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                            "body": {"input": [f"photo {i} of thing {j}" for j in range(8)]}}) + "\n" for i in range(n))
b = "----benchbatch"
body = (f'--{b}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{b}\r\n'
        f'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{jsonl}\r\n--{b}--\r\n').encode()
r = urllib.request.Request(base + "/v1/files", data=body, method="POST",
                           headers={"content-type": f"multipart/form-data; boundary={b}"})
fid = json.load(urllib.request.urlopen(r))["id"]
r = urllib.request.Request(base + "/v1/batches", method="POST", headers={"content-type": "application/json"},
                           data=json.dumps({"input_file_id": fid, "endpoint": "/v1/embeddings", "completion_window": "24h"}).encode())
start = time.monotonic()
bid = json.load(urllib.request.urlopen(r))["id"]
while (s := json.load(urllib.request.urlopen(f"{base}/v1/batches/{bid}")))["status"] not in ("completed", "failed", "cancelled", "expired"):
    time.sleep(0.05)
took = time.monotonic() - start
print(f"{name:9s} {s['status']} {s['request_counts']['completed']}/{n} lines in {took:.1f} s: {n / took:.0f} lines/s")
PY
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}
for round in $(seq 1 "$ROUNDS"); do
  run local --store local
  db="clip_bench_$(date +%s%N)"
  psql -q "$ADMIN" -c "CREATE DATABASE $db"
  run postgres --store postgres --postgres-url "${ADMIN%/*}/$db"
  psql -q "$ADMIN" -c "DROP DATABASE $db WITH (FORCE)"
done
