#!/usr/bin/env bash
# The OpenVINO / precision benchmark of BENCHMARKS.md, one run: end to end through the server (gRPC,
# clip-bench, 1 item per request), images/s (500x375 JPEG) and texts/s (a prompt at L=16 and a text cut at
# L=77) at 1 and 16 clients, and images/s at 4 clients x 8 images (the issue's acceptance load), for
#   ort-fp32   --provider cpu --precision fp32
#   ort-int8   --provider cpu --precision int8 (MODEL_DIR needs model.int8.onnx; scripts/quantize.py --int8)
#   ov-f32     --provider openvino --precision fp32
#   ov-bf16    --provider openvino --precision bf16
# (ungated where the gate is missing: random weights measure speed only), then the compute-only anchor
# (scripts/bench_openvino.py: ONNX Runtime and OpenVINO-native at batch 8, same threads) in the same run,
# and the min cosine of each server's image vectors of the committed photographs against ort-fp32's.
# A configuration that cannot start here (the OpenVINO plugin publishes devices on Intel CPUs only; bf16
# needs AVX512-BF16 or AMX-BF16) is reported with its start-up error, not measured. Prints the CPU flags.
#
#   scripts/bench_openvino.sh MODEL_DIR      THREADS=2 DURATION=8s PYTHON=.cache/export-venv/bin/python
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:?usage: scripts/bench_openvino.sh MODEL_DIR (full-size export with int8 files)}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-8s}"
PY="${PYTHON:-.cache/export-venv/bin/python}"
OUT="$ROOT/bench-results/openvino"
JPEG="$ROOT/tests/fixtures/images/chelsea_baseline_420.jpg"
PROMPT="a photo of a goldfish."
LONG="$(printf 'a long caption about a dog and a ball on the grass %.0s' 1 2 3 4 5 6 7 8)"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.jsonl "$OUT"/*.log
[[ -f "$MODEL/config.json" ]] || { echo "bench: no model at $MODEL" >&2; exit 1; }
[[ -x target/release/clip-serve && -x target/release/clip-bench ]] || cargo build --release --locked

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); flags:" \
  "$(grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|amx_bf16\|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PID=""
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true' EXIT
run_config() {  # run_config NAME ARGS...: one server at a time (the cores are shared), every case, then stop it
  local name="$1"; shift
  local port; port="$(free_port)"
  target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$port" \
    --http-addr 127.0.0.1:0 --intra-op-threads "$THREADS" --data-dir "$OUT/data-$name" --log-filter warn \
    --allow-ungated-precision "$@" >"$OUT/$name.log" 2>&1 &
  PID="$!"
  for _ in $(seq 1 900); do
    if ! kill -0 "$PID" 2>/dev/null; then
      echo "| $name | not run: $(sed 's/\x1b\[[0-9;]*m//g' "$OUT/$name.log" | grep -m1 -i 'error' | cut -c1-300) |"
      PID=""; return 0
    fi
    .cache/tools/bin/grpcurl -plaintext -d '{"service":""}' "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null |
      grep -q '"SERVING"' && break
    sleep 0.2
  done
  # The served image vectors of the committed photographs, for the cosine check at the end.
  : >"$OUT/$name-vectors.jsonl"
  for f in tests/fixtures/images/*.jpg; do
    printf '{"images":["%s"]}' "$(base64 -w0 "$f")" |
      .cache/tools/bin/grpcurl -plaintext -max-msg-sz 67108864 -d @ "127.0.0.1:$port" clip.v1.Embed/EmbedImages |
      python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["embeddings"][0]["values"]))' \
        >>"$OUT/$name-vectors.jsonl"
  done
  local row="| $name |"
  # The issue's acceptance load: 4 clients x 8 images per request.
  target/release/clip-bench --addr "http://127.0.0.1:$port" --items 8 --duration "$DURATION" --concurrency 4 \
    --modality images --image "$JPEG" --out "$OUT/$name-images-4x8.json" >/dev/null
  for c in 1 16; do
    target/release/clip-bench --addr "http://127.0.0.1:$port" --items 1 --duration "$DURATION" --concurrency "$c" \
      --modality images --image "$JPEG" --out "$OUT/$name-images-c$c.json" >/dev/null
    target/release/clip-bench --addr "http://127.0.0.1:$port" --items 1 --duration "$DURATION" --concurrency "$c" \
      --modality texts --text "$PROMPT" --out "$OUT/$name-l16-c$c.json" >/dev/null
    target/release/clip-bench --addr "http://127.0.0.1:$port" --items 1 --duration "$DURATION" --concurrency "$c" \
      --modality texts --text "$LONG" --out "$OUT/$name-l77-c$c.json" >/dev/null
  done
  for c in 1 16; do
    for k in images l16 l77; do
      row+=" $(python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["items_per_s"])' \
        "$OUT/$name-$k-c$c.json") |"
    done
  done
  row+=" $(python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["items_per_s"])' \
    "$OUT/$name-images-4x8.json") |"
  echo "$row"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}

echo
echo "| server | images/s c1 | texts/s L=16 c1 | texts/s L=77 c1 | images/s c16 | texts/s L=16 c16 | texts/s L=77 c16 | images/s 4 clients x 8 |"
echo "|---|---|---|---|---|---|---|---|"
run_config ort-fp32 --precision fp32
run_config ort-int8 --precision int8
run_config ov-f32 --provider openvino --precision fp32
run_config ov-bf16 --provider openvino --precision bf16
echo
echo "served image vectors vs ort-fp32, tests/fixtures/images/*.jpg (min / mean cosine):"
for name in ort-int8 ov-f32 ov-bf16; do
  [[ -s "$OUT/$name-vectors.jsonl" && -s "$OUT/ort-fp32-vectors.jsonl" ]] || { echo "  $name: not run"; continue; }
  python3 - "$OUT/ort-fp32-vectors.jsonl" "$OUT/$name-vectors.jsonl" "$name" <<'PY'
import json, math, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and a, "vector counts differ"
def cos(x, y):
    return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
c = [cos(x, y) for x, y in zip(a, b)]
print(f"  {sys.argv[3]}: {min(c):.6f} / {sum(c) / len(c):.6f} over {len(c)} photographs")
PY
done

echo
echo "compute only (scripts/bench_openvino.py, batch 8, $THREADS threads):"
"$PY" scripts/bench_openvino.py --model-dir "$MODEL" --batch 8 --threads "$THREADS" --seconds "${DURATION%s}" --shape-probe
