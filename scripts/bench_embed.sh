#!/usr/bin/env bash
# Side-by-side single-request benchmark on one model directory (default: the full-size model of
# scripts/serve.sh), run one after the other on the same files and thread count:
#   1. Rust preprocessing per image (clip-preprocess-bench, single thread) for a ~500x375 and a ~4000x3000 JPEG;
#   2. the service end to end over gRPC (clip-bench, 1 client, 1 item per request): one text, one
#      500x375 JPEG, one 4000x3000 JPEG;
#   3. the Python baseline (scripts/bench_python.py): onnxruntime + open_clip's PIL preprocessing.
# Writes bench-results/*.json and prints a summary. Needs a python with torch, open_clip, onnxruntime
# (CLIP_SERVE_PYTHON, default .cache/export-venv/bin/python from scripts/serve.sh).
#
#   scripts/bench_embed.sh [MODEL_DIR]       THREADS=2 DURATION=20s
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-models/ViT-B-32__datacomp_xl_s13b_b90k}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-20s}"
PY="${CLIP_SERVE_PYTHON:-.cache/export-venv/bin/python}"
OUT="$ROOT/bench-results"
LARGE="tests/fixtures/images/coffee_4000x3000.jpg"
SMALL="$OUT/jpeg_500x375.jpg"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
[[ -f "$MODEL/config.json" ]] || { echo "bench: no model at $MODEL (scripts/serve.sh exports it)" >&2; exit 1; }

"$PY" - "$LARGE" "$SMALL" <<'PY'
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    im.convert("RGB").resize((500, 375), Image.Resampling.LANCZOS).save(sys.argv[2], "JPEG", quality=85)
PY

cargo build --release --locked
echo "== Rust preprocessing (single thread)" >&2
cargo run --release --locked --bin clip-preprocess-bench -- --runs 21 --cfg "$MODEL/visual/preprocess_cfg.json" \
  --json "$OUT/rust-preprocess.json" "$SMALL" "$LARGE"

echo "== clip-serve over gRPC ($THREADS intra-op threads)" >&2
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$PORT" \
  --intra-op-threads "$THREADS" --log-filter warn &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  if .cache/tools/bin/grpcurl -plaintext -d '{"service":""}' "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then break; fi
  kill -0 "$PID" || { echo "bench: server died" >&2; exit 1; }
  sleep 0.2
done
B=(target/release/clip-bench --addr "http://127.0.0.1:$PORT" --concurrency 1 --items 1 --duration "$DURATION")
"${B[@]}" --modality texts --out "$OUT/rust-text.json"
"${B[@]}" --modality images --image "$SMALL" --out "$OUT/rust-image-small.json"
"${B[@]}" --modality images --image "$LARGE" --out "$OUT/rust-image-large.json"
kill -TERM "$PID"; wait "$PID" || true; trap - EXIT

echo "== Python onnxruntime + open_clip preprocessing ($THREADS intra-op threads)" >&2
OMP_NUM_THREADS=1 "$PY" scripts/bench_python.py --model-dir "$MODEL" --threads "$THREADS" --runs 21 \
  --small-jpeg "$SMALL" --large-jpeg "$LARGE" --out "$OUT/python.json" >/dev/null

python3 - "$OUT" "$THREADS" <<'PY'
import json, os, sys
out, threads = sys.argv[1], sys.argv[2]
j = lambda n: json.load(open(os.path.join(out, n)))
py, rp = j("python.json"), j("rust-preprocess.json")
t = py["onnxruntime_by_intra_op_threads"][threads]
pre = py["preprocess"]
small_key = [k for k in pre if k.startswith("jpeg_500")][0]
large_key = [k for k in pre if k != small_key][0]
rows = [
    ("preprocess 500x375 JPEG (decode+resize+crop)", rp[0]["median_ms"], pre[small_key]["decode_and_transform"]["median_ms"]),
    (f"preprocess {large_key[5:]} JPEG", rp[1]["median_ms"], pre[large_key]["decode_and_transform"]["median_ms"]),
    ("one text, end to end", j("rust-text.json")["latency_ms_p50"], t["text_e2e_b1"]["median_ms"]),
    ("one 500x375 JPEG, end to end", j("rust-image-small.json")["latency_ms_p50"], t["image_e2e_b1_500x375_jpeg"]["median_ms"]),
]
print(f"model {py['model_dir']} ({py['weights']} weights), {threads} intra-op threads, medians; "
      f"Python load average {py['machine']['loadavg_before'][0]:.2f}")
print("| measurement | clip-serve (Rust, over gRPC) ms | Python onnxruntime + PIL (in process) ms | ratio |")
print("|---|---|---|---|")
for name, r, p in rows:
    print(f"| {name} | {r:.2f} | {p:.2f} | {p / r:.2f}x |")
large = j("rust-image-large.json")["latency_ms_p50"]
print(f"| one {large_key[5:]} JPEG, end to end | {large:.2f} | (decode+preprocess {pre[large_key]['decode_and_transform']['median_ms']:.1f} + compute {t['image_compute_b1']['median_ms']:.1f}) | |")
print(f"| compute only, image b1 / text b1 (Python) | | {t['image_compute_b1']['median_ms']:.2f} / {t['text_compute_b1']['median_ms']:.2f} | |")
PY
