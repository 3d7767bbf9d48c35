#!/usr/bin/env bash
# The siege of issue 20 ("siege-proof"): builds release, starts target/release/clip-serve with its
# default flags on loopback (plus --data-dir in a temporary directory, fixed ports and a --probe-addr
# listener), runs clip-siege's attacks against it (silent uploads, idle sockets, hang-ups during
# writes, JSON amplification, slow trickle, idle sockets + probes) and prints one markdown table:
# small-call success rate and p99 on both doors, probe latency, peak RSS and what was lost, beside
# the targets. Everything stays on 127.0.0.x.
#
#   scripts/siege.sh [--model-dir DIR] [--out FILE] [--strict] [--no-build] [--no-probe-listener]
#                    [-- CLIP-SIEGE ARGS...]      e.g. -- --attacks hangup,idle --duration 10s
#
# --model-dir   the model to serve (default: the committed tiny test model, tests/fixtures/model: no
#               torch, no download; the attacks are about the doors and the stores, not the model)
# --out FILE    append the table to FILE too
# --strict      exit 2 when a target is missed (without it the exit status says only whether the
#               siege ran)
# --no-build    use the binaries already built
# --no-probe-listener  start the server without --probe-addr: probes go to the HTTP port
# Ports: SIEGE_HTTP_PORT (18480), SIEGE_GRPC_PORT (18451), SIEGE_PROBE_PORT (18481).
# CARGO_TARGET_DIR is honoured. The server's log is kept when the siege fails (its path is printed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL_DIR="$ROOT/tests/fixtures/model" OUT="" STRICT=() BUILD=1 PROBE_LISTENER=1 EXTRA=()
while (($#)); do
  case "$1" in
    --model-dir) MODEL_DIR="${2:?--model-dir DIR}"; shift 2 ;;
    --out) OUT="${2:?--out FILE}"; shift 2 ;;
    --strict) STRICT=(--strict); shift ;;
    --no-build) BUILD=0; shift ;;
    --no-probe-listener) PROBE_LISTENER=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "siege: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
HTTP_PORT="${SIEGE_HTTP_PORT:-18480}" GRPC_PORT="${SIEGE_GRPC_PORT:-18451}" PROBE_PORT="${SIEGE_PROBE_PORT:-18481}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

if ((BUILD)); then
  cargo build --release --bins >&2
fi
for b in clip-serve clip-siege; do
  [[ -x "$BIN/$b" ]] || { echo "siege: $BIN/$b is missing (drop --no-build)" >&2; exit 1; }
done

# 1,100 idle sockets per port, for the harness and for the server (which inherits this limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 4096)); then
  echo "siege: only $(ulimit -n) open files allowed; the idle-socket attacks need about 2,300" >&2
fi

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$HTTP_PORT" "$GRPC_PORT" "$PROBE_PORT"; do
  if in_use "$p"; then
    echo "siege: port $p on 127.0.0.1 is taken (set SIEGE_HTTP_PORT / SIEGE_GRPC_PORT / SIEGE_PROBE_PORT)" >&2
    exit 1
  fi
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/clip-siege.XXXXXX")"
SERVER_ARGS=(serve --model-dir "$MODEL_DIR" --data-dir "$WORK/data"
  --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT")
SIEGE_ARGS=(--http-addr "127.0.0.1:$HTTP_PORT" --grpc-addr "127.0.0.1:$GRPC_PORT")
PROBE="127.0.0.1:$HTTP_PORT"
if ((PROBE_LISTENER)); then
  SERVER_ARGS+=(--probe-addr "127.0.0.1:$PROBE_PORT")
  SIEGE_ARGS+=(--probe-addr "127.0.0.1:$PROBE_PORT")
  PROBE="127.0.0.1:$PROBE_PORT"
fi

"$BIN/clip-serve" "${SERVER_ARGS[@]}" >"$WORK/server.log" 2>&1 &
PID=$!
KEEP=0
stop_server() {
  if kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  wait "$PID" 2>/dev/null || true
  if ((KEEP)); then echo "siege: the server's log and data are in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap stop_server EXIT

# Ready: the model loaded and the collections read in (bounded: 120 s).
ready=0
for _ in $(seq 1 600); do
  if ! kill -0 "$PID" 2>/dev/null; then break; fi
  if curl -fsS -o /dev/null --max-time 1 "http://$PROBE/readyz" 2>/dev/null; then ready=1; break; fi
  sleep 0.2
done
if ((!ready)); then
  KEEP=1
  echo "siege: the server did not become ready; the end of its log:" >&2
  tail -20 "$WORK/server.log" >&2
  exit 1
fi

{
  echo "### Siege: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')"
  echo
  echo "Release clip-serve, default flags, model ${MODEL_DIR#"$ROOT"/}, on $(nproc) cores of$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); open files $(ulimit -n)."
  echo
} >"$WORK/table.md"
set +e
"$BIN/clip-siege" "${SIEGE_ARGS[@]}" --pid "$PID" --markdown "$WORK/table.md" "${STRICT[@]}" "${EXTRA[@]}" >/dev/null
rc=$?
set -e
if ! kill -0 "$PID" 2>/dev/null; then
  KEEP=1
  echo "siege: the server exited during the siege" >&2
fi
((rc == 0)) || KEEP=1
cat "$WORK/table.md"
if [[ -n "$OUT" ]]; then
  { echo; cat "$WORK/table.md"; } >>"$OUT"
fi
exit "$rc"
