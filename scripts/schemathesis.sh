#!/usr/bin/env bash
# Runs schemathesis (pinned, installed from PyPI into .cache/schemathesis-venv, or
# $CLIP_SERVE_SCHEMATHESIS_VENV) against the debug server on the tiny fixture model, driven by the
# server's own GET /openapi.json: every documented route, a bounded number of generated examples
# each (CLIP_SERVE_SCHEMATHESIS_EXAMPLES, default 20) within a time budget
# (CLIP_SERVE_SCHEMATHESIS_SECONDS, default 60). Any 5xx fails the run (--checks not_a_server_error).
# The collections the document's examples name (`photos`; `scratch`, the one its DELETE example
# drops) are created first, so the collection routes get past 404 (and a Batch API file and batch,
# their ids put into a copy of the document's examples); at the end, how many operations
# answered 2xx at least once is printed, and one that never did fails the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PINS=("schemathesis==4.32.5")
BIN="${CLIP_SERVE_BIN:-$ROOT/target/debug/clip-serve}"
VENV="${CLIP_SERVE_SCHEMATHESIS_VENV:-$ROOT/.cache/schemathesis-venv}"
EXAMPLES="${CLIP_SERVE_SCHEMATHESIS_EXAMPLES:-20}"
SECONDS_BUDGET="${CLIP_SERVE_SCHEMATHESIS_SECONDS:-60}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/lib/libonnxruntime.so}"
[[ -n "${CLIP_SERVE_BIN:-}" ]] || cargo build --locked --quiet
source "$ROOT/scripts/lib/venv.sh"
pinned_venv "$VENV" "${PINS[@]}" || {
  echo "schemathesis: SKIPPED: schemathesis did not install (no PyPI?)" >&2
  exit 0
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GRPC="127.0.0.1:$(free_port)"
HTTP="127.0.0.1:$(free_port)"
LOG="$(mktemp)"
DATA="$(mktemp -d)"
REPORT="$DATA/report"
"$BIN" serve --probe-addr 127.0.0.1:0 --model-dir tests/fixtures/model --grpc-addr "$GRPC" --http-addr "$HTTP" --data-dir "$DATA/data" \
  --intra-op-threads 1 >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; rm -rf "$LOG" "$DATA"; }
trap cleanup EXIT
fail() { echo "schemathesis: FAILED: $*" >&2; echo "--- server log (errors) ---" >&2; grep -iE "error|panic" "$LOG" | tail -50 >&2 || true; exit 1; }
for _ in $(seq 1 300); do
  if python3 -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1]).status != 200)' "http://$HTTP/readyz" 2>/dev/null; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || fail "server exited during start-up"
  sleep 0.1
done
# The collections the OpenAPI examples name (the served model's dimension).
for name in photos scratch; do
  curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
    -d "{\"name\": \"$name\"}" "http://$HTTP/v1/collections" || fail "could not create collection $name"
done
# The Batch API's examples name a file and a batch by placeholder ids: make them (a long batch,
# cancelled at once, so cancelling it again answers 200; a second file for the DELETE example), and
# run schemathesis on a copy of the document whose examples carry their real ids.
python3 - "http://$HTTP" "$DATA/openapi.json" <<'PY' || fail "could not make the Batch API's example file and batch"
import json, sys, time, urllib.request
base, out = sys.argv[1], sys.argv[2]
def call(method, path, body=b"", ctype="application/json"):
    r = urllib.request.Request(base + path, data=body, method=method, headers={"content-type": ctype})
    return json.load(urllib.request.urlopen(r))
def upload(lines):
    jsonl = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                                "body": {"input": f"a photo of thing {i}"}}) + "\n" for i in range(lines))
    b = "----schemathesisexample"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{b}\r\n'
            f'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{jsonl}\r\n--{b}--\r\n')
    return call("POST", "/v1/files", body.encode(), f"multipart/form-data; boundary={b}")["id"]
keep, scratch = upload(5000), upload(1)
batch = call("POST", "/v1/batches", json.dumps({"input_file_id": keep, "endpoint": "/v1/embeddings",
                                                "completion_window": "24h"}).encode())["id"]
call("POST", f"/v1/batches/{batch}/cancel")
for _ in range(600):
    if call("GET", f"/v1/batches/{batch}")["status"] == "cancelled":
        break
    time.sleep(0.1)
else:
    sys.exit("the example batch was never cancelled")
doc = json.load(urllib.request.urlopen(base + "/openapi.json"))
for path, item in doc["paths"].items():
    for method, op in item.items():
        file_id = scratch if (method, path) == ("delete", "/v1/files/{file_id}") else keep
        for p in op.get("parameters", []):
            p["example"] = {"file_id": file_id, "batch_id": batch}.get(p["name"], p.get("example"))
        example = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
        if isinstance(example, dict) and "input_file_id" in example:
            example["input_file_id"] = keep
json.dump(doc, open(out, "w"))
PY
# Immich's other tasks (facial recognition, OCR) get a 501 by design; the /predict example lets
# the fuzzer reach that answer.
cat >"$DATA/schemathesis.toml" <<'TOML'
[[operations]]
include-name = "POST /predict"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "501"]
TOML
"$VENV/bin/schemathesis" --config-file "$DATA/schemathesis.toml" run "$DATA/openapi.json" --url "http://$HTTP" \
  --checks not_a_server_error \
  --report har --report-har-path "$REPORT.har" \
  --max-examples "$EXAMPLES" \
  --max-time "$SECONDS_BUDGET" \
  --request-timeout 30 \
  --seed 1 \
  --suppress-health-check all \
  --no-color || fail "schemathesis found failures (above)"
kill -0 "$PID" 2>/dev/null || fail "the server died during the run"
# Which operations answered 2xx at least once (the rest never got past validation or 404).
python3 - "$REPORT.har" "http://$HTTP/openapi.json" <<'PY' || fail "an operation never answered 2xx, or the report did not read (above)"
import json, re, sys, urllib.parse, urllib.request
har = json.load(open(sys.argv[1]))
doc = json.load(urllib.request.urlopen(sys.argv[2]))
ops = [(m.upper(), p) for p, item in doc["paths"].items() for m in item
       if m in ("get", "put", "post", "delete", "patch", "head", "options")]
pattern = {op: re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(op[1])) + "$") for op in ops}
tested, ok = set(), set()
for e in har["log"]["entries"]:
    method = e["request"]["method"].upper()
    path = urllib.parse.urlsplit(e["request"]["url"]).path
    # Literal paths first (/v1/collections/{name}/items/get is not /v1/collections/{name}/items/{id}).
    for op in sorted(ops, key=lambda o: o[1].count("{")):
        if op[0] == method and pattern[op].match(path):
            tested.add(op)
            if 200 <= e["response"]["status"] < 300:
                ok.add(op)
            break
# GET /v1/usage is admin-only (`role=admin` on a key file line): this keyless server answers it 403
# by design, so only its refusals are fuzzed here; its 200 path (per-key counts, date ranges, the
# 400s) is tested in tests/integration/quota.rs. (A keyed run of this script slows every call with
# usage accounting and leaves two collection routes without a 2xx in the time budget.)
ADMIN_ONLY = {("GET", "/v1/usage")}
never = [f"{m} {p}" for m, p in ops
         if (m, p) in tested and (m, p) not in ok and (m, p) not in ADMIN_ONLY]
untested = [f"{m} {p}" for m, p in ops if (m, p) not in tested]
print(f"schemathesis: {len(ok)} of the {len(tested)} operations tested answered 2xx at least once")
if untested:
    print("schemathesis: documented but not tested: " + ", ".join(untested))
if never:
    # An operation no request gets through (a path parameter without an example of a collection
    # made above, a body without a valid example): only its error paths were fuzzed.
    sys.exit("schemathesis: never 2xx: " + ", ".join(never))
PY
kill -TERM "$PID"
wait "$PID" || fail "server did not exit 0 on SIGTERM"
trap - EXIT
rm -rf "$LOG" "$DATA"
