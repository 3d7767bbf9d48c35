#!/usr/bin/env bash
# Indexing speed of `clip-serve index`: the committed photographs (tests/fixtures/images) repeated
# to FILES files (hard links, so the folder costs no disk), upserted into a fresh collection of a
# local server on MODEL_DIR, with the indexer's default batching and CONCURRENCY.
#
#   scripts/bench_indexer.sh MODEL_DIR        FILES=2000 CONCURRENCY=4
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${1:?usage: scripts/bench_indexer.sh MODEL_DIR}"
FILES="${FILES:-2000}" CONCURRENCY="${CONCURRENCY:-4}"
OUT="$ROOT/bench-results/indexer"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
rm -rf "$OUT" && mkdir -p "$OUT/photos"
photos=(tests/fixtures/images/*)
for ((i = 0; i < FILES; i++)); do
  src="${photos[i % ${#photos[@]}]}"
  ln "$src" "$OUT/photos/$(printf '%05d' "$i")_$(basename "$src")" 2>/dev/null || cp "$src" "$OUT/photos/$(printf '%05d' "$i")_$(basename "$src")"
done
cargo build --release --locked
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
target/release/clip-serve serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "127.0.0.1:$PORT" --http-addr 127.0.0.1:0 \
  --data-dir "$OUT/data" --log-filter warn &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
until .cache/tools/bin/grpcurl -plaintext -d '{"service":""}' "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2>/dev/null |
  grep -q '"SERVING"'; do sleep 0.2; done
grep -o -m1 -E 'avx512_vnni|avx512f|avx2' /proc/cpuinfo | head -1 | sed 's/^/cpu flags include: /'
start=$(date +%s.%N)
target/release/clip-serve index "$OUT/photos" --addr "http://127.0.0.1:$PORT" --collection bench --create \
  --concurrency "$CONCURRENCY" | tee "$OUT/report.txt" || true
end=$(date +%s.%N)
python3 - "$start" "$end" "$FILES" "$CONCURRENCY" "$OUT" <<'PY'
import json, sys
start, end, files, conc, out = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
summary = {"files": files, "concurrency": conc, "seconds": round(end - start, 1),
           "images_per_s": round(files / (end - start), 1)}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary))
PY
