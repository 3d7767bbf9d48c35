#!/usr/bin/env bash
# The fast-path benchmark, in one invocation, with the compared servers up at once and measured in
# interleaved rounds (A, B, A, B, ...; medians reported), because sequential runs on these machines
# drift by +-25 % between minutes:
#   1. variable-length text vs forced full length (--full-length-text): texts/s and p50 for
#      ImageNet-style prompts ("a photo of a {}.") and 20-30-token captions, 1 and 16 clients;
#   2. precision: --precision int8 vs fp32, images/s (500x375 JPEG) and texts/s (prompts), 1 and 16
#      clients. The int8 variant must exist in MODEL_DIR (scripts/quantize.py writes it); its gate
#      is only needed for serving, so a random-weight model's failed gate is passed with
#      --allow-ungated-precision here (random weights measure speed, never accuracy).
# Writes bench-results/fast-paths/*.json and summary.json, prints the tables for BENCHMARKS.md with
# the machine's CPU flags.
#
#   scripts/bench_fast_paths.sh MODEL_DIR      THREADS=2 DURATION=8s ROUNDS=3
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:?usage: scripts/bench_fast_paths.sh MODEL_DIR (a full-size export with a dynamic text axis and int8 files)}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-8s}"
ROUNDS="${ROUNDS:-3}"
OUT="$ROOT/bench-results/fast-paths"
JPEG="$ROOT/tests/fixtures/images/chelsea_baseline_420.jpg"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
PROMPT="a photo of a goldfish."
CAPTION="a golden retriever puppy playing with a red ball on the green grass of a sunny park next to a wooden bench"
mkdir -p "$OUT"
[[ -f "$MODEL/config.json" ]] || { echo "bench: no model at $MODEL" >&2; exit 1; }
[[ -f "$MODEL/textual/model.int8.onnx" ]] || { echo "bench: $MODEL has no int8 variant (scripts/quantize.py --int8 --keep-on-fail)" >&2; exit 1; }
cargo build --release --locked

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_server NAME ARGS...: starts a server, waits for SERVING, records its port in PORT_<NAME>.
start_server() {
  local name="$1"; shift
  local port; port="$(free_port)"
  target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$port" --http-addr 127.0.0.1:0 \
    --intra-op-threads "$THREADS" --data-dir "$OUT/data-$name" --log-filter warn "$@" &
  PIDS+=("$!")
  for _ in $(seq 1 900); do
    if .cache/tools/bin/grpcurl -plaintext -d '{"service":""}' "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null |
      grep -q '"SERVING"'; then printf -v "PORT_$name" '%s' "$port"; return 0; fi
    sleep 0.2
  done
  echo "bench: server $name not ready" >&2; exit 1
}
bench() {  # bench NAME OUTFILE ARGS...
  local port_var="PORT_$1"; local out="$2"; shift 2
  target/release/clip-bench --addr "http://127.0.0.1:${!port_var}" --items 1 --duration "$DURATION" --out "$out" "$@"
}

echo "== starting: variable length (fp32), forced full length (fp32), int8" >&2
start_server var
start_server full --full-length-text
start_server int8 --precision int8 --allow-ungated-precision

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS" >&2
  for c in 1 16; do
    for kind in prompt caption; do
      text="$PROMPT"; [[ "$kind" == caption ]] && text="$CAPTION"
      for server in var full; do
        bench "$server" "$OUT/len-$server-$kind-c$c-r$round.json" --modality texts --text "$text" --concurrency "$c"
      done
    done
    for server in var int8; do
      bench "$server" "$OUT/prec-$server-images-c$c-r$round.json" --modality images --image "$JPEG" --concurrency "$c"
      bench "$server" "$OUT/prec-$server-texts-c$c-r$round.json" --modality texts --text "$PROMPT" --concurrency "$c"
    done
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import glob, json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(prefix):
    runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, prefix + "-r*.json")))]
    return {"items_per_s": statistics.median(r["items_per_s"] for r in runs),
            "p50_ms": statistics.median(r["latency_ms_p50"] for r in runs),
            "errors": sum(r["errors"] for r in runs), "rounds": len(runs)}
flags = set()
for line in open("/proc/cpuinfo"):
    if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split()); break
model = [l for l in open("/proc/cpuinfo") if l.startswith("model name")][0].split(":", 1)[1].strip()
cpu = f"{model}; " + ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags)
summary = {"cpu": cpu, "rounds": rounds, "length": {}, "precision": {}}
print(f"CPU: {cpu}; {rounds} interleaved rounds, medians\n")
print("| texts | clients | variable length | full length (77) | ratio | p50 variable / full |")
print("|---|---|---|---|---|---|")
for kind in ("prompt", "caption"):
    for c in (1, 16):
        v, f = med(f"len-var-{kind}-c{c}"), med(f"len-full-{kind}-c{c}")
        summary["length"][f"{kind}-c{c}"] = {"variable": v, "full": f}
        print(f"| {kind} | {c} | {v['items_per_s']:.1f}/s | {f['items_per_s']:.1f}/s | "
              f"{v['items_per_s'] / f['items_per_s']:.2f}x | {v['p50_ms']:.1f} / {f['p50_ms']:.1f} ms |")
print("\n| input | clients | fp32 | int8 | ratio | p50 fp32 / int8 |")
print("|---|---|---|---|---|---|")
for kind in ("images", "texts"):
    for c in (1, 16):
        a, b = med(f"prec-var-{kind}-c{c}"), med(f"prec-int8-{kind}-c{c}")
        summary["precision"][f"{kind}-c{c}"] = {"fp32": a, "int8": b}
        print(f"| {kind} | {c} | {a['items_per_s']:.1f}/s | {b['items_per_s']:.1f}/s | "
              f"{b['items_per_s'] / a['items_per_s']:.2f}x | {a['p50_ms']:.1f} / {b['p50_ms']:.1f} ms |")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
PY
