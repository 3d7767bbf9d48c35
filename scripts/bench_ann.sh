#!/usr/bin/env bash
# The approximate-search benchmark (benches/ann.rs): AnnIndex (HNSW over f16, exact f32 rescoring)
# against the exact FlatIndex, 512 dimensions, uniform and clustered data, at 100k and 1M vectors:
# build rate, memory per vector, top-10 p50/p99 and recall@10 (with an expansion_search sweep),
# filtered search at 1%, 5% and 10% (planner, graph forced, exact forced), save and start-up (verify +
# load) times. Writes benchmarks/<date>-ann/ann-{100k,1m}.json.
#
# The 1M case holds the data, the exact index and the ANN index at once: about 10 GiB, and the
# build takes minutes on 2 cores. Run it on a quiet machine.
#
#   scripts/bench_ann.sh            SIZES="100000 1000000" QUERIES=200
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SIZES="${SIZES:-100000 1000000}"
QUERIES="${QUERIES:-200}"
OUT="$ROOT/benchmarks/$(date -u +%Y-%m-%d)-ann"
mkdir -p "$OUT"
cargo bench --bench ann --no-run
for n in $SIZES; do
  case "$n" in
    1000000) name=1m ;;
    *000) name="$((n / 1000))k" ;;
    *) name="$n" ;;
  esac
  echo "== $n vectors =="
  cargo bench --bench ann -- --sizes "$n" --data uniform,clustered --queries "$QUERIES" \
    --json "$OUT/ann-$name.json" 2>&1 | tee "$OUT/ann-$name.log"
done
echo "results under $OUT"
