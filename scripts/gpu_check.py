#!/usr/bin/env python3
r"""The Python half of scripts/gpu_check.sh (run on an air-gapped GPU host from an unpacked bundle of
scripts/gpu_bundle.sh): one JSON result file, time-bounded stages, the server's throughput through clip-bench,
GPU-vs-CPU parity over the HTTP API, and the bundled wheels installed without pip or network.

Subcommands (all write into one JSON file, --out, under a lock, atomically):
  init      --out F --budget S                 start the record (the budget clock starts here)
  left      --out F                            print the whole seconds of budget left
  run       --out F --name N --cap S -- CMD    run CMD under min(cap, budget left - reserve) seconds (process group
                                               killed at the limit), record status/rc/seconds/log tail; exit with
                                               CMD's rc, 124 on timeout, 125 when skipped for lack of budget
  record    --out F --name N --status S        record a stage the shell ran itself
  merge     --out F --key a.b.c --file X.json  put X's JSON at results.a.b.c
  wheels    --dir W --target T                 unpack the wheels in W that this Python can use into T (no pip, no
                                               network); fails when a package has no wheel for this Python
  libpaths  --site-packages DIR [...]          print ORT_DYLIB_PATH=... and LD_LIBRARY_PATH=... for onnxruntime-gpu's
                                               libraries and the nvidia-* CUDA/cuDNN wheels (the CUDA-provider run)
  server    --bin B --bench-bin C --model-dir M --provider P ...   start clip-serve, optionally embed the fixture
                                               photographs and texts over HTTP (--save-vectors, --ref: cosine per
                                               item), then clip-bench per modality (per --batches entry, if given)
  finish    --out F [--summary TXT]            total time, the stage summary, and a human-readable summary

Only the standard library is needed (unit-tested without a GPU: scripts/tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import base64
import glob
import json
import math
import mimetypes
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_VERSION = 1
LOG_TAIL_CHARS = 3000
EXIT_TIMEOUT = 124
EXIT_SKIPPED = 125
DEFAULT_BUDGET_S = 540
DEFAULT_IMAGES_DIR = os.path.join(ROOT, "tests", "fixtures", "images")
DEFAULT_TEXTS = os.path.join(ROOT, "tests", "fixtures", "texts.json")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------------------------
# The result file
# --------------------------------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def locked(path: str):
    """An exclusive lock beside the result file, so stages running in parallel do not lose each other's writes."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lk, fcntl.LOCK_UN)


def load(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def save(path: str, doc: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gpu_check.", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=False, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: replace them by None (recursively)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def update(path: str, fn) -> Dict[str, Any]:
    """Read-modify-write the result file under its lock; fn(doc) edits doc in place."""
    with locked(path):
        doc = load(path)
        fn(doc)
        doc = _finite(doc)
        save(path, doc)
        return doc


def set_path(doc: Dict[str, Any], dotted: str, value: Any) -> None:
    """doc["a"]["b"]["c"] = value for "a.b.c", creating dicts on the way (merging into an existing dict value)."""
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise ValueError("empty key")
    d = doc
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    if isinstance(d.get(keys[-1]), dict) and isinstance(value, dict):
        d[keys[-1]].update(value)
    else:
        d[keys[-1]] = value


def init_doc(budget_s: float, start: Optional[float] = None) -> Dict[str, Any]:
    start = time.time() if start is None else start
    return {
        "schema": SCHEMA_VERSION,
        "tool": "scripts/gpu_check.sh",
        "started": now_iso(),
        "start_epoch": start,
        "budget_s": budget_s,
        "machine": {"hostname": platform.node(), "uname": " ".join(platform.uname()), "nproc": os.cpu_count(),
                    "python": platform.python_version()},
        "stages": {},
        "results": {},
    }


def budget_left(doc: Dict[str, Any], now: Optional[float] = None) -> float:
    now = time.time() if now is None else now
    return max(0.0, float(doc.get("budget_s", DEFAULT_BUDGET_S)) - (now - float(doc.get("start_epoch", now))))


def stage_limit(cap: float, left: float, reserve: float = 0.0) -> float:
    """Seconds a stage may run: its own cap, cut to what the budget leaves after `reserve` (kept for later
    stages, e.g. writing the summary)."""
    return max(0.0, min(float(cap), float(left) - float(reserve)))


def status_of(rc: Optional[int]) -> str:
    if rc is None:
        return "skipped"
    if rc == 0:
        return "ok"
    if rc in (EXIT_TIMEOUT, 137, -9, -15):
        return "timeout"
    if rc == EXIT_SKIPPED:
        return "skipped"
    return "failed"


def tail(text: str, n: int = LOG_TAIL_CHARS) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def record_stage(doc: Dict[str, Any], name: str, status: str, rc: Optional[int] = None,
                 seconds: Optional[float] = None, limit_s: Optional[float] = None, log_text: str = "",
                 note: Optional[str] = None) -> None:
    st: Dict[str, Any] = {"status": status, "rc": rc}
    if seconds is not None:
        st["seconds"] = round(float(seconds), 2)
    if limit_s is not None:
        st["limit_s"] = round(float(limit_s), 1)
    if note:
        st["note"] = note
    if log_text:
        st["log_tail"] = tail(log_text)
    st["at"] = now_iso()
    doc.setdefault("stages", {})[name] = st


def summarize(doc: Dict[str, Any], now: Optional[float] = None) -> Dict[str, Any]:
    now = time.time() if now is None else now
    by: Dict[str, List[str]] = {"ok": [], "failed": [], "timeout": [], "skipped": []}
    for name, st in doc.get("stages", {}).items():
        by.setdefault(st.get("status", "failed"), []).append(name)
    total = now - float(doc.get("start_epoch", now))
    return {"total_s": round(total, 1), "within_budget": total <= float(doc.get("budget_s", DEFAULT_BUDGET_S)) + 30,
            "stages": by, "all_ok": not (by["failed"] or by["timeout"])}


# --------------------------------------------------------------------------------------------------------------
# Running a stage
# --------------------------------------------------------------------------------------------------------------


def run_limited(cmd: Sequence[str], limit_s: float, log_path: Optional[str] = None,
                env: Optional[Dict[str, str]] = None) -> Tuple[int, float, str]:
    """Run cmd in its own process group for at most limit_s seconds. Returns (rc, seconds, output); rc 124 when it
    was killed at the limit. The output goes to log_path too (when given)."""
    t0 = time.time()
    log_f = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    try:
        p = subprocess.Popen(list(cmd), stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = p.wait(timeout=max(0.1, limit_s))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            rc = EXIT_TIMEOUT
        log_f.flush()
        log_f.seek(0)
        out = log_f.read().decode("utf-8", "replace")
    finally:
        log_f.close()
    return rc, time.time() - t0, out


def cmd_run(a: argparse.Namespace) -> int:
    cmd = list(a.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("run: no command after --")
    left = budget_left(load(a.out))
    limit = stage_limit(a.cap, left, a.reserve)
    if limit < a.min_seconds:
        update(a.out, lambda d: record_stage(d, a.name, "skipped", None, 0, limit,
                                             note=f"budget: {left:.0f}s left, stage needs >= {a.min_seconds}s"))
        print(f"gpu_check: {a.name}: skipped ({left:.0f}s of budget left)", file=sys.stderr)
        return EXIT_SKIPPED
    print(f"gpu_check: {a.name}: running (limit {limit:.0f}s)", file=sys.stderr)
    try:
        rc, secs, out = run_limited(cmd, limit, a.log)
    except OSError as e:  # the program is missing or not executable: a failed stage, not a crash
        rc, secs, out = 127, 0.0, f"{type(e).__name__}: {e}"
    st = status_of(rc)
    update(a.out, lambda d: record_stage(d, a.name, st, rc, secs, limit, out, a.note))
    print(f"gpu_check: {a.name}: {st} (rc {rc}, {secs:.1f}s)", file=sys.stderr)
    if a.echo:
        sys.stderr.write(tail(out, 1500) + "\n")
    return rc


# --------------------------------------------------------------------------------------------------------------
# Library paths for onnxruntime-gpu
# --------------------------------------------------------------------------------------------------------------


def find_gpu_libs(site_packages: str) -> Dict[str, Any]:
    """Where the pip wheels put the shared libraries the CUDA and TensorRT providers load: onnxruntime-gpu's
    libonnxruntime.so.X (and its providers), nvidia-*-cu12/13 wheels' lib dirs, tensorrt_libs/ (tensorrt-cu12-libs).
    Returns {"ort_dylib": path or None, "lib_dirs": [...], "providers": [names of provider libraries found]}."""
    capi = os.path.join(site_packages, "onnxruntime", "capi")
    cands = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")), key=lambda p: (len(p), p))
    versioned = [p for p in cands if os.path.basename(p) != "libonnxruntime.so"]
    ort = (versioned or cands or [None])[-1]
    dirs: List[str] = []
    if os.path.isdir(capi):
        dirs.append(capi)
    for d in sorted(glob.glob(os.path.join(site_packages, "nvidia", "*", "lib"))):
        dirs.append(d)
    for d in sorted(glob.glob(os.path.join(site_packages, "nvidia", "cu*", "lib"))):
        if d not in dirs:
            dirs.append(d)
    for name in ("tensorrt_libs", "tensorrt_cu12_libs", "tensorrt_cu13_libs", "tensorrt"):
        d = os.path.join(site_packages, name)
        if os.path.isdir(d) and glob.glob(os.path.join(d, "libnvinfer*.so*")):
            dirs.append(d)
    provs = sorted({os.path.basename(p).split(".so")[0].replace("libonnxruntime_providers_", "")
                    for p in glob.glob(os.path.join(capi, "libonnxruntime_providers_*.so*"))})
    return {"ort_dylib": ort, "lib_dirs": dirs, "providers": provs}


def cmd_libpaths(a: argparse.Namespace) -> int:
    ort, dirs, provs = None, [], []
    for sp in a.site_packages:
        libs = find_gpu_libs(sp)
        ort = ort or libs["ort_dylib"]
        dirs += [d for d in libs["lib_dirs"] if d not in dirs]
        provs += [p for p in libs["providers"] if p not in provs]
    ld = ":".join(dirs + ([os.environ["LD_LIBRARY_PATH"]] if os.environ.get("LD_LIBRARY_PATH") else []))
    print(f"ORT_DYLIB_PATH={ort or ''}")
    print(f"LD_LIBRARY_PATH={ld}")
    if a.out:
        update(a.out, lambda d: set_path(d, "results.libraries", {"ort_dylib": ort, "lib_dirs": dirs,
                                                                  "providers": provs}))
    return 0 if ort else 1


# --------------------------------------------------------------------------------------------------------------
# Parity (pure Python, unit-tested)
# --------------------------------------------------------------------------------------------------------------


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise ValueError(f"dimension {len(a)} != {len(b)}")
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0:
        return float("nan")
    return dot / (na * nb)


def parity(ref: Dict[str, Any], got: Dict[str, Any], min_cosine: float) -> Dict[str, Any]:
    """Cosine per item of two vector sets {"images": {name: vec}, "texts": {name: vec}}; items missing on either
    side are listed and make the comparison fail. Returns per-modality n/min/mean/worst items and pass."""
    out: Dict[str, Any] = {"min_cosine_threshold": min_cosine, "modalities": {}}
    ok = True
    for mod in ("images", "texts"):
        r, g = ref.get(mod, {}) or {}, got.get(mod, {}) or {}
        common = [k for k in r if k in g]
        missing = sorted(set(r) ^ set(g))
        cos = {k: cosine(r[k], g[k]) for k in common}
        vals = [v for v in cos.values() if not math.isnan(v)]
        worst = sorted(cos.items(), key=lambda kv: (not math.isnan(kv[1]), kv[1]))[:5]
        m = {"n": len(common), "missing": missing,
             "min": min(vals) if vals else None, "mean": (sum(vals) / len(vals)) if vals else None,
             "worst": [{"item": k, "cosine": v} for k, v in worst],
             "per_item": {k: cos[k] for k in common}}
        m["pass"] = bool(common) and not missing and len(vals) == len(common) and min(vals) >= min_cosine
        ok = ok and m["pass"]
        out["modalities"][mod] = m
    out["pass"] = ok
    return out



# --------------------------------------------------------------------------------------------------------------
# Throughput sweep plan and clip-bench results
# --------------------------------------------------------------------------------------------------------------


def sweep_plan(batches: Sequence[int], max_concurrency: int = 64) -> List[Dict[str, int]]:
    """Server and client settings per --max-batch-size B: enough rows in flight to fill a batch of B twice over
    (closed loop: one batch runs while the next fills), with at most max_concurrency clients."""
    plan = []
    for b in batches:
        if b < 1:
            raise ValueError(f"batch {b}")
        rows = 1 if b == 1 else 2 * b
        conc = min(max_concurrency, max(1, rows))
        items = max(1, -(-rows // conc))
        plan.append({"max_batch_size": b, "concurrency": conc, "items": items,
                     "max_items_per_request": max(64, items), "max_concurrent_requests": max(64, conc * 2),
                     "max_queue_rows": max(1024, 4 * conc * items)})
    return plan


def bench_summary(r: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("modality", "concurrency", "items_per_request", "duration_s", "requests", "errors", "errors_by_code",
            "items_per_s", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "first_error")
    return {k: r[k] for k in keys if k in r}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def list_images(d: str) -> List[str]:
    return [p for p in sorted(glob.glob(os.path.join(d, "*"))) if p.lower().endswith(IMAGE_EXTENSIONS)]

def load_texts(path: str) -> List[Tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    return [(t.get("name", str(i)), t["text"]) if isinstance(t, dict) else (str(i), str(t))
            for i, t in enumerate(items)]


@contextlib.contextmanager
def running_server(cmd: Sequence[str], log_path: str):
    log = open(log_path, "ab")
    log.write((" ".join(cmd) + "\n").encode())
    log.flush()
    p = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.close()

def _seconds(d: str) -> float:
    d = str(d).strip()
    for suffix, mul in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if d.endswith(suffix) and d[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(d[:-len(suffix)]) * mul
    return float(d)


# --------------------------------------------------------------------------------------------------------------
# Wheels without pip: the bundle's pure-Python wheels plus regex's binary ones, one per CPython version
# --------------------------------------------------------------------------------------------------------------


def wheel_tags(filename: str) -> Tuple[str, str, List[str], List[str], List[str]]:
    """(distribution, version, python tags, abi tags, platform tags) of a wheel file name (PEP 427)."""
    base = os.path.basename(filename)
    if not base.endswith(".whl"):
        raise ValueError(f"{base}: not a wheel")
    parts = base[:-4].split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"{base}: not a wheel name (name-version[-build]-python-abi-platform.whl)")
    name, version, py, abi, plat = parts[0], parts[1], parts[-3], parts[-2], parts[-1]
    return name.lower().replace("_", "-"), version, py.split("."), abi.split("."), plat.split(".")


def wheel_fits(filename: str, py: Tuple[int, int], machine: str) -> bool:
    """Whether this CPython (py = (3, 12)) on this machine (platform.machine()) can use the wheel."""
    _, _, pys, abis, plats = wheel_tags(filename)
    cp = f"cp{py[0]}{py[1]}"
    py_ok = any(t in (f"py{py[0]}", f"py{py[0]}{py[1]}", cp) for t in pys) or any(
        t.startswith("cp3") and t[2:].isdigit() and int(t[3:]) <= py[1] and "abi3" in abis for t in pys)
    abi_ok = any(t in ("none", "abi3", cp) for t in abis)
    plat_ok = any(t == "any" or (t.startswith(("manylinux", "linux")) and t.endswith("_" + machine))
                  for t in plats)
    return py_ok and abi_ok and plat_ok


def pick_wheels(files: Iterable[str], py: Tuple[int, int], machine: str) -> Tuple[Dict[str, str], List[str]]:
    """{distribution: the wheel to use} and the distributions that have wheels but none for this Python."""
    chosen: Dict[str, str] = {}
    seen = set()
    for f in sorted(files):
        name = wheel_tags(f)[0]
        seen.add(name)
        if name not in chosen and wheel_fits(f, py, machine):
            chosen[name] = f
    return chosen, sorted(seen - set(chosen))


def cmd_wheels(a: argparse.Namespace) -> int:
    files = sorted(glob.glob(os.path.join(a.dir, "*.whl")))
    py = (sys.version_info[0], sys.version_info[1])
    chosen, missing = pick_wheels(files, py, platform.machine())
    os.makedirs(a.target, exist_ok=True)
    for f in chosen.values():
        with zipfile.ZipFile(f) as z:
            z.extractall(a.target)
    res = {"python": platform.python_version(), "target": a.target,
           "installed": {k: os.path.basename(v) for k, v in chosen.items()}, "no_wheel_for_this_python": missing}
    print(json.dumps(res, indent=1))
    if a.out:
        update(a.out, lambda d: set_path(d, "results.wheels", res))
    return 1 if missing or not files else 0


# --------------------------------------------------------------------------------------------------------------
# The server: started per run, fed by clip-bench (gRPC) and, for parity, by plain HTTP (no client packages)
# --------------------------------------------------------------------------------------------------------------


def http_json(url: str, body: Optional[Dict[str, Any]] = None, timeout: float = 120.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw.decode("utf-8", "replace")


def wait_ready(probe: str, deadline_s: float, proc: Optional[subprocess.Popen] = None) -> None:
    end = time.time() + deadline_s
    last: Any = None
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"{probe}/readyz", timeout=2.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:  # not up yet
            last = e
        time.sleep(0.25)
    raise TimeoutError(f"server not ready after {deadline_s:.0f}s: {last}")


def model_info(probe: str) -> List[str]:
    """The clip_model_info lines of /metrics: the provider and precision actually in use."""
    try:
        text = http_json(f"{probe}/metrics", timeout=5.0)
    except (urllib.error.URLError, OSError, ValueError) as e:
        return [f"unavailable: {e}"]
    return [ln for ln in str(text).splitlines() if ln.startswith("clip_model_info")]


def embed_all(http: str, images: Sequence[str], texts: Sequence[Tuple[str, str]], chunk: int = 16,
              timeout: float = 120.0) -> Dict[str, Any]:
    """Every fixture through POST /v1/embeddings (images as data URIs, one per request; texts in chunks)."""
    out: Dict[str, Any] = {"images": {}, "texts": {}, "errors": {}}
    for p in images:
        name = os.path.basename(p)
        with open(p, "rb") as f:
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            uri = f"data:{mime};base64," + base64.b64encode(f.read()).decode()
        try:
            r = http_json(f"{http}/v1/embeddings", {"input": [uri]}, timeout)
            out["images"][name] = r["data"][0]["embedding"]
        except Exception as e:  # noqa: BLE001 - recorded per item
            out["errors"][f"image:{name}"] = str(e)[:300]
    for i in range(0, len(texts), chunk):
        part = texts[i:i + chunk]
        try:
            r = http_json(f"{http}/v1/embeddings", {"input": [t for _, t in part]}, timeout)
            for (name, _), e in zip(part, sorted(r["data"], key=lambda d: d["index"])):
                out["texts"][name] = e["embedding"]
        except Exception as e:  # noqa: BLE001
            for name, _ in part:
                out["errors"][f"text:{name}"] = str(e)[:300]
    return out


def server_cmd(a: argparse.Namespace, ports: Dict[str, int], data_dir: str,
               plan: Optional[Dict[str, int]] = None) -> List[str]:
    cmd = [a.bin, "serve", "--model-dir", a.model_dir, "--grpc-addr", f"127.0.0.1:{ports['grpc']}",
           "--http-addr", f"127.0.0.1:{ports['http']}", "--probe-addr", f"127.0.0.1:{ports['probe']}",
           "--data-dir", data_dir, "--provider", a.provider, "--log-filter", "warn"]
    if plan:
        cmd += ["--max-batch-size", str(plan["max_batch_size"]),
                "--max-items-per-request", str(plan["max_items_per_request"]),
                "--max-concurrent-requests", str(plan["max_concurrent_requests"]),
                "--max-queue-rows", str(plan["max_queue_rows"])]
        if plan["max_batch_size"] > 1 and a.batch_delay:
            cmd += ["--max-batch-delay", a.batch_delay]
    if a.intra_op_threads:
        cmd += ["--intra-op-threads", str(a.intra_op_threads)]
    return cmd + list(a.server_arg or [])


def bench_cmd(a: argparse.Namespace, grpc_port: int, mod: str, concurrency: int, items: int,
              out_json: str) -> List[str]:
    cmd = [a.bench_bin, "--addr", f"http://127.0.0.1:{grpc_port}", "--modality", mod, "--concurrency",
           str(concurrency), "--items", str(items), "--duration", a.duration, "--out", out_json]
    if mod == "images":
        cmd += ["--image", *(a.bench_image or list_images(a.images)[:1])]
    return cmd


def cmd_server(a: argparse.Namespace) -> int:
    """One provider: parity (optional), then clip-bench per modality, per --batches entry (or once)."""
    key = a.key or a.provider
    end = time.time() + a.limit
    work = tempfile.mkdtemp(prefix=f"gpu_check_{key}_")  # data dirs and bench JSON; removed at the end
    log_path = a.server_log or os.path.join(work, "server.log")
    res: Dict[str, Any] = {"provider": a.provider, "server_log": a.server_log, "runs": {}}
    rc = 0
    plans: List[Optional[Dict[str, int]]] = (
        list(sweep_plan([int(b) for b in a.batches.split(",") if b.strip()], a.max_concurrency))
        if a.batches else [None])
    for n, plan in enumerate(plans):
        label = f"b{plan['max_batch_size']}" if plan else "defaults"
        entry: Dict[str, Any] = {"plan": plan}
        if end - time.time() < _seconds(a.duration) + 15:
            res["runs"][label] = {"skipped": f"budget: {end - time.time():.0f}s left"}
            rc = 1
            continue
        ports = {k: free_port() for k in ("grpc", "http", "probe")}
        try:
            with running_server(server_cmd(a, ports, os.path.join(work, f"data-{label}"), plan), log_path) as proc:
                t0 = time.time()
                wait_ready(f"http://127.0.0.1:{ports['probe']}", max(1.0, min(a.start_timeout, end - time.time())),
                           proc)
                entry["start_s"] = round(time.time() - t0, 2)
                entry["model_info"] = model_info(f"http://127.0.0.1:{ports['probe']}")
                if n == 0 and (a.save_vectors or a.ref):
                    t1 = time.time()
                    vecs = embed_all(f"http://127.0.0.1:{ports['http']}", list_images(a.images), load_texts(a.texts))
                    res["embed_s"] = round(time.time() - t1, 2)
                    res["errors"] = vecs.pop("errors")
                    rc |= 1 if res["errors"] else 0
                    if a.save_vectors:
                        with open(a.save_vectors, "w", encoding="utf-8") as f:
                            json.dump(vecs, f)
                    if a.ref:
                        with open(a.ref, encoding="utf-8") as f:
                            par = parity(json.load(f), vecs, a.min_cosine)
                        for m in par["modalities"].values():
                            m.pop("per_item", None)
                        res["parity"] = par
                        rc |= 0 if par["pass"] else 1
                conc = plan["concurrency"] if plan else a.concurrency
                items = plan["items"] if plan else a.items
                for mod in a.modalities.split(","):
                    if end - time.time() < _seconds(a.duration) + 5:
                        entry[mod] = {"skipped": "budget"}
                        rc = 1
                        continue
                    out_json = os.path.join(work, f"bench-{label}-{mod}.json")
                    brc, _, out = run_limited(bench_cmd(a, ports["grpc"], mod, conc, items, out_json),
                                              min(_seconds(a.duration) * 3 + 30, end - time.time()))
                    if brc == 0 and os.path.exists(out_json):
                        with open(out_json, encoding="utf-8") as f:
                            entry[mod] = bench_summary(json.load(f))
                        rc |= 1 if entry[mod].get("errors") else 0
                    else:
                        entry[mod] = {"error": f"clip-bench rc {brc}", "log_tail": tail(out, 800)}
                        rc = 1
        except Exception as e:  # noqa: BLE001 - recorded, the stage fails
            entry["error"] = f"{type(e).__name__}: {e}"
            rc = 1
        res["runs"][label] = entry
        if a.out:
            update(a.out, lambda d: set_path(d, f"results.server.{key}", res))
        if "start_s" not in entry:  # it did not start: the next batch size would not either (see the log)
            break
    with contextlib.suppress(OSError):
        with open(log_path, "rb") as f:
            res["server_log_tail"] = tail(f.read().decode("utf-8", "replace"), 1500)
    shutil.rmtree(work, ignore_errors=True)
    if a.out:
        update(a.out, lambda d: set_path(d, f"results.server.{key}", res))
    print(json.dumps({k: v for k, v in res.items() if k != "server_log_tail"}, indent=1, default=str))
    return rc


# --------------------------------------------------------------------------------------------------------------
# The human-readable summary
# --------------------------------------------------------------------------------------------------------------


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) else "-"


def human_summary(doc: Dict[str, Any]) -> str:
    """The figures that matter, as text: stages, server throughput, preprocessing ceiling, GPU compute."""
    m, r = doc.get("machine", {}), doc.get("results", {})
    lines = [f"gpu_check {doc.get('started', '')}  host {m.get('hostname')}  {m.get('nproc')} CPUs  "
             f"python {m.get('python')}  mode {m.get('mode', '?')}"]
    for k in ("cpu_model", "cpu_flags", "gpu"):
        if m.get(k):
            lines.append(f"  {k}: {m[k]}")
    lines.append("stages:")
    for name, st in doc.get("stages", {}).items():
        extra = f" ({st['note']})" if st.get("note") else ""
        lines.append(f"  {name:<18} {st.get('status'):<8} {_num(st.get('seconds'))} s{extra}")
    for key, srv in (r.get("server") or {}).items():
        for label, run in (srv.get("runs") or {}).items():
            for mod in ("images", "texts"):
                b = run.get(mod) if isinstance(run, dict) else None
                if isinstance(b, dict) and "items_per_s" in b:
                    lines.append(f"server {key} {label} {mod}: {_num(b['items_per_s'])}/s "
                                 f"(concurrency {b.get('concurrency')} x {b.get('items_per_request')}, "
                                 f"p50 {_num(b.get('latency_ms_p50'))} ms, errors {b.get('errors')})")
        if "parity" in srv:
            p = srv["parity"]
            mins = {k: _num(v.get("min"), "{:.6f}") for k, v in p.get("modalities", {}).items()}
            lines.append(f"parity {key} vs cpu: pass {p.get('pass')} min cosine {mins}")
    for row in (r.get("preprocess") or []):
        if isinstance(row, dict) and "images_per_s" in row:
            lines.append(f"preprocess {os.path.basename(str(row.get('file')))} ({row.get('bytes')} bytes): "
                         f"{_num(row['images_per_s'])} images/s on {row.get('threads')} threads")
    for key in ("gpu_torch", "torch_cpu_smoke"):
        t = r.get(key)
        if isinstance(t, dict):
            lines.append(f"{key}: torch {t.get('torch')} device {t.get('device_name', t.get('device'))}")
            for row in t.get("rows", []):
                lines.append(f"  {row.get('tower')} {row.get('mode'):<5} batch {row.get('batch'):>3}: "
                             + (f"{_num(row.get('items_per_s'))} items/s" if "items_per_s" in row
                                else str(row.get("error") or row.get("skipped"))))
    s = doc.get("summary") or summarize(doc)
    lines.append(f"total {s['total_s']} s; all ok: {s['all_ok']}; failed {s['stages']['failed']}; "
                 f"timeout {s['stages']['timeout']}; skipped {s['stages']['skipped']}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd_name", required=True)

    s = sub.add_parser("init")
    s.add_argument("--out", required=True)
    s.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S)
    s.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")

    s = sub.add_parser("left")
    s.add_argument("--out", required=True)

    s = sub.add_parser("run")
    s.add_argument("--out", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--cap", type=float, required=True, help="the stage's own limit in seconds")
    s.add_argument("--reserve", type=float, default=10.0, help="budget seconds kept for later (default 10)")
    s.add_argument("--min-seconds", type=float, default=5.0, help="skip when less than this is left")
    s.add_argument("--log", default=None)
    s.add_argument("--note", default=None)
    s.add_argument("--echo", action="store_true", help="print the end of the output too")
    s.add_argument("cmd", nargs=argparse.REMAINDER)

    s = sub.add_parser("record")
    s.add_argument("--out", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--status", choices=("ok", "failed", "timeout", "skipped"), default=None)
    s.add_argument("--rc", type=int, default=None)
    s.add_argument("--seconds", type=float, default=None)
    s.add_argument("--log", default=None)
    s.add_argument("--note", default=None)

    s = sub.add_parser("merge")
    s.add_argument("--out", required=True)
    s.add_argument("--key", required=True, help="dotted path under results, e.g. export.verify")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--file")
    g.add_argument("--value", help="a JSON value (or a plain string)")

    s = sub.add_parser("wheels")
    s.add_argument("--dir", required=True, help="folder of .whl files")
    s.add_argument("--target", required=True, help="where to unpack them (put it on PYTHONPATH)")
    s.add_argument("--out", default=None)

    s = sub.add_parser("libpaths")
    s.add_argument("--site-packages", required=True, action="append")
    s.add_argument("--out", default=None)

    s = sub.add_parser("server")
    s.add_argument("--out", default=None)
    s.add_argument("--key", default=None, help="result key (default: the provider name)")
    s.add_argument("--bin", required=True, help="clip-serve binary")
    s.add_argument("--bench-bin", required=True, help="clip-bench binary")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), required=True)
    s.add_argument("--intra-op-threads", type=int, default=None)
    s.add_argument("--server-arg", action="append", default=[], help="extra clip-serve flag (repeatable)")
    s.add_argument("--server-log", default=None)
    s.add_argument("--start-timeout", type=float, default=120.0)
    s.add_argument("--images", default=DEFAULT_IMAGES_DIR)
    s.add_argument("--texts", default=DEFAULT_TEXTS)
    s.add_argument("--ref", default=None, help="vectors JSON to compare with (from --save-vectors of a CPU run)")
    s.add_argument("--save-vectors", default=None)
    s.add_argument("--min-cosine", type=float, default=0.999)
    s.add_argument("--batches", default="", help="restart per --max-batch-size value, e.g. 1,32,256")
    s.add_argument("--concurrency", type=int, default=16, help="clip-bench clients without --batches")
    s.add_argument("--items", type=int, default=8, help="items per request without --batches")
    s.add_argument("--modalities", default="images,texts")
    s.add_argument("--max-concurrency", type=int, default=64)
    s.add_argument("--batch-delay", default="2ms", help="--max-batch-delay for sweep batches > 1")
    s.add_argument("--bench-image", action="append", default=[], help="image for clip-bench (repeatable)")
    s.add_argument("--duration", default="10s")
    s.add_argument("--limit", type=float, default=300.0, help="seconds for everything this command does")

    s = sub.add_parser("finish")
    s.add_argument("--out", required=True)
    s.add_argument("--summary", default=None, help="also write the human-readable summary here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd_name == "init":
        doc = init_doc(a.budget)
        for kv in a.meta:
            k, _, v = kv.partition("=")
            doc["machine"][k] = v
        with locked(a.out):
            save(a.out, doc)
        return 0
    if a.cmd_name == "left":
        print(int(budget_left(load(a.out))))
        return 0
    if a.cmd_name == "run":
        return cmd_run(a)
    if a.cmd_name == "record":
        text = ""
        if a.log and os.path.exists(a.log):
            with open(a.log, encoding="utf-8", errors="replace") as f:
                text = f.read()
        st = a.status or status_of(a.rc)
        update(a.out, lambda d: record_stage(d, a.name, st, a.rc, a.seconds, None, text, a.note))
        return 0
    if a.cmd_name == "merge":
        if a.file:
            try:
                with open(a.file, encoding="utf-8") as f:
                    value = json.load(f)
            except (OSError, ValueError) as e:
                print(f"gpu_check: merge {a.key}: {e}", file=sys.stderr)
                return 1
        else:
            try:
                value = json.loads(a.value)
            except ValueError:
                value = a.value
        update(a.out, lambda d: set_path(d, "results." + a.key, value))
        return 0
    if a.cmd_name == "wheels":
        return cmd_wheels(a)
    if a.cmd_name == "libpaths":
        return cmd_libpaths(a)
    if a.cmd_name == "server":
        return cmd_server(a)
    if a.cmd_name == "finish":
        doc = update(a.out, lambda d: d.update({"finished": now_iso(), "summary": summarize(d)}))
        text = human_summary(doc)
        with contextlib.suppress(OSError):
            os.remove(a.out + ".lock")
        if a.summary:
            with open(a.summary, "w", encoding="utf-8") as f:
                f.write(text)
        sys.stderr.write(text)
        return 0 if doc["summary"]["all_ok"] else 1
    raise AssertionError(a.cmd_name)


if __name__ == "__main__":
    sys.exit(main())
