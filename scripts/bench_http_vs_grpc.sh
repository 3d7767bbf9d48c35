#!/usr/bin/env bash
# HTTP vs gRPC throughput, same server, same run: embeddings (texts, images) and classify at
# CLIENTS closed-loop clients each, alternating the two doors ROUNDS times so drift on a shared
# machine hits both alike. clip-bench --interface grpc|http; one JSON per run plus summary.json.
#
#   scripts/bench_http_vs_grpc.sh MODEL_DIR      CLIENTS=16 DURATION=10s ROUNDS=2
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:?usage: scripts/bench_http_vs_grpc.sh MODEL_DIR}"
CLIENTS="${CLIENTS:-16}" DURATION="${DURATION:-10s}" ROUNDS="${ROUNDS:-2}"
OUT="$ROOT/bench-results/http-vs-grpc"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --locked
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC="$(free_port)" HTTP="$(free_port)"
target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$GRPC" --http-addr "127.0.0.1:$HTTP" \
  --data-dir "$OUT/data" --log-filter warn &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
until .cache/tools/bin/grpcurl -plaintext -d '{"service":""}' "127.0.0.1:$GRPC" grpc.health.v1.Health/Check 2>/dev/null |
  grep -q '"SERVING"'; do sleep 0.2; done
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) flags: $(grep -o -w -m3 -E 'avx512_vnni|avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
IMAGE=tests/fixtures/images/chelsea_baseline_420.jpg
run() { # round door modality extra...
  local round=$1 door=$2 modality=$3; shift 3
  target/release/clip-bench --interface "$door" --addr "http://127.0.0.1:$GRPC" --http-addr "http://127.0.0.1:$HTTP" \
    --modality "$modality" --concurrency "$CLIENTS" --duration "$DURATION" --out "$OUT/$modality-$door-$round.json" "$@"
}
for ((r = 1; r <= ROUNDS; r++)); do
  for door in grpc http; do
    run "$r" "$door" texts
    run "$r" "$door" images --image "$IMAGE"
    run "$r" "$door" classify --image "$IMAGE" --labels "a cat,a dog,a car,a plane,a bird,a house,a tree,a boat"
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import glob, json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
summary = {}
for modality in ("texts", "images", "classify"):
    row = {}
    for door in ("grpc", "http"):
        runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, f"{modality}-{door}-*.json")))]
        row[door] = {"items_per_s": round(statistics.mean(r["items_per_s"] for r in runs), 1),
                     "p50_ms": round(statistics.mean(r["latency_ms_p50"] for r in runs), 1),
                     "p99_ms": round(statistics.mean(r["latency_ms_p99"] for r in runs), 1),
                     "errors": sum(r["errors"] for r in runs)}
    row["http_over_grpc"] = round(row["http"]["items_per_s"] / row["grpc"]["items_per_s"], 3)
    summary[modality] = row
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
