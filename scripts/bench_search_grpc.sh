#!/usr/bin/env bash
# Issue 23's acceptance run: search through gRPC on the local store with default flags.
#   1. start the release server on an empty --data-dir (the committed tiny model: the searches use
#      vectors, so the model only has to start), note its RSS;
#   2. load N modality-gap image vectors (benches/search_grpc.rs `load`, 1000 per Upsert);
#   3. restart it: start-up = time from launch until the collection reports its index ready,
#      memory per vector = (RSS loaded - RSS empty) / N;
#   4. one client, 200 image and 200 text queries: p50/p99 of the planned search, recall@10
#      against `exact: true` (benches/search_grpc.rs `query`).
# Writes bench-results/search-grpc/<N>.json and prints a summary with the CPU flags.
#
# STORE=postgres: the same on `--store postgres` (POSTGRES_URL, by default scripts/postgres.sh's
# database; PG_INDEX, `none` by default: --postgres-index), its collection `gap` dropped first. Ready
# then means the replica's search mirror is built (start-up = the mirror's build), and the memory per
# vector is the mirror's. The truth (`exact: true`) is a scan of the table, about 8 s per query at 1M on 2
# cores: keep QUERIES small (30 gives 300 neighbours per kind).
#
#   scripts/bench_search_grpc.sh [N]          (N: 1000000 by default; about 12 GB of disk at 1M)
#   SERVER=PATH: that clip-serve binary instead of building target/release/clip-serve.
#   SERVER_ARGS="...": more flags for the server (word-split), e.g. "--recall-check-interval 0".
#   CLIENT_PROFILE=dev: build the client in the dev profile (the bench profile rebuilds the crate
#   with the dev-dependencies' features; the client's own cost is negligible either way).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${1:-1000000}"
QUERIES="${QUERIES:-200}"
OUT="$ROOT/bench-results/search-grpc"
DATA="$(mktemp -d "${TMPDIR:-/tmp}/search-grpc.XXXXXX")"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
mkdir -p "$OUT"
SERVER="${SERVER:-}"
if [[ -z "$SERVER" ]]; then
  cargo build --release --locked --bin clip-serve
  SERVER=target/release/clip-serve
fi
CLIENT_PROFILE="${CLIENT_PROFILE:-bench}"
cargo bench --locked --profile "$CLIENT_PROFILE" --bench search_grpc --no-run
case "$CLIENT_PROFILE" in bench) DIR=release ;; dev) DIR=debug ;; *) DIR="$CLIENT_PROFILE" ;; esac
BENCH="$(find "target/$DIR/deps" -maxdepth 1 -type f -executable -name 'search_grpc-*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)"

STORE="${STORE:-local}"
STORE_ARGS=()
READY='"ready": *true'
if [[ "$STORE" == postgres ]]; then
  POSTGRES_URL="${POSTGRES_URL:-$(scripts/postgres.sh start >/dev/null && scripts/postgres.sh url)}"
  STORE_ARGS=(--store postgres --postgres-url "$POSTGRES_URL" --postgres-index "${PG_INDEX:-none}")
  READY='"index": *"mirror".*"ready": *true|"ready": *true.*"index": *"mirror"'
  OUT="$OUT/postgres-${PG_INDEX:-none}"
  mkdir -p "$OUT"
fi

PID=""
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC="$(free_port)"; HTTP="$(free_port)"
start_server() {
  "$SERVER" serve --probe-addr 127.0.0.1:0 --model-dir tests/fixtures/model \
    --grpc-addr "127.0.0.1:$GRPC" --http-addr "127.0.0.1:$HTTP" --data-dir "$DATA" --log-filter warn \
    "${STORE_ARGS[@]}" ${SERVER_ARGS:-} &
  PID=$!
  for _ in $(seq 1 3000); do
    if curl -fs "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1; then return 0; fi
    kill -0 "$PID" || { echo "bench: server died" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: server not ready" >&2; exit 1
}
stop_server() { kill -TERM "$PID"; wait "$PID" || true; PID=""; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null; rm -rf "$DATA"' EXIT

start_server
EMPTY_KIB="$(rss_kib)"
[[ "$STORE" == postgres ]] && curl -fs -X DELETE "http://127.0.0.1:$HTTP/v1/collections/gap" >/dev/null 2>&1 || true
"$BENCH" load --addr "http://127.0.0.1:$GRPC" --collection gap --n "$N" | tee "$OUT/$N-load.txt"
LOAD_RATE="$(tail -1 "$OUT/$N-load.txt" | sed -n 's/.* \([0-9]*\) vectors\/s$/\1/p')"
stop_server

T0="$(date +%s.%N)"
start_server
# Ready means the collection answers with its approximate index (the load runs in the background).
until curl -fs "http://127.0.0.1:$HTTP/v1/collections/gap" 2>/dev/null | grep -Eq "$READY"; do
  kill -0 "$PID" || { echo "bench: server died" >&2; exit 1; }
  sleep 0.1
done
STARTUP="$(python3 -c "import time; print(f'{time.time() - $T0:.1f}')")"
LOADED_KIB="$(rss_kib)"
"$BENCH" query --addr "http://127.0.0.1:$GRPC" --collection gap --n "$N" --queries "$QUERIES" \
  --json "$OUT/$N.json"
stop_server

python3 - "$OUT/$N.json" "$N" "$STARTUP" "$EMPTY_KIB" "$LOADED_KIB" "$STORE" "${LOAD_RATE:-0}" <<'PY'
import json, sys
path, n, startup, empty, loaded = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = json.load(open(path))
r.update(startup_s=startup, rss_empty_kib=empty, rss_loaded_kib=loaded,
         bytes_per_vector=(loaded - empty) * 1024 / n, store=sys.argv[6],
         load_vectors_per_s=int(sys.argv[7] or 0))
json.dump(r, open(path, "w"), indent=2)
flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()
                if f in ("avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq", "amx_bf16", "amx_int8")})
print(f"CPU flags: {' '.join(flags)}; {n} vectors, index {r['index']} (ready {r['ready']})")
print("| queries | recall@10 | p50 ms | p99 ms |")
print("|---|---|---|---|")
for kind in ("image", "text"):
    q = r[kind]
    print(f"| {kind} | {q['recall_at_10']:.4f} | {q['p50_ms']:.2f} | {q['p99_ms']:.2f} |")
print(f"store {r['store']}: load {r['load_vectors_per_s']} vectors/s through Upsert; start-up until ready: "
      f"{startup:.1f} s; memory per vector (RSS growth): {r['bytes_per_vector']:.0f} B")
PY
