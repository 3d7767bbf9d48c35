#!/usr/bin/env bash
# Memory under hostile stream load, with default flags: CONNECTIONS connections x STREAMS streams each,
# every stream pushing ITEMS messages of a ~3.5 MB JPEG as fast as flow control allows (again and
# again for DURATION), while a separate client embeds one short text at a time. Reports the server's
# peak resident memory (VmHWM) and that client's latencies; both clients are clip-bench.
#
#   scripts/bench_stream_memory.sh MODEL_DIR     CONNECTIONS=64 STREAMS=4 ITEMS=16 DURATION=20s
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:?usage: scripts/bench_stream_memory.sh MODEL_DIR}"
CONNECTIONS="${CONNECTIONS:-64}" STREAMS="${STREAMS:-4}" ITEMS="${ITEMS:-16}" DURATION="${DURATION:-20s}"
PY="${CLIP_SERVE_PYTHON:-.cache/export-venv/bin/python}"
OUT="$ROOT/bench-results/stream-memory"
JPEG="$OUT/photo_3.5mb.jpg"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
# A valid ~3.5 MB JPEG: the 4000 x 3000 fixture re-encoded at high quality.
"$PY" - tests/fixtures/images/coffee_4000x3000.jpg "$JPEG" <<'PY'
import os, sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    im = im.convert("RGB")
    for q in (95, 97, 98, 99, 100):
        im.save(sys.argv[2], "JPEG", quality=q, subsampling=0)
        if os.path.getsize(sys.argv[2]) >= 3_400_000:
            break
print(f"{sys.argv[2]}: {os.path.getsize(sys.argv[2]) / 1e6:.2f} MB", file=sys.stderr)
PY
cargo build --release --locked
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$PORT" --http-addr 127.0.0.1:0 \
  --data-dir "$OUT/data" --log-filter warn &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
until .cache/tools/bin/grpcurl -plaintext -d '{"service":""}' "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null |
  grep -q '"SERVING"'; do sleep 0.2; done
idle_kib=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
target/release/clip-bench --addr "http://127.0.0.1:$PORT" --modality stream --image "$JPEG" \
  --concurrency "$CONNECTIONS" --streams "$STREAMS" --items "$ITEMS" --duration "$DURATION" \
  --out "$OUT/streams.json" &
LOAD=$!
sleep 2
target/release/clip-bench --addr "http://127.0.0.1:$PORT" --modality texts --concurrency 1 --duration "$DURATION" \
  --out "$OUT/small-client.json"
wait "$LOAD" || true
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
python3 - "$OUT" "$idle_kib" "$peak_kib" "$CONNECTIONS" "$STREAMS" "$ITEMS" <<'PY'
import json, os, sys
out, idle, peak, conns, streams, items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:])
load = json.load(open(os.path.join(out, "streams.json")))
small = json.load(open(os.path.join(out, "small-client.json")))
summary = {"connections": conns, "streams_per_connection": streams, "items_per_stream": items,
           "jpeg_bytes": os.path.getsize(os.path.join(out, "photo_3.5mb.jpg")),
           "server_rss_idle_mib": round(idle / 1024), "server_peak_rss_mib": round(peak / 1024),
           "stream_items_per_s": load["items_per_s"], "stream_errors": load["errors_by_code"],
           "small_client": {k: small[k] for k in ("latency_ms_p50", "latency_ms_p99", "requests", "errors_by_code")}}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
