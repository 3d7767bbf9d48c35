#!/usr/bin/env bash
# Classify benchmark on one model directory (default: the full-size model of scripts/serve.sh):
#   1. the time to build a label set of 1000 labels x 1 template (ImageNet's class names), via CreateLabelSet;
#   2. Classify of one 500x375 JPEG against that stored 1000-label set vs EmbedImages of the same image, one
#      client, side by side on the same server;
#   3. the text cache under a repeated workload: 4 clients classifying against the same 10 inline labels
#      (default template); the hit rate comes from the server's /metrics.
# Writes bench-results/classify/*.json and prints a summary.
#
#   scripts/bench_classify.sh [MODEL_DIR]      THREADS=2 DURATION=10s
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:-models/ViT-B-32__datacomp_xl_s13b_b90k}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-10s}"
OUT="$ROOT/bench-results/classify"
JPEG="$OUT/jpeg_500x375.jpg"
GRPCURL=.cache/tools/bin/grpcurl
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
[[ -f "$MODEL/config.json" ]] || { echo "bench: no model at $MODEL (scripts/serve.sh exports it)" >&2; exit 1; }
python3 - tests/fixtures/images/coffee_4000x3000.jpg "$JPEG" <<'PY' 2>/dev/null || cp tests/fixtures/images/chelsea_baseline_420.jpg "$JPEG"
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    im.convert("RGB").resize((500, 375), Image.Resampling.LANCZOS).save(sys.argv[2], "JPEG", quality=85)
PY
cargo build --release --locked

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"; HTTP="127.0.0.1:$(free_port)"; DATA="$(mktemp -d)"
target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$PORT" --http-addr "$HTTP" \
  --data-dir "$DATA" --intra-op-threads "$THREADS" --log-filter warn &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 600); do
  if "$GRPCURL" -plaintext -d '{"service":""}' "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then break; fi
  kill -0 "$PID" || { echo "bench: server died" >&2; exit 1; }
  sleep 0.2
done

echo "== build a 1000 x 1 label set" >&2
python3 - "$PORT" "$GRPCURL" "$OUT/build.json" <<'PY'
import json, subprocess, sys, time
port, grpcurl, out = sys.argv[1:]
labels = json.load(open("assets/label_sets/imagenet-1k.json"))["labels"]
call = lambda method, body: json.loads(subprocess.run(
    [grpcurl, "-plaintext", "-d", json.dumps(body), f"127.0.0.1:{port}", f"clip.v1.Classify/{method}"],
    check=True, capture_output=True, text=True).stdout or "{}")
t0 = time.perf_counter()
call("CreateLabelSet", {"name": "bench-1000", "labels": labels})
while True:
    s = call("GetLabelSet", {"name": "bench-1000"})
    if s.get("state") != "LABEL_SET_STATE_BUILDING":
        break
    time.sleep(0.2)
el = time.perf_counter() - t0
assert s["state"] == "LABEL_SET_STATE_READY", s
r = {"labels": len(labels), "templates": 1, "seconds": el, "texts_per_s": len(labels) / el}
json.dump(r, open(out, "w"), indent=2)
print(f"built 1000 x 1 in {el:.1f} s ({r['texts_per_s']:.1f} texts/s)")
PY

B=(target/release/clip-bench --addr "http://127.0.0.1:$PORT" --concurrency 1 --items 1 --duration "$DURATION" --image "$JPEG")
echo "== EmbedImages vs Classify (1000 stored labels), one client" >&2
"${B[@]}" --modality images --out "$OUT/embed.json"
"${B[@]}" --modality classify --label-set bench-1000 --out "$OUT/classify-1000.json"
"${B[@]}" --modality images --out "$OUT/embed-again.json"

echo "== repeated inline labels, 4 clients" >&2
before="$(python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "http://$HTTP/metrics")"
target/release/clip-bench --addr "http://127.0.0.1:$PORT" --concurrency 4 --items 1 --duration "$DURATION" \
  --image "$JPEG" --modality classify --labels "cat,dog,car,tree,house,boat,bird,horse,pizza,guitar" \
  --out "$OUT/classify-inline.json"
after="$(python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "http://$HTTP/metrics")"

python3 - "$OUT" "$before" "$after" <<'PY'
import json, os, sys
out, before, after = sys.argv[1:]
def value(text, name):
    return next(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " "))
hits = value(after, "clip_text_cache_hits_total") - value(before, "clip_text_cache_hits_total")
misses = value(after, "clip_text_cache_misses_total") - value(before, "clip_text_cache_misses_total")
j = lambda n: json.load(open(os.path.join(out, n)))
e1, c, e2, inl, b = j("embed.json"), j("classify-1000.json"), j("embed-again.json"), j("classify-inline.json"), j("build.json")
embed = (e1["latency_ms_p50"] + e2["latency_ms_p50"]) / 2
summary = {"build": b, "embed_p50_ms": embed, "classify_1000_p50_ms": c["latency_ms_p50"],
           "ratio": c["latency_ms_p50"] / embed, "inline": {"requests": inl["requests"], "items_per_s": inl["items_per_s"],
           "cache_hits": hits, "cache_misses": misses, "hit_rate": hits / max(hits + misses, 1)}}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(f"| build a label set of 1000 labels x 1 template | {b['seconds']:.1f} s ({b['texts_per_s']:.1f} texts/s) |")
print(f"| EmbedImages, one 500x375 JPEG, p50 (before / after) | {e1['latency_ms_p50']:.1f} / {e2['latency_ms_p50']:.1f} ms |")
print(f"| Classify against the stored 1000-label set, p50 | {c['latency_ms_p50']:.1f} ms ({summary['ratio']:.3f}x EmbedImages) |")
print(f"| 4 clients, 10 inline labels, {inl['requests']} calls | cache hits {hits:.0f}, misses {misses:.0f}: hit rate {summary['inline']['hit_rate']:.4f} |")
PY
