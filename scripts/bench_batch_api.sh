#!/usr/bin/env bash
# A live client's latency with and without a Batch API job running on the same server (by hand; not
# in CI). Starts one server (--model-dir, default the tiny fixture model), measures `clip-bench`
# (texts over gRPC, CONCURRENCY clients, DURATION) alone, then again while a batch of LINES lines
# of 8 texts each runs, and prints both p50/p99 and the batch's progress. Rounds alternate
# (ROUNDS, default 3) so drift on a shared machine hits both sides.
#
#   scripts/bench_batch_api.sh [--model-dir DIR]     env: CLIP_SERVE_BIN, CLIP_BENCH_BIN,
#                                                     CONCURRENCY (4), DURATION (10s), LINES (4000), ROUNDS (3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="tests/fixtures/model"
[[ "${1:-}" == "--model-dir" ]] && MODEL="$2"
BIN="${CLIP_SERVE_BIN:-$ROOT/target/debug/clip-serve}"
BENCH="${CLIP_BENCH_BIN:-$ROOT/target/debug/clip-bench}"
CONCURRENCY="${CONCURRENCY:-4}"
DURATION="${DURATION:-10s}"
LINES="${LINES:-4000}"
ROUNDS="${ROUNDS:-3}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC="127.0.0.1:$(free_port)"
HTTP="127.0.0.1:$(free_port)"
DATA="$(mktemp -d)"
"$BIN" serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "$GRPC" --http-addr "$HTTP" \
  --data-dir "$DATA/data" >"$DATA/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 600); do
  curl -fs -o /dev/null "http://$HTTP/readyz" && break
  sleep 0.1
done
live() {
  "$BENCH" --addr "http://$GRPC" --modality texts --concurrency "$CONCURRENCY" --duration "$DURATION" \
    --out "$DATA/bench.json" >/dev/null
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('p50 %.2f ms, p99 %.2f ms, %.0f items/s, %d errors' % (r['latency_ms_p50'], r['latency_ms_p99'], r['items_per_s'], r['errors']))" "$DATA/bench.json"
}
start_batch() {
  python3 - "http://$HTTP" "$LINES" <<'PY'
import json, sys, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
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
print(json.load(urllib.request.urlopen(r))["id"])
PY
}
progress() { curl -fs "http://$HTTP/v1/batches/$1" | python3 -c 'import json,sys; b=json.load(sys.stdin); print(b["status"], b["request_counts"])'; }
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round, alone:      $(live)"
  id="$(start_batch)"
  sleep 1
  echo "round $round, with batch: $(live)  batch: $(progress "$id")"
  curl -fs -X POST "http://$HTTP/v1/batches/$id/cancel" >/dev/null || true
  sleep 2
done
