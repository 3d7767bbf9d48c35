#!/usr/bin/env python3
"""A full-size random-weight model that travels in a few MB: the graph without its weights, plus how to make them.

The full-size ViT-B-32 is about 600 MB of float32 weights; random weights do not compress, so they cannot go
through a 64 MiB transfer. Throughput does not depend on the values, only on the graph and the shapes, so:

  strip  (here, needs `onnx` and numpy: .cache/export-venv)
      --model-dir SRC --out DST     every float32 initializer of SRC/{visual,textual}/model.onnx with at least
                                    --min-elements values moves to external data (DST/<tower>/model.weights,
                                    which is NOT written); its shape, offset, mean and std go to
                                    DST/skeleton.json. Smaller tensors (LayerNorm, biases, shapes) stay exact
                                    inside the graph. config.json, tokenizer and preprocessing files are copied.
  fill   (on the GPU host, needs only torch)
      --model-dir DST [--seed 0]    writes DST/<tower>/model.weights: each tensor normal(mean, std) from a seeded
                                    torch generator, so ONNX Runtime loads a model with the real graph, the real
                                    shapes and weights of the real scale (the vectors mean nothing, as with
                                    export_onnx.py --random-init).

The filled model is for speed figures and GPU-vs-CPU parity on the same files, never for accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

TOWERS = ("visual", "textual")
WEIGHTS = "model.weights"
COPY = ("config.json", "visual/preprocess_cfg.json", "textual/tokenizer.json", "textual/tokenizer_config.json")
FLOAT = 1  # onnx.TensorProto.FLOAT


def strip(src: str, out: str, min_elements: int) -> dict:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    manifest: dict = {"format": 1, "weights_file": WEIGHTS, "min_elements": min_elements, "towers": {}}
    for tower in TOWERS:
        model = onnx.load(os.path.join(src, tower, "model.onnx"))
        tensors, offset = [], 0
        for init in model.graph.initializer:
            n = int(np.prod(init.dims)) if init.dims else 1
            if init.data_type != FLOAT or n < min_elements:
                continue
            arr = numpy_helper.to_array(init).astype(np.float64)
            tensors.append({"name": init.name, "shape": list(init.dims), "offset": offset, "numel": n,
                            "mean": float(arr.mean()), "std": float(arr.std())})
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            del init.external_data[:]
            for k, v in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(4 * n))):
                e = init.external_data.add()
                e.key, e.value = k, v
            offset += 4 * n
            offset += (-offset) % 64  # aligned, as onnx's own external-data writer does
        os.makedirs(os.path.join(out, tower), exist_ok=True)
        onnx.save(model, os.path.join(out, tower, "model.onnx"))
        manifest["towers"][tower] = {"bytes": offset, "tensors": tensors}
    for rel in COPY:
        if os.path.exists(os.path.join(src, rel)):
            shutil.copyfile(os.path.join(src, rel), os.path.join(out, rel))
    with open(os.path.join(out, "skeleton.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def fill(model_dir: str, seed: int) -> dict:
    import torch

    with open(os.path.join(model_dir, "skeleton.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != 1:
        raise SystemExit(f"{model_dir}/skeleton.json: unknown format {manifest.get('format')!r}")
    g = torch.Generator().manual_seed(seed)
    done = {}
    for tower, t in manifest["towers"].items():
        path = os.path.join(model_dir, tower, manifest["weights_file"])
        total = int(t["bytes"])
        with open(path, "wb") as f:
            f.truncate(total)
        # A float32 view of the file, written in place (no numpy needed).
        mapped = torch.from_file(path, shared=True, size=total // 4, dtype=torch.float32)
        for x in t["tensors"]:
            start = x["offset"] // 4
            chunk = mapped[start:start + x["numel"]]
            if x["std"] > 0:
                chunk.normal_(mean=float(x["mean"]), std=float(x["std"]), generator=g)
            else:
                chunk.fill_(float(x["mean"]))
        del mapped
        done[tower] = {"bytes": total, "tensors": len(t["tensors"])}
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("strip")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--min-elements", type=int, default=4096)
    s = sub.add_parser("fill")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.time()
    if a.cmd == "strip":
        m = strip(a.model_dir, a.out, a.min_elements)
        summary = {k: {"bytes": v["bytes"], "tensors": len(v["tensors"])} for k, v in m["towers"].items()}
    else:
        summary = fill(a.model_dir, a.seed)
    print(json.dumps({"cmd": a.cmd, "towers": summary, "seconds": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
