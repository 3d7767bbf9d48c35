#!/usr/bin/env bash
# Priorities under saturation, in one invocation on one model directory:
#   1. unloaded: one high-priority HTTP client (4 images per call), alone;
#   2. saturated with priorities: 16 low-priority clients flood the server while the high client runs;
#   3. the same flood without priorities (everyone normal), for comparison.
# Reports the high client's p50/p99 in each phase (and the ratio to unloaded), and the low clients'
# throughput (they must still progress). Writes bench-results/priorities/*.json and prints a table
# for BENCHMARKS.md with the CPU flags.
#
#   scripts/bench_priorities.sh [MODEL_DIR]      THREADS=2 DURATION=15s
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-models/ViT-B-32__datacomp_xl_s13b_b90k}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-15s}"
SECONDS_LONG=$(( ${DURATION%s} + 6 ))
OUT="$ROOT/bench-results/priorities"
IMAGE="tests/fixtures/images/chelsea_baseline_420.jpg"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
[[ -f "$MODEL/config.json" ]] || { echo "bench: no model at $MODEL (scripts/serve.sh exports it)" >&2; exit 1; }
[[ -f "$IMAGE" ]] || IMAGE="$(ls tests/fixtures/images/*.jpg | head -1)"
cargo build --release --locked --bin clip-serve --bin clip-bench

PID=""
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_server() {
  GRPC="$(free_port)"; HTTP="$(free_port)"
  target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$GRPC" \
    --http-addr "127.0.0.1:$HTTP" --intra-op-threads "$THREADS" --log-filter warn "$@" &
  PID=$!
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1; then return 0; fi
    kill -0 "$PID" || { echo "bench: server died" >&2; exit 1; }
    sleep 0.2
  done
  echo "bench: server not ready" >&2; exit 1
}
stop_server() { kill -TERM "$PID"; wait "$PID" || true; PID=""; }
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true' EXIT

bench() { # OUT_NAME PRIORITY CONCURRENCY DURATION
  target/release/clip-bench --interface http --http-addr "http://127.0.0.1:$HTTP" --modality images \
    --image "$IMAGE" --items 4 --priority "$2" --concurrency "$3" --duration "$4" --out "$OUT/$1.json" \
    --refusal-backoff 50ms
}

start_server --max-batch-size 32
bench unloaded-high high 1 "$DURATION"
# The flood starts first and outlasts the probe.
bench flood-low low 16 "${SECONDS_LONG}s" & FLOOD=$!
sleep 3
bench saturated-high high 1 "$DURATION"
wait "$FLOOD"
bench flood-normal normal 16 "${SECONDS_LONG}s" & FLOOD=$!
sleep 3
bench saturated-normal normal 1 "$DURATION"
wait "$FLOOD"
stop_server

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
r = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()
                if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")})
base = r["unloaded-high"]["latency_ms_p99"]
print(f"CPU flags: {' '.join(flags)}")
print("| phase | probe client | probe p50 ms | probe p99 ms | p99 / unloaded | flood | flood images/s | flood errors |")
print("|---|---|---|---|---|---|---|---|")
rows = [("unloaded", "unloaded-high", None), ("flood of low calls", "saturated-high", "flood-low"),
        ("flood, no priorities", "saturated-normal", "flood-normal")]
for name, probe, flood in rows:
    p = r[probe]
    f = r[flood] if flood else None
    print(f"| {name} | {p['concurrency']} x {p['items_per_request']} images | {p['latency_ms_p50']:.0f} | "
          f"{p['latency_ms_p99']:.0f} | {p['latency_ms_p99'] / base:.2f} | "
          + (f"16 clients x 4 images | {f['items_per_s']:.1f} | {f['errors']} |" if f else "none | | |"))
PY
