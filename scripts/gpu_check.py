#!/usr/bin/env python3
r"""The Python half of scripts/gpu_check.sh: one JSON result file, time-bounded stages, GPU-vs-CPU parity through
the gRPC API, the clip-bench throughput sweep and an engine-only ONNX Runtime loop.

Subcommands (all write into one JSON file, --out, under a lock, atomically):
  init      --out F --budget S                 start the record (the budget clock starts here)
  left      --out F                            print the whole seconds of budget left
  run       --out F --name N --cap S -- CMD    run CMD under min(cap, budget left - reserve) seconds (process group
                                               killed at the limit), record status/rc/seconds/log tail; exit with
                                               CMD's rc, 124 on timeout, 125 when skipped for lack of budget
  record    --out F --name N --status S        record a stage the shell ran itself
  merge     --out F --key a.b.c --file X.json  put X's JSON at results.a.b.c
  libpaths  --site-packages DIR                print ORT_DYLIB_PATH=... and LD_LIBRARY_PATH=... for onnxruntime-gpu,
                                               the nvidia-* CUDA/cuDNN wheels and TensorRT's wheels
  provider  --bin B --model-dir M --provider P ...   start clip-serve, embed the fixture photographs and texts,
                                               compare with --ref vectors (cosine per item), then the throughput
                                               sweep with clip-bench (server restarted per --batches entry)
  engine-bench --model-dir M --providers cuda,tensorrt   onnxruntime session.run loop at fixed batches
  finish    --out F                            total time and the stage summary

Only the standard library is needed for init/left/run/record/merge/libpaths/finish and the parity arithmetic
(unit-tested without a GPU or torch: scripts/tests/test_gpu_check.py). `provider` needs grpcio and grpcio-tools
(stubs generated at run time from proto/clip/v1/clip.proto); `engine-bench` needs numpy and onnxruntime-gpu.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_VERSION = 1
LOG_TAIL_CHARS = 3000
EXIT_TIMEOUT = 124
EXIT_SKIPPED = 125
DEFAULT_BUDGET_S = 420
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
    libs = find_gpu_libs(a.site_packages)
    ld = ":".join(libs["lib_dirs"] + ([os.environ["LD_LIBRARY_PATH"]] if os.environ.get("LD_LIBRARY_PATH") else []))
    print(f"ORT_DYLIB_PATH={libs['ort_dylib'] or ''}")
    print(f"LD_LIBRARY_PATH={ld}")
    if a.out:
        update(a.out, lambda d: set_path(d, "results.libraries", libs))
    return 0 if libs["ort_dylib"] else 1


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


# --------------------------------------------------------------------------------------------------------------
# The gRPC client (grpcio + grpcio-tools, stubs generated at run time)
# --------------------------------------------------------------------------------------------------------------


def grpc_stubs(proto_root: str = os.path.join(ROOT, "proto")):
    """Generate clip_pb2/clip_pb2_grpc from proto/clip/v1/clip.proto into a temp dir and import them."""
    from grpc_tools import protoc  # type: ignore
    import importlib

    out = tempfile.mkdtemp(prefix="clip_stubs_")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_root, "clip", "v1", "clip.proto")])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("clip.v1.clip_pb2")
    pb2_grpc = importlib.import_module("clip.v1.clip_pb2_grpc")
    return pb2, pb2_grpc


class Client:
    def __init__(self, addr: str):
        import grpc  # type: ignore

        self.pb2, self.grpc_mod = grpc_stubs()
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(addr, options=opts)
        self.embed = self.grpc_mod.EmbedStub(self.channel)
        self.info = self.grpc_mod.InfoStub(self.channel)

    def get_info(self, timeout: float = 5.0) -> Dict[str, Any]:
        from google.protobuf.json_format import MessageToDict  # type: ignore

        return MessageToDict(self.info.GetInfo(self.pb2.GetInfoRequest(), timeout=timeout))

    def wait_ready(self, deadline_s: float, proc: Optional[subprocess.Popen] = None) -> Dict[str, Any]:
        end = time.time() + deadline_s
        last = None
        while time.time() < end:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} during start-up")
            try:
                return self.get_info(timeout=2.0)
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
                time.sleep(0.25)
        raise TimeoutError(f"server not ready after {deadline_s:.0f}s: {last}")

    def embed_all(self, images: Sequence[str], texts: Sequence[Tuple[str, str]], text_chunk: int = 16,
                  timeout: float = 120.0) -> Dict[str, Any]:
        out: Dict[str, Any] = {"images": {}, "texts": {}, "errors": {}}
        for p in images:
            name = os.path.basename(p)
            with open(p, "rb") as f:
                data = f.read()
            try:
                r = self.embed.EmbedImages(self.pb2.EmbedImagesRequest(images=[data]), timeout=timeout)
                out["images"][name] = list(r.embeddings[0].values)
            except Exception as e:  # noqa: BLE001 - record per item
                out["errors"][f"image:{name}"] = str(e)[:300]
        for i in range(0, len(texts), text_chunk):
            chunk = texts[i:i + text_chunk]
            try:
                r = self.embed.EmbedTexts(self.pb2.EmbedTextsRequest(texts=[t for _, t in chunk]), timeout=timeout)
                for (name, _), e in zip(chunk, r.embeddings):
                    out["texts"][name] = list(e.values)
            except Exception as e:  # noqa: BLE001
                for name, _ in chunk:
                    out["errors"][f"text:{name}"] = str(e)[:300]
        return out


def load_texts(path: str) -> List[Tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    return [(t.get("name", str(i)), t["text"]) if isinstance(t, dict) else (str(i), str(t))
            for i, t in enumerate(items)]


def server_cmd(a: argparse.Namespace, port: int, data_dir: str, plan: Optional[Dict[str, int]] = None) -> List[str]:
    cmd = [a.bin, "serve", "--model-dir", a.model_dir, "--grpc-addr", f"127.0.0.1:{port}",
           "--http-addr", "127.0.0.1:0", "--data-dir", data_dir, "--provider", a.provider, "--log-filter", "warn"]
    if plan:
        cmd += ["--max-batch-size", str(plan["max_batch_size"]),
                "--max-items-per-request", str(plan["max_items_per_request"]),
                "--max-concurrent-requests", str(plan["max_concurrent_requests"]),
                "--max-queue-rows", str(plan["max_queue_rows"])]
        if plan["max_batch_size"] > 1 and a.batch_delay:
            cmd += ["--max-batch-delay", a.batch_delay]
    if a.provider == "tensorrt":
        if a.trt_fp16:
            cmd.append("--trt-fp16")
        if a.trt_engine_cache_dir:
            cmd += ["--trt-engine-cache-dir", a.trt_engine_cache_dir]
    if a.intra_op_threads:
        cmd += ["--intra-op-threads", str(a.intra_op_threads)]
    return cmd + list(a.server_arg or [])


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


def cmd_provider(a: argparse.Namespace) -> int:
    """Parity (embed the fixtures, compare with --ref) then the throughput sweep, for one provider."""
    key = a.key or a.provider
    end = time.time() + a.limit
    images = list_images(a.images)
    texts = load_texts(a.texts)
    work = tempfile.mkdtemp(prefix=f"gpu_check_{key}_")
    log_path = a.server_log or os.path.join(work, "server.log")
    res: Dict[str, Any] = {"provider": a.provider, "trt_fp16": bool(a.trt_fp16), "server_log": log_path}
    rc = 0

    def put(sub: str, value: Any) -> None:
        if a.out:
            update(a.out, lambda d: set_path(d, f"results.{sub}.{key}", value))

    # 1. parity at the default batching
    port = free_port()
    t0 = time.time()
    try:
        with running_server(server_cmd(a, port, os.path.join(work, "data")), log_path) as proc:
            c = Client(f"127.0.0.1:{port}")
            info = c.wait_ready(max(1.0, end - time.time()), proc)
            res["start_s"] = round(time.time() - t0, 2)
            res["info"] = {k: info.get(k) for k in ("executionProvider", "onnxruntimeVersion", "modelName",
                                                    "weights", "text", "image")}
            t1 = time.time()
            vecs = c.embed_all(images, texts)
            res["embed_s"] = round(time.time() - t1, 2)
            res["errors"] = vecs.pop("errors")
            if a.save_vectors:
                with open(a.save_vectors, "w") as f:
                    json.dump(vecs, f)
            if a.ref:
                with open(a.ref) as f:
                    ref = json.load(f)
                par = parity(ref, vecs, a.min_cosine)
                if not a.per_item:
                    for m in par["modalities"].values():
                        m.pop("per_item", None)
                res["parity"] = par
                if not par["pass"]:
                    rc = 1
            if res["errors"]:
                rc = 1
    except Exception as e:  # noqa: BLE001 - record and go on to the sweep
        res["error"] = f"{type(e).__name__}: {e}"
        rc = 1
    with contextlib.suppress(OSError):
        with open(log_path, "rb") as f:
            res["server_log_tail"] = tail(f.read().decode("utf-8", "replace"), 1500)
    put("parity", res)

    # 2. throughput sweep
    if a.batches and a.bench_bin:
        sweep: Dict[str, Any] = {}
        image = a.bench_image or (images[0] if images else None)
        for plan in sweep_plan([int(b) for b in a.batches.split(",") if b.strip()], a.max_concurrency):
            b = plan["max_batch_size"]
            need = 2 * _seconds(a.duration) + 10
            if end - time.time() < need:
                sweep[f"b{b}"] = {"skipped": f"budget: {end - time.time():.0f}s left"}
                continue
            port = free_port()
            entry: Dict[str, Any] = {"plan": plan}
            try:
                with running_server(server_cmd(a, port, os.path.join(work, f"data-b{b}"), plan), log_path) as proc:
                    c = Client(f"127.0.0.1:{port}")
                    t0 = time.time()
                    c.wait_ready(max(1.0, end - time.time()), proc)
                    entry["start_s"] = round(time.time() - t0, 2)
                    for mod in a.modalities.split(","):
                        if end - time.time() < _seconds(a.duration) + 5:
                            entry[mod] = {"skipped": "budget"}
                            continue
                        out_json = os.path.join(work, f"bench-b{b}-{mod}.json")
                        cmd = [a.bench_bin, "--addr", f"http://127.0.0.1:{port}", "--modality", mod,
                               "--concurrency", str(plan["concurrency"]), "--items", str(plan["items"]),
                               "--duration", a.duration, "--out", out_json]
                        if mod == "images" and image:
                            cmd += ["--image", image]
                        brc, secs, out = run_limited(cmd, min(_seconds(a.duration) * 3 + 30, end - time.time()))
                        if brc == 0 and os.path.exists(out_json):
                            with open(out_json) as f:
                                entry[mod] = bench_summary(json.load(f))
                        else:
                            entry[mod] = {"error": f"clip-bench rc {brc}", "log_tail": tail(out, 800)}
                            rc = 1
            except Exception as e:  # noqa: BLE001
                entry["error"] = f"{type(e).__name__}: {e}"
                rc = 1
            sweep[f"b{b}"] = entry
            put("throughput", sweep)
    return rc


def _seconds(d: str) -> float:
    d = str(d).strip()
    for suffix, mul in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if d.endswith(suffix) and d[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(d[:-len(suffix)]) * mul
    return float(d)


# --------------------------------------------------------------------------------------------------------------
# Engine-only figures: onnxruntime session.run at fixed batch (numpy in and out: includes host<->device copies)
# --------------------------------------------------------------------------------------------------------------


def cmd_engine_bench(a: argparse.Namespace) -> int:
    import numpy as np
    import onnxruntime as ort

    with contextlib.suppress(Exception):
        ort.preload_dlls()  # onnxruntime-gpu >= 1.21: load the CUDA/cuDNN libraries of the nvidia-* wheels
    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    end = time.time() + a.limit
    res: Dict[str, Any] = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(),
                           "note": "session.run with numpy inputs: host<->device copies included", "rows": []}
    rc = 0
    for prov in a.providers.split(","):
        for tower in ("visual", "textual"):
            path = os.path.join(a.model_dir, tower, "model.onnx")
            if time.time() > end - 10:
                res["rows"].append({"provider": prov, "tower": tower, "skipped": "budget"})
                continue
            try:
                probe = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                inp = probe.get_inputs()[0]
                del probe
                dims = list(inp.shape)
                if inp.type == "tensor(float)":
                    fixed = [int(d) if isinstance(d, int) else 0 for d in dims]
                    make = lambda b, l=None: np.random.default_rng(0).standard_normal(
                        [b] + fixed[1:]).astype(np.float32)
                    cases = [None]
                else:
                    dt = np.int32 if inp.type == "tensor(int32)" else np.int64
                    ctx = dims[1] if isinstance(dims[1], int) else a.context_length
                    cases = [ctx] if isinstance(dims[1], int) else sorted({ctx, 16}, reverse=True)

                    def make(b, l, dt=dt):
                        x = np.zeros((b, l), dtype=dt)
                        x[:, 0], x[:, 1:l - 1], x[:, l - 1] = 49406, 320, 49407
                        return x
                static1 = dims[0] == 1
                opts: Dict[str, Any] = {}
                if prov == "tensorrt":
                    rest = lambda b: "x".join(str(v) for v in [b] + (
                        [3] + fixed[2:] if inp.type == "tensor(float)" else [a.context_length]))
                    mx = 1 if static1 else max(batches)
                    opts = {"trt_fp16_enable": bool(a.trt_fp16), "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": a.trt_cache or tempfile.mkdtemp(prefix="trt_py_")}
                    if not static1:
                        mn = f"{inp.name}:{rest(1)}" if inp.type == "tensor(float)" else f"{inp.name}:1x1"
                        opts.update({"trt_profile_min_shapes": mn, "trt_profile_opt_shapes": f"{inp.name}:{rest(mx)}",
                                     "trt_profile_max_shapes": f"{inp.name}:{rest(mx)}"})
                    providers = [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider"]
                elif prov == "cuda":
                    providers = ["CUDAExecutionProvider"]
                else:
                    providers = ["CPUExecutionProvider"]
                t0 = time.time()
                s = ort.InferenceSession(path, providers=providers)
                load_s = time.time() - t0
                want = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                        "cpu": "CPUExecutionProvider"}[prov]
                if s.get_providers()[0] != want:
                    raise RuntimeError(f"{want} did not start (session providers {s.get_providers()}; "
                                       f"available {ort.get_available_providers()})")
                for l in cases:
                    for b in batches:
                        if static1 and b != 1:
                            continue
                        if time.time() > end - 5:
                            res["rows"].append({"provider": prov, "tower": tower, "batch": b, "skipped": "budget"})
                            continue
                        x = make(b, l)
                        t0 = time.time()
                        s.run(None, {inp.name: x})  # warm-up (TensorRT may build here)
                        first = time.time() - t0
                        times = []
                        t_stop = time.time() + a.seconds
                        while len(times) < 3 or time.time() < t_stop:
                            t1 = time.perf_counter()
                            s.run(None, {inp.name: x})
                            times.append(time.perf_counter() - t1)
                            if time.time() > end:
                                break
                        med = sorted(times)[len(times) // 2]
                        row = {"provider": prov, "active": s.get_providers()[0], "tower": tower, "batch": b,
                               "median_ms": med * 1e3, "items_per_s": b / med, "runs": len(times),
                               "first_run_s": round(first, 2), "session_s": round(load_s, 2)}
                        if l is not None:
                            row["seq_len"] = l
                        res["rows"].append(row)
                        print(json.dumps(row), flush=True)
            except Exception as e:  # noqa: BLE001
                res["rows"].append({"provider": prov, "tower": tower, "error": f"{type(e).__name__}: {e}"[:500]})
                rc = 1
    if a.out:
        update(a.out, lambda d: set_path(d, f"results.engine.{a.key or 'onnxruntime'}", res))
    return rc


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

    s = sub.add_parser("libpaths")
    s.add_argument("--site-packages", required=True)
    s.add_argument("--out", default=None)

    s = sub.add_parser("provider")
    s.add_argument("--out", default=None)
    s.add_argument("--key", default=None, help="result key (default: the provider name)")
    s.add_argument("--bin", required=True, help="clip-serve binary")
    s.add_argument("--bench-bin", default=None, help="clip-bench binary (no sweep without it)")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), required=True)
    s.add_argument("--trt-fp16", action="store_true")
    s.add_argument("--trt-engine-cache-dir", default=None)
    s.add_argument("--intra-op-threads", type=int, default=None)
    s.add_argument("--server-arg", action="append", default=[], help="extra clip-serve flag (repeatable)")
    s.add_argument("--server-log", default=None)
    s.add_argument("--images", default=DEFAULT_IMAGES_DIR)
    s.add_argument("--texts", default=DEFAULT_TEXTS)
    s.add_argument("--ref", default=None, help="vectors JSON to compare with (from --save-vectors of a CPU run)")
    s.add_argument("--save-vectors", default=None)
    s.add_argument("--min-cosine", type=float, default=0.999)
    s.add_argument("--per-item", action="store_true", help="keep every item's cosine in the result")
    s.add_argument("--batches", default="", help="throughput sweep: --max-batch-size values, e.g. 1,32,256")
    s.add_argument("--modalities", default="images,texts")
    s.add_argument("--max-concurrency", type=int, default=64)
    s.add_argument("--batch-delay", default="2ms", help="--max-batch-delay for sweep batches > 1")
    s.add_argument("--bench-image", default=None)
    s.add_argument("--duration", default="5s")
    s.add_argument("--limit", type=float, default=300.0, help="seconds for everything this command does")

    s = sub.add_parser("engine-bench")
    s.add_argument("--out", default=None)
    s.add_argument("--key", default=None)
    s.add_argument("--model-dir", required=True)
    s.add_argument("--providers", default="cuda")
    s.add_argument("--batches", default="1,32,256")
    s.add_argument("--seconds", type=float, default=2.0)
    s.add_argument("--context-length", type=int, default=77)
    s.add_argument("--trt-fp16", action="store_true")
    s.add_argument("--trt-cache", default=None)
    s.add_argument("--limit", type=float, default=120.0)

    s = sub.add_parser("finish")
    s.add_argument("--out", required=True)
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
            with open(a.file, encoding="utf-8") as f:
                value = json.load(f)
        else:
            try:
                value = json.loads(a.value)
            except ValueError:
                value = a.value
        update(a.out, lambda d: set_path(d, "results." + a.key, value))
        return 0
    if a.cmd_name == "libpaths":
        return cmd_libpaths(a)
    if a.cmd_name == "provider":
        return cmd_provider(a)
    if a.cmd_name == "engine-bench":
        return cmd_engine_bench(a)
    if a.cmd_name == "finish":
        doc = update(a.out, lambda d: d.update({"finished": now_iso(), "summary": summarize(d)}))
        s = doc["summary"]
        print(f"gpu_check: {s['total_s']}s; ok {s['stages']['ok']}; failed {s['stages']['failed']}; "
              f"timeout {s['stages']['timeout']}; skipped {s['stages']['skipped']}", file=sys.stderr)
        return 0
    raise AssertionError(a.cmd_name)


if __name__ == "__main__":
    sys.exit(main())
