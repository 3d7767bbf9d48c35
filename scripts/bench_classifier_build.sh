#!/usr/bin/env bash
# How long the server takes to compute a built-in label set's zero-shot classifier (imagenet-1k:
# 1000 labels x 80 templates = 80,000 prompts) through its own text batcher, on this machine.
# Starts a server on MODEL_DIR with an empty data directory, asks for the set (which starts the
# build), polls GetLabelSet until READY and prints the wall time, the prompts per second and the
# server's text-batch length histogram (variable-length text makes prompts cheap). Also measures a
# live client's Embed latency (one text at a time, 10 s) idle and while the build runs: builds run
# below live traffic.
#
#   scripts/bench_classifier_build.sh MODEL_DIR [SET]      THREADS=2 EXTRA="--full-length-text"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:?usage: scripts/bench_classifier_build.sh MODEL_DIR [SET]}"
SET="${2:-imagenet-1k}"
THREADS="${THREADS:-2}"
OUT="$ROOT/bench-results/classifier-build"
GRPCURL="$ROOT/.cache/tools/bin/grpcurl"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
cargo build --release --locked

DATA="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
HTTP="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# shellcheck disable=SC2086
target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$PORT" --http-addr "127.0.0.1:$HTTP" \
  --intra-op-threads "$THREADS" --data-dir "$DATA" --log-filter warn ${EXTRA:-} &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
until "$GRPCURL" -plaintext -d '{"service":""}' "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; do
  kill -0 "$PID" || { echo "bench: server died" >&2; exit 1; }
  sleep 0.2
done
BENCH=(target/release/clip-bench --addr "http://127.0.0.1:$PORT" --modality texts --concurrency 1 --items 1 --duration 10s)
"${BENCH[@]}" --out "$OUT/$SET.embed-idle.json" >&2
started=$(date +%s.%N)
# The first Classify against the set starts its build (and is answered UNAVAILABLE with progress).
"$GRPCURL" -plaintext -d "{\"label_set\": \"$SET\", \"images\": [\"$(base64 -w0 tests/fixtures/images/chelsea_tiny_13x9.png)\"]}" \
  "127.0.0.1:$PORT" clip.v1.Classify/Classify >/dev/null 2>&1 || true
"${BENCH[@]}" --out "$OUT/$SET.embed-during-build.json" >&2
while true; do
  state="$("$GRPCURL" -plaintext -d "{\"name\": \"$SET\"}" "127.0.0.1:$PORT" clip.v1.Classify/GetLabelSet)"
  if grep -q '"LABEL_SET_STATE_READY"' <<<"$state"; then break; fi
  if grep -q '"LABEL_SET_STATE_FAILED"' <<<"$state"; then echo "bench: build failed: $state" >&2; exit 1; fi
  sleep 2
done
ended=$(date +%s.%N)
python3 -c "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$HTTP/metrics').read().decode())" \
  >"$OUT/$SET.metrics.txt"
python3 - "$started" "$ended" "$SET" "$OUT/$SET.json" "${EXTRA:-}" "$OUT/$SET.metrics.txt" <<'PY'
import json, re, sys
started, ended, name, out, extra = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
spec = json.load(open(f"assets/label_sets/{name}.json"))
prompts = len(spec["labels"]) * len(spec["templates"])
metrics = open(sys.argv[6]).read()
buckets = {m.group(1): float(m.group(2)) for m in re.finditer(r'clip_text_batch_length_tokens_bucket\{le="([^"]+)"\} (\S+)', metrics)}
flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
cpu = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in flags)
seconds = ended - started
import os
idle = json.load(open(out.replace(".json", ".embed-idle.json")))
during = json.load(open(out.replace(".json", ".embed-during-build.json")))
report = {"label_set": name, "prompts": prompts, "seconds": round(seconds, 1), "prompts_per_s": round(prompts / seconds, 1),
          "server_flags": extra, "text_batch_length_buckets": buckets, "cpu": cpu,
          "embed_p50_ms_idle": idle["latency_ms_p50"], "embed_p50_ms_during_build": during["latency_ms_p50"],
          "embed_p99_ms_idle": idle["latency_ms_p99"], "embed_p99_ms_during_build": during["latency_ms_p99"]}
json.dump(report, open(out, "w"), indent=2)
print(f"{name}: {prompts} prompts in {seconds / 60:.1f} min ({prompts / seconds:.1f}/s), server flags {extra or '(none)'}; CPU {cpu}")
print("text batch lengths (cumulative batches <= le):", buckets)
print(f"live Embed (1 text, 1 client) p50 idle {idle['latency_ms_p50']:.1f} ms, during the build "
      f"{during['latency_ms_p50']:.1f} ms (p99 {idle['latency_ms_p99']:.1f} / {during['latency_ms_p99']:.1f} ms)")
PY
