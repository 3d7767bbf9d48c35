#!/usr/bin/env python3
r"""Throughput baselines for the batching benchmark (scripts/bench_batching.sh), in items/s at each batch size:

  ort_compute      onnxruntime alone on ready tensors (the ceiling a server can approach)
  ort_pil          PIL decode + open_clip's preprocess transform / open_clip's tokenizer, then onnxruntime
  torch            open_clip's own pipeline: PIL decode + preprocess / tokenizer, then the torch model
                   (torch.no_grad, torch.set_num_threads(threads))

for images (a JPEG given as bytes, decoded every time) and texts. Each measurement runs batches back to back
for --seconds after one warm-up batch; single process, no network. Same model directory and thread count as
the server it is compared with. Writes JSON to --out.

    python scripts/bench_baselines.py --model-dir models/ViT-B-32__datacomp_xl_s13b_b90k --threads 2 \
        --jpeg bench-results/jpeg_500x375.jpg --batches 1,4,16,32 --out bench-results/baselines.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image


def rate(fn, items: int, seconds: float) -> dict:
    fn()  # warm-up
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds:
            break
    return {"items_per_s": n * items / el, "batch_ms": el / n * 1e3, "batches": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--jpeg", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import onnxruntime as ort
    import open_clip
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from reference import load_source_model  # noqa: E402

    torch.set_num_threads(a.threads)
    model, preprocess, cfg, base_model = load_source_model(a.model_dir)
    model.eval()
    tokenizer = open_clip.get_tokenizer(base_model, context_length=cfg["context_length"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    vis = ort.InferenceSession(os.path.join(a.model_dir, "visual", "model.onnx"), so, providers=["CPUExecutionProvider"])
    txt = ort.InferenceSession(os.path.join(a.model_dir, "textual", "model.onnx"), so, providers=["CPUExecutionProvider"])
    vin, tin = vis.get_inputs()[0], txt.get_inputs()[0]
    if vin.type != "tensor(float)":
        raise SystemExit("bench_baselines.py expects the standard export (float32 NCHW input)")
    text_dtype = np.int32 if tin.type == "tensor(int32)" else np.int64
    jpeg = open(a.jpeg, "rb").read()
    text = "a photo of a cat sitting on a wooden table"

    def pixels(n: int) -> np.ndarray:
        return torch.stack([preprocess(Image.open(io.BytesIO(jpeg)).convert("RGB")) for _ in range(n)]).numpy()

    results = {}
    for b in [int(x) for x in a.batches.split(",")]:
        ready_px = pixels(b)
        ready_ids = tokenizer([f"{text} {i}" for i in range(b)]).numpy().astype(text_dtype)
        texts = [f"{text} {i}" for i in range(b)]
        r = {
            "images": {
                "ort_compute": rate(lambda: vis.run(None, {vin.name: ready_px}), b, a.seconds),
                "ort_pil": rate(lambda: vis.run(None, {vin.name: pixels(b)}), b, a.seconds),
            },
            "texts": {
                "ort_compute": rate(lambda: txt.run(None, {tin.name: ready_ids}), b, a.seconds),
                "ort_pil": rate(
                    lambda: txt.run(None, {tin.name: tokenizer(texts).numpy().astype(text_dtype)}), b, a.seconds
                ),
            },
        }
        if not a.skip_torch:
            with torch.no_grad():
                r["images"]["torch"] = rate(lambda: model.encode_image(torch.from_numpy(pixels(b))), b, a.seconds)
                r["texts"]["torch"] = rate(lambda: model.encode_text(tokenizer(texts)), b, a.seconds)
        results[str(b)] = r
        print(f"batch {b}: " + ", ".join(
            f"{m} {k} {v['items_per_s']:.1f}/s" for m in ("images", "texts") for k, v in r[m].items()), flush=True)
    out = {
        "model_dir": a.model_dir,
        "weights": cfg.get("weights"),
        "threads": a.threads,
        "seconds_per_measurement": a.seconds,
        "jpeg": a.jpeg,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
                     "pillow": Image.__version__},
        "by_batch": results,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
