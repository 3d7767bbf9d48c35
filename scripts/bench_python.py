#!/usr/bin/env python3
r"""Python baseline for clip-serve: onnxruntime + open_clip preprocessing latency on one model directory.

Measures, with onnxruntime's CPU provider at each of `--threads` intra-op thread counts (medians of `--runs`
runs after warm-up; p90 and min too):
  * text, one request:  open_clip tokenizer + text tower ("e2e"), and the text tower alone ("compute")
  * image, one request: PIL decode of a ~500x375 JPEG + open_clip's inference transform + image tower ("e2e"),
                        and the image tower alone ("compute")
  * open_clip preprocessing per image (PIL decode, transform, both) for that JPEG and for the ~4000x3000
    fixture JPEG (tests/fixtures/images/coffee_4000x3000.jpg)
  * throughput at batch 8 (`--batch`) for both towers, compute only
It prints a table and writes the numbers as JSON to `--out`. The ~500x375 JPEG is made in memory from the
large fixture (resized, quality 85), so the script needs nothing but the repository and the Python deps.

Works on either graph variant (standard float32 NCHW / int64, or immich-style uint8 NHWC / int32).
Random weights time exactly like real ones (same graph, same shapes); the JSON records which weights it ran.

    python scripts/bench_python.py --model-dir models/ViT-B-32__datacomp_xl_s13b_b90k --threads 2 \
        --out bench-python.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
from PIL import Image


def timeit(fn: Callable[[], object], runs: int, warmup: int) -> Dict[str, float]:
    """Median / p90 / min wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    ts: List[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {"median_ms": statistics.median(ts), "p90_ms": ts[min(len(ts) - 1, int(0.9 * len(ts)))],
            "min_ms": ts[0], "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--large-jpeg", default="tests/fixtures/images/coffee_4000x3000.jpg")
    ap.add_argument("--small-jpeg", help="the ~500x375 JPEG to use (default: made in memory from --large-jpeg)")
    ap.add_argument("--threads", default=str(os.cpu_count() or 1),
                    help="onnxruntime intra-op threads; a comma list (e.g. 1,2) measures each side by side")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="batch size for the throughput rows (0: skip)")
    ap.add_argument("--out", required=True, help="JSON output path")
    a = ap.parse_args()
    a.threads = [int(t) for t in str(a.threads).split(",") if t]

    import onnxruntime as ort
    import torch
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    torch.set_num_threads(1)  # the transform's ToTensor/Normalize; PIL resizing is single-threaded anyway
    with open(os.path.join(a.model_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(a.model_dir, "visual", "preprocess_cfg.json")) as f:
        ppj = json.load(f)
    pp = PreprocessCfg(size=tuple(ppj["size"]), mode=ppj["mode"], mean=tuple(ppj["mean"]), std=tuple(ppj["std"]),
                       interpolation=ppj["interpolation"], resize_mode=ppj["resize_mode"],
                       fill_color=ppj["fill_color"])
    transform = image_transform_v2(pp, is_train=False)
    base_model = cfg.get("exporter", {}).get("base_model") or cfg["model_name"]
    tokenizer = open_clip.get_tokenizer(base_model, context_length=cfg["context_length"])

    def open_sessions(threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        vis = ort.InferenceSession(os.path.join(a.model_dir, "visual", "model.onnx"), so,
                                   providers=["CPUExecutionProvider"])
        txt = ort.InferenceSession(os.path.join(a.model_dir, "textual", "model.onnx"), so,
                                   providers=["CPUExecutionProvider"])
        return vis, txt, time.perf_counter() - t0

    vis, txt, _ = open_sessions(1)
    vin, tin = vis.get_inputs()[0], txt.get_inputs()[0]
    uint8_nhwc = vin.type == "tensor(uint8)"
    text_dtype = np.int32 if tin.type == "tensor(int32)" else np.int64
    static_batch = isinstance(vin.shape[0], int)
    vis = txt = None  # free the probe sessions

    mean = np.asarray(pp.mean, np.float32)[:, None, None]
    std = np.asarray(pp.std, np.float32)[:, None, None]

    def to_input(t: torch.Tensor) -> np.ndarray:
        """open_clip's normalized tensor -> this graph's image input (batch of 1)."""
        x = t.numpy()[None]
        if uint8_nhwc:
            return np.rint((x * std + mean) * 255.0).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return x

    # Inputs: a ~500x375 JPEG made from the large fixture, and the large fixture itself.
    with open(a.large_jpeg, "rb") as f:
        large_bytes = f.read()
    with Image.open(io.BytesIO(large_bytes)) as im:
        large_size = im.size
        small = im.convert("RGB").resize((500, 375), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    small_bytes = buf.getvalue()
    if a.small_jpeg:
        with open(a.small_jpeg, "rb") as f:
            small_bytes = f.read()
    text = "a photo of a cat sitting on a wooden table next to a cup of coffee"

    def decode(b: bytes) -> Image.Image:
        im = Image.open(io.BytesIO(b))
        im.load()
        return im

    load_before = os.getloadavg()
    # Preprocessing (single-threaded Python/PIL, independent of onnxruntime's threads).
    pre: Dict[str, object] = {}
    for label, data, runs in (("jpeg_500x375", small_bytes, a.runs),
                              (f"jpeg_{large_size[0]}x{large_size[1]}", large_bytes, max(5, a.runs // 2))):
        img = decode(data)
        pre[label] = {
            "bytes": len(data),
            "decode": timeit(lambda: decode(data), runs, 1),
            "transform": timeit(lambda: transform(img), runs, 1),
            "decode_and_transform": timeit(lambda: transform(decode(data)), runs, 1),
        }
    tokenize = timeit(lambda: tokenizer([text]), a.runs, a.warmup)
    ids = tokenizer([text]).numpy().astype(text_dtype)
    x1 = to_input(transform(decode(small_bytes)))

    per_threads: Dict[str, Dict[str, object]] = {}
    for threads in a.threads:
        vis, txt, load_s = open_sessions(threads)
        res: Dict[str, object] = {"session_load_s": load_s}
        res["text_compute_b1"] = timeit(lambda: txt.run(None, {tin.name: ids}), a.runs, a.warmup)
        res["text_e2e_b1"] = timeit(
            lambda: txt.run(None, {tin.name: tokenizer([text]).numpy().astype(text_dtype)}), a.runs, a.warmup)
        res["image_compute_b1"] = timeit(lambda: vis.run(None, {vin.name: x1}), a.runs, a.warmup)
        res["image_e2e_b1_500x375_jpeg"] = timeit(
            lambda: vis.run(None, {vin.name: to_input(transform(decode(small_bytes)))}), a.runs, a.warmup)
        if a.batch and not static_batch:
            xb = np.repeat(x1, a.batch, axis=0)
            idsb = np.repeat(ids, a.batch, axis=0)
            runs = max(5, a.runs // 2)
            vb = timeit(lambda: vis.run(None, {vin.name: xb}), runs, 1)
            tb = timeit(lambda: txt.run(None, {tin.name: idsb}), runs, 1)
            res[f"image_compute_b{a.batch}"] = {**vb, "items_per_s": a.batch / (vb["median_ms"] / 1e3)}
            res[f"text_compute_b{a.batch}"] = {**tb, "items_per_s": a.batch / (tb["median_ms"] / 1e3)}
        per_threads[str(threads)] = res
        vis = txt = None

    import PIL
    out = {
        "model_dir": a.model_dir,
        "model_name": cfg.get("model_name"),
        "weights": cfg.get("weights"),
        "variant": cfg.get("exporter", {}).get("variant"),
        "runs": a.runs,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(), "machine": platform.machine(),
                    # other work on the machine skews the numbers: compare only runs made side by side
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"onnxruntime": ort.__version__, "open_clip": open_clip.__version__, "torch": torch.__version__,
                     "pillow": PIL.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "preprocess": pre,
        "text_tokenize": tokenize,
        "onnxruntime_by_intra_op_threads": per_threads,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")

    print(f"model {a.model_dir} ({cfg.get('weights')} weights), onnxruntime {ort.__version__}; medians of "
          f"{a.runs} runs; load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'measurement':52s} {'median ms':>10s} {'p90 ms':>9s} {'min ms':>9s}")

    def row(label, r, extra=""):
        print(f"{label:52s} {r['median_ms']:10.2f} {r['p90_ms']:9.2f} {r['min_ms']:9.2f}{extra}")

    row("text: tokenize (open_clip)", tokenize)
    for label, p in pre.items():
        for k in ("decode", "transform", "decode_and_transform"):
            row(f"preprocess {label}: {k}", p[k])
    for threads, res in per_threads.items():
        row(f"[{threads} thr] text: compute b1", res["text_compute_b1"])
        row(f"[{threads} thr] text: tokenize + compute b1", res["text_e2e_b1"])
        row(f"[{threads} thr] image: compute b1", res["image_compute_b1"])
        row(f"[{threads} thr] image: decode+preprocess+compute b1 (500x375)", res["image_e2e_b1_500x375_jpeg"])
        for k in (f"image_compute_b{a.batch}", f"text_compute_b{a.batch}"):
            if k in res:
                row(f"[{threads} thr] {k}", res[k], f"   {res[k]['items_per_s']:.1f}/s")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
