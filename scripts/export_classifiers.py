#!/usr/bin/env python3
r"""Precompute zero-shot classifiers for built-in label sets into `<model_dir>/classifiers/`.

For a label set NAME (`assets/label_sets/NAME.json`: labels + templates, see scripts/gen_label_sets.py) the
classifier of each label is CLIP's prompt ensemble, computed by open_clip's own
`open_clip.zero_shot_classifier.build_zero_shot_classifier`: every template filled with the label
(`template.format(label)`), tokenized by `open_clip.get_tokenizer(model)`, `model.encode_text(ids,
normalize=True)`, mean over templates, L2-normalized. Two files are written (each to a temporary name, then
renamed), the .f32 first:

    NAME.f32   raw little-endian float32, row-major [num_labels, embed_dim]: one L2-normalized row per label,
               in label order
    NAME.json  {"format": "clip-serve.classifier.v1", "name", "labels", "templates", "embed_dim",
                "dtype": "float32", "byte_order": "little", "shape": [num_labels, embed_dim], "data": "NAME.f32",
                "sha256": hex sha256 of NAME.f32, "model_name", "pretrained", "weights" (from the model's
                config.json), "normalized": true}

The torch model is re-created from the model directory exactly as scripts/reference.py does (the real
checkpoint via open_clip's download, the tiny test model from its torch_state.pt, random-init from the seed).
scripts/export_onnx.py --classifiers SETS calls `export_classifiers` on the model it has just exported.

Cost: one text-tower forward per (label, template): imagenet-1k is 1000 x 80 = 80,000 texts; for ViT-B-32 that is
roughly 1 to 2 hours on 2 CPU cores (measured ~10 texts/s on one busy core, about 6 GFLOP per 77-token text)
and minutes on a GPU (--device cuda); imagenet-1k-simple is 7,000 texts, cifar-10 180.

    python scripts/export_classifiers.py --model-dir models/ViT-B-32__datacomp_xl_s13b_b90k \
        --sets imagenet-1k,cifar-10 [--device cuda]
    python scripts/export_classifiers.py --model-dir tests/fixtures/model --sets cifar-10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

import open_clip
from open_clip.zero_shot_classifier import build_zero_shot_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LABEL_SETS_DIR = os.path.join(REPO, "assets", "label_sets")
FORMAT = "clip-serve.classifier.v1"


def load_label_set(label_sets_dir: str, name: str) -> Dict[str, Any]:
    path = os.path.join(label_sets_dir, name + ".json")
    if not os.path.exists(path):
        known = sorted(f[:-5] for f in os.listdir(label_sets_dir) if f.endswith(".json"))
        raise SystemExit(f"no label set {name!r} in {label_sets_dir} (known: {', '.join(known)})")
    with open(path, encoding="utf-8") as f:
        s = json.load(f)
    labels, templates = s["labels"], s["templates"]
    assert s["name"] == name, (path, s["name"])
    assert labels and templates, path
    assert len(set(labels)) == len(labels), f"{path}: duplicate labels"
    for t in templates:
        # exactly one {} and no other brace: str.format (open_clip) == str.replace (a port)
        assert t.count("{}") == 1 and "{" not in t.replace("{}", "") and "}" not in t.replace("{}", ""), t
    return s


def compute_classifier(model, tokenizer, labels: Sequence[str], templates: Sequence[str], batch_size: int = 256,
                       device: str = "cpu", log_every_s: float = 10.0, tag: str = "") -> np.ndarray:
    """[num_labels, D] float32 rows (L2-normalized), via open_clip's build_zero_shot_classifier.

    `batch_size` is the number of texts per text-tower forward: labels go through in chunks of
    max(1, batch_size // len(templates)) labels (open_clip's num_classes_per_batch), one call per chunk so that
    progress can be logged.
    """
    per = max(1, batch_size // len(templates))
    rows: List[np.ndarray] = []
    t0 = last = time.time()
    n = len(labels)
    for i in range(0, n, per):
        chunk = list(labels[i:i + per])
        w = build_zero_shot_classifier(model, tokenizer, chunk, list(templates), num_classes_per_batch=per,
                                       device=device)  # [D, len(chunk)]
        rows.append(w.T.float().cpu().numpy())
        done = i + len(chunk)
        now = time.time()
        if now - last >= log_every_s or done == n:
            rate = done * len(templates) / max(now - t0, 1e-9)
            eta = (n - done) * len(templates) / max(rate, 1e-9)
            print(f"  {tag}{done}/{n} labels ({done * len(templates)} texts) in {now - t0:.1f}s, "
                  f"{rate:.0f} texts/s, ETA {eta:.0f}s", flush=True)
            last = now
    return np.ascontiguousarray(np.concatenate(rows, 0), dtype=np.float32)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_classifier(out_dir: str, name: str, labels: Sequence[str], templates: Sequence[str], w: np.ndarray,
                     model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Write NAME.f32 then NAME.json (each atomically) and return the JSON header."""
    n, d = w.shape
    assert n == len(labels) and d == int(model_cfg["embed_dim"]), (w.shape, len(labels), model_cfg["embed_dim"])
    norms = np.linalg.norm(w.astype(np.float64), axis=1)
    assert np.all(np.abs(norms - 1.0) < 1e-5), f"rows not unit length: {norms.min()}..{norms.max()}"
    data = np.ascontiguousarray(w, dtype="<f4").tobytes()
    assert len(data) == n * d * 4
    os.makedirs(out_dir, exist_ok=True)
    _write_atomic(os.path.join(out_dir, name + ".f32"), data)
    header = {
        "format": FORMAT,
        "name": name,
        "labels": list(labels),
        "templates": list(templates),
        "embed_dim": d,
        "dtype": "float32",
        "byte_order": "little",
        "shape": [n, d],
        "data": name + ".f32",
        "sha256": hashlib.sha256(data).hexdigest(),
        "model_name": model_cfg.get("model_name"),
        "pretrained": model_cfg.get("pretrained"),
        "weights": model_cfg.get("weights"),
        "normalized": True,
    }
    text = json.dumps(header, ensure_ascii=False, indent=1) + "\n"
    _write_atomic(os.path.join(out_dir, name + ".json"), text.encode("utf-8"))
    return header


def export_classifiers(model, tokenizer, model_cfg: Dict[str, Any], out_dir: str, sets: Sequence[str],
                       label_sets_dir: str = DEFAULT_LABEL_SETS_DIR, batch_size: int = 256,
                       device: str = "cpu") -> List[Dict[str, Any]]:
    """Compute and write the classifier of every set in `sets` for `model` (moved to `device`, eval mode).

    `model_cfg` is the model directory's config.json content (embed_dim, model_name, pretrained, weights).
    """
    model = model.to(device).eval()
    headers = []
    for name in sets:
        s = load_label_set(label_sets_dir, name)
        labels, templates = s["labels"], s["templates"]
        print(f"classifier {name}: {len(labels)} labels x {len(templates)} templates = "
              f"{len(labels) * len(templates)} texts on {device}", flush=True)
        t0 = time.time()
        w = compute_classifier(model, tokenizer, labels, templates, batch_size, device, tag=f"{name}: ")
        h = write_classifier(out_dir, name, labels, templates, w, model_cfg)
        print(f"wrote {os.path.join(out_dir, name + '.json')} + {h['data']}: shape {h['shape']} "
              f"sha256 {h['sha256'][:16]}... in {time.time() - t0:.1f}s", flush=True)
        headers.append(h)
    return headers


def parse_sets(s: Optional[str]) -> List[str]:
    sets = [x.strip() for x in (s or "").split(",") if x.strip()]
    if len(set(sets)) != len(sets):
        raise SystemExit(f"duplicate set in {s!r}")
    return sets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="model directory (config.json names the weights)")
    ap.add_argument("--sets", required=True, help="comma list of label sets, e.g. imagenet-1k,cifar-10")
    ap.add_argument("--label-sets-dir", default=DEFAULT_LABEL_SETS_DIR)
    ap.add_argument("--out", default=None, help="output directory (default <model-dir>/classifiers)")
    ap.add_argument("--batch-size", type=int, default=256, help="texts per text-tower forward")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cache-dir", default=None, help="open_clip/HF download cache (real checkpoints)")
    a = ap.parse_args()
    sets = parse_sets(a.sets)
    if not sets:
        ap.error("--sets is empty")
    for name in sets:  # fail before loading the model
        load_label_set(a.label_sets_dir, name)
    if a.threads:
        torch.set_num_threads(a.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from reference import load_source_model  # noqa: E402

    model, _, cfg, base_model = load_source_model(a.model_dir, a.cache_dir)
    tokenizer = open_clip.get_tokenizer(base_model)
    export_classifiers(model, tokenizer, cfg, a.out or os.path.join(a.model_dir, "classifiers"), sets,
                       a.label_sets_dir, a.batch_size, a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
