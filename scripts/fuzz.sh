#!/usr/bin/env bash
# The fuzzing campaign (cargo-fuzz, nightly): each target for SECONDS, new inputs kept in
# .cache/fuzz-corpus/TARGET (the committed seeds in fuzz/corpus/TARGET stay as they are), crashes
# in fuzz/artifacts/TARGET. Prints libFuzzer's last status line per target (executions, coverage).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]       targets: image text http_json proto (default: all four)
#   scripts/fuzz.sh build [TARGET...]           the sanitizer build only (scripts/test.sh starts it
#                                               beside clippy, then runs the targets)
#   cargo install cargo-fuzz   (once; needs the nightly toolchain)
#
# `image` and `text` link only src/preprocess (fuzz/src/lib.rs); when every target asked for is one of
# them, the sanitizer build leaves out the rest of the crate (`--no-default-features`: minutes instead
# of the whole server's tree). `http_json` and `proto` build clip-serve itself (fuzz/Cargo.toml's
# feature `app`). CI runs `scripts/fuzz.sh 10 image text`; every target's seeds also run in `cargo test`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_EACH="${1:-600}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(image text http_json proto)
FEATURES=(--no-default-features)
for t in "${TARGETS[@]}"; do
  case "$t" in
    image | text) ;;
    http_json | proto) FEATURES=() ;;
    *) echo "fuzz: unknown target $t (image text http_json proto)" >&2; exit 2 ;;
  esac
done
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
build_started=$SECONDS
for t in "${TARGETS[@]}"; do
  cargo +nightly fuzz build -O "${FEATURES[@]}" "$t"
done
echo "fuzz: sanitizer build of ${TARGETS[*]} ${FEATURES[*]}: $((SECONDS - build_started)) s" >&2
if [[ "$SECONDS_EACH" == build ]]; then exit 0; fi
for t in "${TARGETS[@]}"; do
  work="$ROOT/.cache/fuzz-corpus/$t"
  mkdir -p "$work"
  log="$ROOT/.cache/fuzz-$t.log"
  echo "fuzz: $t for ${SECONDS_EACH}s" >&2
  cargo +nightly fuzz run -O "${FEATURES[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || {
    echo "fuzz: $t FAILED (crash, timeout or OOM): see $log and fuzz/artifacts/$t" >&2
    tail -30 "$log" >&2
    exit 1
  }
  grep -E '^#[0-9]+ +DONE|stat::number_of_executed_units|cov: ' "$log" | tail -2 >&2
done
