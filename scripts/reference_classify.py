#!/usr/bin/env python3
"""open_clip reference for zero-shot classification (clip-serve's Classify service) -> `reference/classify.json`.

Pipeline, all open_clip's own:
  image:      PIL.Image.open(path) as is -> the model's preprocess transform -> model.encode_image(normalize=True)
              (exactly as scripts/reference.py; the embeddings equal reference.json's)
  classifier: open_clip.zero_shot_classifier.build_zero_shot_classifier(model, open_clip.get_tokenizer(model),
              labels, templates): template.format(label) for every template, encode_text(normalize=True), mean
              over templates, L2-normalize -> [D, num_labels]
  scores:     cosine = image_embedding @ classifier; logits = logit_scale * cosine, logit_scale =
              exp(model.logit_scale) (config.json's "logit_scale"); probabilities = softmax(logits) over labels
All in float32 torch on CPU.

Cases: the same images against (a) inline labels with the default single template, (b) the same labels with three
custom templates, (c) the built-in cifar-10 label set (assets/label_sets/cifar-10.json, 18 templates).

Checks printed at the end (exit status 1 if one fails): the images' embeddings equal reference.json's; the
cifar-10 classifier equals `<model-dir>/classifiers/cifar-10.f32` written by scripts/export_classifiers.py
(max |diff| < 1e-6, sha256 as its JSON says); open_clip's legacy one-label-at-a-time builder agrees; and the
ONNX text tower (onnxruntime on open_clip's ids, ensembled in numpy, as a port would) gives the same
classifiers and probabilities within float32 noise.

    python scripts/reference_classify.py --model-dir tests/fixtures/model --fixtures tests/fixtures \
        --out tests/fixtures/reference/classify.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from typing import Any, Dict, List

import numpy as np
import PIL
import torch
from PIL import Image

import open_clip
from open_clip.zero_shot_classifier import build_zero_shot_classifier, build_zero_shot_classifier_legacy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import f32list, load_source_model  # noqa: E402
from export_classifiers import DEFAULT_LABEL_SETS_DIR, load_label_set  # noqa: E402

#: Varied encodings: lossless RGB PNG, baseline 4:2:0 JPEG, progressive JPEG, grayscale JPEG, lossy WebP.
IMAGES = ["astronaut_rgb.png", "chelsea_baseline_420.jpg", "coffee_progressive.jpg", "camera_gray.jpg",
          "rocket_lossy.webp"]
INLINE_LABELS = ["cat", "dog", "astronaut", "coffee", "rocket", "horse"]
DEFAULT_TEMPLATES = ["a photo of a {}."]
CUSTOM_TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}."]


def f32rows(m: np.ndarray) -> List[List[float]]:
    return [f32list(r) for r in np.asarray(m, np.float32)]


def run_case(model, tokenizer, logit_scale: torch.Tensor, img_emb: torch.Tensor, files: List[str], name: str,
             labels: List[str], templates: List[str], label_set: str | None, description: str) -> Dict[str, Any]:
    with torch.no_grad():
        clf = build_zero_shot_classifier(model, tokenizer, labels, templates, device="cpu")  # [D, L]
        cos = img_emb @ clf
        logits = logit_scale * cos
        probs = logits.softmax(dim=-1)
    assert clf.dtype == cos.dtype == probs.dtype == torch.float32
    results = []
    for i, f in enumerate(files):
        p = probs[i].numpy()
        results.append({
            "file": f,
            "cosine": f32list(cos[i].numpy()),
            "logits": f32list(logits[i].numpy()),
            "probabilities": f32list(p),
            "top_label": labels[int(np.argmax(p))],
        })
    return {
        "name": name,
        "description": description,
        "label_set": label_set,
        "labels": list(labels),
        "templates": list(templates),
        "logit_scale": float(logit_scale.item()),
        "classifier": f32rows(clf.T.numpy()),
        "results": results,
    }


def _ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def check(ref: Dict[str, Any], model, tokenizer, model_dir: str, fixtures: str) -> bool:
    ok = True
    # 1. image embeddings == reference.json's
    ref_path = os.path.join(fixtures, "reference", "reference.json")
    if os.path.exists(ref_path):
        with open(ref_path, encoding="utf-8") as f:
            base = {r["file"]: r["embedding"] for r in json.load(f)["images"]}
        d = max(float(np.abs(np.asarray(r["embedding"], np.float32) - np.asarray(base[r["file"]], np.float32)).max())
                for r in ref["images"])
        print(f"image embeddings vs reference.json: max|diff| {d:.2e}")
        ok &= d == 0.0
    # 2. cifar-10 case vs the exporter's precomputed file
    case_c = next(c for c in ref["cases"] if c["label_set"] == "cifar-10")
    jpath = os.path.join(model_dir, "classifiers", "cifar-10.json")
    if os.path.exists(jpath):
        with open(jpath, encoding="utf-8") as f:
            hdr = json.load(f)
        with open(os.path.join(model_dir, "classifiers", hdr["data"]), "rb") as f:
            raw = f.read()
        sha_ok = hashlib.sha256(raw).hexdigest() == hdr["sha256"]
        w = np.frombuffer(raw, dtype="<f4").reshape(hdr["shape"])
        same_meta = hdr["labels"] == case_c["labels"] and hdr["templates"] == case_c["templates"]
        d = float(np.abs(w - np.asarray(case_c["classifier"], np.float32)).max())
        print(f"classifiers/cifar-10.f32 (export_classifiers.py) vs case cifar-10: max|diff| {d:.3e}, "
              f"sha256 {'ok' if sha_ok else 'MISMATCH'}, labels/templates {'equal' if same_meta else 'DIFFER'}")
        ok &= d < 1e-6 and sha_ok and same_meta
    else:
        print(f"{jpath} missing: exporter comparison skipped")
        ok = False
    # 3. legacy builder (one label at a time, F.normalize of unnormalized encode_text)
    d3 = 0.0
    for c in ref["cases"]:
        with torch.no_grad():
            leg = build_zero_shot_classifier_legacy(model, tokenizer, c["labels"], c["templates"]).T.numpy()
        d3 = max(d3, float(np.abs(leg - np.asarray(c["classifier"], np.float32)).max()))
    print(f"build_zero_shot_classifier_legacy vs build_zero_shot_classifier: max|diff| {d3:.3e}")
    ok &= d3 < 1e-6
    # 4. a port's path: ONNX text tower on open_clip ids, str.replace formatting, numpy ensemble
    txt = _ort_session(os.path.join(model_dir, "textual", "model.onnx"))
    img = np.asarray([r["embedding"] for r in ref["images"]], np.float32)
    dc = dp = 0.0
    for c in ref["cases"]:
        rows = []
        for label in c["labels"]:
            ids = tokenizer([t.replace("{}", label) for t in c["templates"]]).numpy().astype(np.int64)
            e = txt.run(None, {"text": ids})[0]
            e = e / np.linalg.norm(e, axis=-1, keepdims=True)
            m = e.mean(0)
            rows.append(m / np.linalg.norm(m))
        w = np.asarray(rows, np.float32)
        dc = max(dc, float(np.abs(w - np.asarray(c["classifier"], np.float32)).max()))
        logits = c["logit_scale"] * (img @ w.T)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        want = np.asarray([r["probabilities"] for r in c["results"]], np.float32)
        dp = max(dp, float(np.abs(p - want).max()))
    print(f"ONNX text tower + numpy ensemble vs torch: classifier max|diff| {dc:.3e}, probabilities max|diff| "
          f"{dp:.3e}")
    ok &= dc < 1e-5 and dp < 1e-5
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="tests/fixtures/model")
    ap.add_argument("--fixtures", default="tests/fixtures", help="holds images/")
    ap.add_argument("--out", default=None, help="default <fixtures>/reference/classify.json")
    ap.add_argument("--label-sets-dir", default=DEFAULT_LABEL_SETS_DIR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-check", action="store_true")
    a = ap.parse_args()
    out = a.out or os.path.join(a.fixtures, "reference", "classify.json")
    torch.set_num_threads(a.threads)

    model, preprocess, cfg, base_model = load_source_model(a.model_dir, a.cache_dir)
    tokenizer = open_clip.get_tokenizer(base_model)
    logit_scale = model.logit_scale.exp().detach()
    assert float(logit_scale.item()) == cfg["logit_scale"], (float(logit_scale.item()), cfg["logit_scale"])

    files, embs = [], []
    for name in IMAGES:
        img = Image.open(os.path.join(a.fixtures, "images", name))  # as reference.py: no exif_transpose/convert
        with torch.no_grad():
            embs.append(model.encode_image(preprocess(img)[None], normalize=True)[0])
        files.append(f"images/{name}")
    img_emb = torch.stack(embs).float()

    cifar = load_label_set(a.label_sets_dir, "cifar-10")
    cases = [
        run_case(model, tokenizer, logit_scale, img_emb, files, "inline_default_template", INLINE_LABELS,
                 DEFAULT_TEMPLATES, None, "inline labels, the default single template"),
        run_case(model, tokenizer, logit_scale, img_emb, files, "inline_custom_templates", INLINE_LABELS,
                 CUSTOM_TEMPLATES, None, "inline labels, three custom templates (prompt ensemble)"),
        run_case(model, tokenizer, logit_scale, img_emb, files, "label_set_cifar10", cifar["labels"],
                 cifar["templates"], "cifar-10", "built-in label set cifar-10 (assets/label_sets/cifar-10.json)"),
    ]

    import onnxruntime
    import torchvision
    import ftfy
    ref = {
        "model_dir": os.path.relpath(a.model_dir, a.fixtures),
        "model_name": cfg["model_name"],
        "weights": cfg["weights"],
        "embed_dim": int(cfg["embed_dim"]),
        "logit_scale": float(logit_scale.item()),
        "versions": {
            "open_clip": open_clip.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__, "ftfy": ftfy.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
        },
        "notes": [
            "image embedding: L2-normalized model.encode_image(preprocess(PIL.Image.open(file))[None]), as in "
            "reference.json (same values)",
            "classifier: open_clip build_zero_shot_classifier: per label, template.format(label) for each template "
            "(every template has exactly one {} and no other brace, so str.replace gives the same text), "
            "encode_text(normalize=True), mean over templates, L2-normalize; stored as [num_labels][embed_dim]",
            "cosine = image_embedding . classifier_row; logits = logit_scale * cosine; probabilities = "
            "softmax(logits) over the case's labels; all float32 torch on CPU, lists in label order",
            "logit_scale = exp(model.logit_scale) = config.json logit_scale (not CLIP's hard-coded 100)",
        ],
        "images": [{"file": f, "embedding": f32list(e.numpy())} for f, e in zip(files, img_emb)],
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, out)
    print(f"wrote {out}: {len(files)} images x {len(cases)} cases, logit_scale {ref['logit_scale']}")
    for c in cases:
        tops = ", ".join(f"{os.path.basename(r['file'])}->{r['top_label']} ({max(r['probabilities']):.3f})"
                         for r in c["results"])
        print(f"  {c['name']}: {len(c['labels'])} labels x {len(c['templates'])} templates: {tops}")
    if a.no_check:
        return 0
    ok = check(ref, model, tokenizer, a.model_dir, a.fixtures)
    print("CHECKS PASSED" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
