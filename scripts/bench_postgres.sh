#!/usr/bin/env bash
# The PostgreSQL collection store's benchmark (benches/postgres.rs) at N vectors (default 100000):
# upsert throughput, search p50/p99 (HNSW, HNSW with a 10% filter, exact) and HNSW recall@10.
# Extra arguments go to the bench: `scripts/bench_postgres.sh 1000000 --bulk` loads without the
# HNSW index, builds it, then measures upserts with it (`--tail 10000`).
# Starts a throwaway PostgreSQL (scripts/postgres.sh, instance "bench") and stops it afterwards;
# set CLIP_SERVE_TEST_POSTGRES_URL to use another server instead. The work is PostgreSQL's, so the
# dev profile (dependencies optimized) is enough: no release build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${1:-100000}"
if [[ -z "${CLIP_SERVE_TEST_POSTGRES_URL:-}" ]]; then
  CLIP_SERVE_TEST_POSTGRES_URL="$(scripts/postgres.sh start bench)"
  export CLIP_SERVE_TEST_POSTGRES_URL
  trap 'scripts/postgres.sh stop bench' EXIT
fi
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
cargo bench --locked --profile dev --bench postgres -- --n "$N" "${@:2}"
