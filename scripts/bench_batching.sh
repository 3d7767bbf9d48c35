#!/usr/bin/env bash
# The batching benchmark, in one invocation, on one model directory and one thread count:
#   1. clip-serve under closed-loop load (clip-bench, 1 item per request) at concurrency 1/4/16/64,
#      texts and 500x375 JPEGs, with batching on (--max-batch-size 32) and off (--max-batch-size 1);
#   2. overload: 256 clients against --max-concurrent-requests 64 --max-queue-rows 64 (images), with the
#      server's peak resident memory, the admitted calls' p99 and the refused count;
#   3. the Python baselines (scripts/bench_baselines.py): onnxruntime compute only, onnxruntime + PIL /
#      tokenizer, and open_clip's torch pipeline, at batch 1/4/16/32.
# Writes bench-results/batching/*.json and prints the tables for BENCHMARKS.md.
#
#   scripts/bench_batching.sh [MODEL_DIR]      THREADS=2 DURATION=10s BASE_SECONDS=8
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-models/ViT-B-32__datacomp_xl_s13b_b90k}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-10s}"
BASE_SECONDS="${BASE_SECONDS:-8}"
PY="${CLIP_SERVE_PYTHON:-.cache/export-venv/bin/python}"
OUT="$ROOT/bench-results/batching"
JPEG="$OUT/jpeg_500x375.jpg"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
[[ -f "$MODEL/config.json" ]] || { echo "bench: no model at $MODEL (scripts/serve.sh exports it)" >&2; exit 1; }

"$PY" - tests/fixtures/images/coffee_4000x3000.jpg "$JPEG" <<'PY'
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    im.convert("RGB").resize((500, 375), Image.Resampling.LANCZOS).save(sys.argv[2], "JPEG", quality=85)
PY
cargo build --release --locked

PID=""
start_server() {
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$PORT" --http-addr 127.0.0.1:0 \
    --intra-op-threads "$THREADS" --log-filter warn "$@" &
  PID=$!
  for _ in $(seq 1 600); do
    if .cache/tools/bin/grpcurl -plaintext -d '{"service":""}' "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null |
      grep -q '"SERVING"'; then return 0; fi
    kill -0 "$PID" || { echo "bench: server died" >&2; exit 1; }
    sleep 0.2
  done
  echo "bench: server not ready" >&2; exit 1
}
stop_server() { kill -TERM "$PID"; wait "$PID" || true; PID=""; }
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true' EXIT

for batch in 32 1; do
  echo "== clip-serve --max-batch-size $batch" >&2
  start_server --max-batch-size "$batch"
  for c in 1 4 16 64; do
    B=(target/release/clip-bench --addr "http://127.0.0.1:$PORT" --concurrency "$c" --items 1 --duration "$DURATION")
    "${B[@]}" --modality texts --out "$OUT/serve-b$batch-texts-c$c.json"
    "${B[@]}" --modality images --image "$JPEG" --out "$OUT/serve-b$batch-images-c$c.json"
  done
  stop_server
done

echo "== overload: 256 clients, --max-concurrent-requests 64 --max-queue-rows 64" >&2
start_server --max-batch-size 32 --max-concurrent-requests 64 --max-queue-rows 64
target/release/clip-bench --addr "http://127.0.0.1:$PORT" --concurrency 256 --items 1 --duration "$DURATION" \
  --modality images --image "$JPEG" --out "$OUT/overload-images-c256.json"
grep -E 'VmHWM|VmRSS' "/proc/$PID/status" | tr -s ' ' | python3 -c '
import json, sys
d = {l.split(":")[0]: int(l.split()[1]) for l in sys.stdin}
json.dump({"peak_rss_kib": d["VmHWM"], "rss_kib": d["VmRSS"]}, open(sys.argv[1], "w"))' "$OUT/overload-memory.json"
stop_server

echo "== Python baselines ($THREADS threads)" >&2
OMP_NUM_THREADS="$THREADS" "$PY" scripts/bench_baselines.py --model-dir "$MODEL" --threads "$THREADS" \
  --jpeg "$JPEG" --batches 1,4,16,32 --seconds "$BASE_SECONDS" --out "$OUT/baselines.json"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
j = lambda n: json.load(open(os.path.join(out, n)))
base = j("baselines.json")["by_batch"]
print("| modality | clients | batching on: items/s, p50 / p99 ms | batching off: items/s, p50 / p99 ms | on / off |")
print("|---|---|---|---|---|")
for m in ("texts", "images"):
    for c in (1, 4, 16, 64):
        on, off = j(f"serve-b32-{m}-c{c}.json"), j(f"serve-b1-{m}-c{c}.json")
        cell = lambda r: f"{r['items_per_s']:.1f}, {r['latency_ms_p50']:.0f} / {r['latency_ms_p99']:.0f}" + (f" ({r['errors']} errors)" if r["errors"] else "")
        print(f"| {m} | {c} | {cell(on)} | {cell(off)} | {on['items_per_s'] / off['items_per_s']:.2f}x |")
print()
print("| modality | batch | onnxruntime compute only | onnxruntime + PIL/tokenizer | open_clip torch | clip-serve at clients = batch (batching on) | clip-serve / compute only |")
print("|---|---|---|---|---|---|---|")
for m in ("texts", "images"):
    for b in ("1", "4", "16", "32"):
        r = base[b][m]
        c = {"1": 1, "4": 4, "16": 16, "32": 64}[b]
        s = j(f"serve-b32-{m}-c{c}.json")["items_per_s"]
        torch = f"{r['torch']['items_per_s']:.1f}" if "torch" in r else "skipped"
        label = f"{s:.1f} (c={c})"
        print(f"| {m} | {b} | {r['ort_compute']['items_per_s']:.1f} | {r['ort_pil']['items_per_s']:.1f} | {torch} | {label} | {s / r['ort_compute']['items_per_s']:.2f}x |")
o, mem = j("overload-images-c256.json"), j("overload-memory.json")
print()
print(f"overload (256 clients, images): {o['items_per_s']:.1f} items/s admitted, p50 {o['latency_ms_p50']:.0f} ms, "
      f"p99 {o['latency_ms_p99']:.0f} ms over {o['requests']} completed calls; errors by code {o['errors_by_code']}; "
      f"server peak RSS {mem['peak_rss_kib'] / 1024:.0f} MiB")
PY
