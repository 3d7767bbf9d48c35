#!/usr/bin/env python3
"""Reference outputs from open_clip's OWN pipeline for the committed fixtures (the parity bar for clip-serve).

For the torch model a model directory was exported from (re-created from its config.json: the tiny test model
from `torch_state.pt` next to it, else from the seed; the real checkpoint via open_clip's download), this runs
  * text:  open_clip's tokenizer (`open_clip.get_tokenizer(model)`, i.e. SimpleTokenizer: ftfy, html unescape
           x2, whitespace clean, lower, BPE, SOT/EOT, truncate, zero-pad) -> `model.encode_text(ids)`
  * image: `PIL.Image.open(path)` as is (no EXIF transpose, no convert) -> open_clip's inference transform for
           the checkpoint (Resize shortest side, bicubic, antialiased, on the image in its own PIL mode;
           CenterCrop; convert('RGB'); ToTensor; Normalize) -> `model.encode_image(t[None])`
and writes `<fixtures>/reference/reference.json` plus the exact 224x224 RGB pixels that open_clip fed the model
(`reference/pixels/<stem>.png`, recovered from the normalized tensor and checked to be 8-bit levels).

Embeddings are L2-normalized, float32 values written exactly. With --check (default) it also runs onnxruntime
on the model directory (and the immich-style directory when given) over the reference pixels and ids, and the
tokenizer.json over the texts, and prints the agreement.

    python scripts/reference.py --model-dir tests/fixtures/model --immich-dir tests/fixtures/model-immich
"""

from __future__ import annotations

import argparse
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
from open_clip.tokenizer import _clean_lower

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_onnx import build_model  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def load_source_model(model_dir: str, cache_dir: str | None = None):
    """Re-create the torch model (and its open_clip preprocess) that `model_dir` was exported from."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    exp = cfg.get("exporter", {})
    base_model = exp.get("base_model") or cfg["model_name"]
    tag = exp.get("base_pretrained") or cfg.get("pretrained")
    weights = cfg["weights"]
    state = os.path.join(model_dir, "torch_state.pt")
    if weights == "pretrained":
        model, preprocess, info = build_model(base_model, cfg["pretrained"], "pretrained", cache_dir=cache_dir)
    elif weights == "test":
        model, preprocess, info = build_model(base_model, tag, "test", seed=exp.get("seed", 0),
                                              state_dict_path=state if os.path.exists(state) else None)
    elif weights == "random-init":
        print("WARNING: random-init weights re-created from the seed; only valid with the same torch version")
        model, preprocess, info = build_model(base_model, tag, "random-init", seed=exp.get("seed", 0))
    else:
        raise SystemExit(f"unknown weights {weights!r} in {model_dir}/config.json")
    if info["model_cfg"]["embed_dim"] != cfg["embed_dim"]:
        raise SystemExit("re-created model does not match config.json")
    # The directory's preprocess_cfg.json must say what open_clip's transform does.
    with open(os.path.join(model_dir, "visual", "preprocess_cfg.json")) as f:
        pp_file = json.load(f)
    pp = model.visual.preprocess_cfg
    for k in ("mean", "std"):
        assert np.allclose(pp_file[k], pp[k], rtol=0, atol=0), (k, pp_file[k], pp[k])
    for k in ("interpolation", "resize_mode", "mode", "fill_color"):
        assert pp_file[k] == pp[k], (k, pp_file[k], pp[k])
    return model, preprocess, cfg, base_model


def recover_pixels(t: torch.Tensor, mean, std) -> np.ndarray:
    """Invert Normalize and ToTensor: [3,H,W] normalized float -> [H,W,3] uint8, asserting 8-bit levels."""
    x = t.double().numpy()
    levels = (x * np.asarray(std, np.float64)[:, None, None] + np.asarray(mean, np.float64)[:, None, None]) * 255.0
    err = float(np.abs(levels - np.rint(levels)).max())
    if err > 1e-3:
        raise AssertionError(f"preprocessed tensor is not 8-bit levels (max deviation {err})")
    return np.clip(np.rint(levels), 0, 255).astype(np.uint8).transpose(1, 2, 0), err


def f32list(v: np.ndarray) -> List[float]:
    """float32 values as Python floats: exact (every float32 is a double), so JSON round-trips bit for bit."""
    return [float(x) for x in np.asarray(v, dtype=np.float32).ravel()]


def l2n(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _keep_existing_rows(ref: Dict[str, Any], path: str) -> None:
    """Keep the rows of `path` (a previous reference.json) for texts and images it already holds.

    Embeddings computed on another machine differ in the last float bits (torch's CPU kernels), so
    regenerating to add a fixture would rewrite every row; the pixels and ids are bit-identical."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    old_texts = {t["name"]: t for t in old.get("texts", [])}
    old_images = {r["file"]: r for r in old.get("images", [])}
    for t in ref["texts"]:
        o = old_texts.get(t["name"])
        if o is not None and o["ids"] == t["ids"] and o["text"] == t["text"]:
            t["embedding"] = o["embedding"]
    for r in ref["images"]:
        o = old_images.get(r["file"])
        if o is not None and all(o[k] == r[k] for k in r if k != "embedding"):
            r["embedding"] = o["embedding"]
    ref["versions"] = old.get("versions", ref["versions"])


def generate(model_dir: str, fixtures: str, out_dir: str, threads: int, cache_dir: str | None,
             keep_existing: bool = False) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    model, preprocess, cfg, base_model = load_source_model(model_dir, cache_dir)
    pp = model.visual.preprocess_cfg
    context_length = int(model.context_length)
    tokenizer = open_clip.get_tokenizer(base_model)
    with open(os.path.join(fixtures, "texts.json"), encoding="utf-8") as f:
        texts = json.load(f)

    ids = tokenizer([t["text"] for t in texts])
    assert torch.equal(ids, open_clip.tokenize([t["text"] for t in texts], context_length=context_length))
    with torch.no_grad():
        temb = model.encode_text(ids, normalize=True).numpy().astype(np.float32)
    text_rows = []
    for i, t in enumerate(texts):
        n_bpe = len(tokenizer.encode(t["text"]))
        text_rows.append({
            "name": t["name"],
            "text": t["text"],
            "cleaned": _clean_lower(t["text"]),
            "n_bpe_tokens": n_bpe,
            "truncated": n_bpe > context_length - 2,
            "ids": [int(x) for x in ids[i]],
            "embedding": f32list(temb[i]),
        })

    img_dir = os.path.join(fixtures, "images")
    pix_dir = os.path.join(out_dir, "pixels")
    os.makedirs(pix_dir, exist_ok=True)
    image_rows = []
    resize = preprocess.transforms[0]
    max_dev = 0.0
    for name in sorted(os.listdir(img_dir)):
        if not name.lower().endswith(IMAGE_EXTS):
            continue
        path = os.path.join(img_dir, name)
        img = Image.open(path)  # exactly as open_clip users do: no exif_transpose, no convert first
        mode, size, fmt = img.mode, img.size, img.format
        resized = resize(img).size
        t = preprocess(img)
        with torch.no_grad():
            emb = model.encode_image(t[None], normalize=True).numpy()[0].astype(np.float32)
        pixels, dev = recover_pixels(t, pp["mean"], pp["std"])
        max_dev = max(max_dev, dev)
        stem = os.path.splitext(name)[0]
        Image.fromarray(pixels, "RGB").save(os.path.join(pix_dir, stem + ".png"), optimize=True)
        image_rows.append({
            "file": f"images/{name}",
            "pil_format": fmt,
            "pil_mode": mode,
            "width": size[0],
            "height": size[1],
            "resized_width": resized[0],
            "resized_height": resized[1],
            "pixels": os.path.relpath(os.path.join(pix_dir, stem + ".png"), fixtures),
            "embedding": f32list(emb),
        })
    print(f"{len(image_rows)} images: preprocessed tensors are 8-bit levels (max deviation {max_dev:.2e})")

    import tokenizers
    import onnxruntime
    import torchvision
    import ftfy
    ref = {
        "model_dir": os.path.relpath(model_dir, fixtures),
        "model_name": cfg["model_name"],
        "weights": cfg["weights"],
        "context_length": context_length,
        "embed_dim": int(cfg["embed_dim"]),
        "logit_scale": float(model.logit_scale.exp().item()),
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()},
        "versions": {
            "open_clip": open_clip.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__, "ftfy": ftfy.__version__,
            "onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
        },
        "notes": [
            "embeddings are L2-normalized torch outputs (model.encode_*(..., normalize=True)), float32 values",
            "ids come from open_clip.get_tokenizer(model) == open_clip.tokenize; 'cleaned' is open_clip's "
            "_clean_lower(text), the input its BPE sees",
            "pixels are the 224x224 RGB uint8 levels open_clip's transform fed the model (Resize shortest side "
            "bicubic antialiased in the image's PIL mode, CenterCrop, convert('RGB')); the embedding is of "
            "exactly these pixels normalized with preprocess.mean/std",
            "images were opened with PIL.Image.open only: EXIF orientation is not applied",
        ],
        "texts": text_rows,
        "images": image_rows,
    }
    os.makedirs(out_dir, exist_ok=True)
    if keep_existing:
        _keep_existing_rows(ref, os.path.join(out_dir, "reference.json"))
    with open(os.path.join(out_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {os.path.join(out_dir, 'reference.json')}: {len(text_rows)} texts, {len(image_rows)} images")
    return ref


def _session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _pixels_nchw(fixtures: str, row, mean, std) -> np.ndarray:
    """Reference PNG -> normalized float32 [1,3,H,W], computed like ToTensor + Normalize (float32 math)."""
    px = np.asarray(Image.open(os.path.join(fixtures, row["pixels"])).convert("RGB"))
    x = px.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return x[None]


def check(ref: Dict[str, Any], fixtures: str, model_dir: str, immich_dir: str | None, threads: int) -> bool:
    """onnxruntime vs torch, immich-style vs standard, tokenizer.json vs open_clip. Prints; returns success."""
    ok = True
    mean, std = ref["preprocess"]["mean"], ref["preprocess"]["std"]
    vis = _session(os.path.join(model_dir, "visual", "model.onnx"), threads)
    txt = _session(os.path.join(model_dir, "textual", "model.onnx"), threads)
    ivis = itxt = None
    if immich_dir:
        ivis = _session(os.path.join(immich_dir, "visual", "model.onnx"), threads)
        itxt = _session(os.path.join(immich_dir, "textual", "model.onnx"), threads)

    img_cos, img_icos, img_diff = [], [], []
    for row in ref["images"]:
        x = _pixels_nchw(fixtures, row, mean, std)
        got = l2n(vis.run(None, {"image": x})[0][0])
        want = np.asarray(row["embedding"], np.float32)
        img_cos.append(float(got @ want))
        img_diff.append(float(np.abs(got - want).max()))
        if ivis is not None:
            raw = np.asarray(Image.open(os.path.join(fixtures, row["pixels"])).convert("RGB"))[None]
            igot = ivis.run(None, {"image": raw})[0][0]
            img_icos.append(float(igot @ got))
            if abs(float(np.linalg.norm(igot)) - 1.0) > 1e-5:
                print(f"  immich visual output not unit length for {row['file']}")
                ok = False
    ids = np.asarray([t["ids"] for t in ref["texts"]], np.int64)
    tgot = l2n(txt.run(None, {"text": ids})[0])
    twant = np.asarray([t["embedding"] for t in ref["texts"]], np.float32)
    txt_cos = (tgot * twant).sum(-1)
    txt_diff = np.abs(tgot - twant).max(-1)
    print(f"ORT standard vs torch: images min cosine {min(img_cos):.9f} max|diff| {max(img_diff):.2e} "
          f"({len(img_cos)} images); texts min cosine {txt_cos.min():.9f} max|diff| {txt_diff.max():.2e} "
          f"({len(txt_cos)} texts, batch {len(ids)})")
    ok &= min(img_cos) >= 0.99999 and float(txt_cos.min()) >= 0.99999
    if itxt is not None:
        icos = []
        for i in range(len(ids)):
            igot = itxt.run(None, {"text": ids[i:i + 1].astype(np.int32)})[0][0]
            icos.append(float(igot @ tgot[i]))
        print(f"ORT immich-style vs standard: images min cosine {min(img_icos):.9f}; texts min cosine "
              f"{min(icos):.9f}")
        ok &= min(img_icos) > 0.99999 and min(icos) > 0.99999

    # tokenizer.json (HF tokenizers) vs open_clip ids
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("tokenizers package not installed: tokenizer.json check skipped")
        return ok
    tk = Tokenizer.from_file(os.path.join(model_dir, "textual", "tokenizer.json"))
    cleaned_ok = [tk.encode(t["cleaned"]).ids == t["ids"] for t in ref["texts"]]
    raw_bad = [t["name"] for t in ref["texts"] if tk.encode(t["text"]).ids != t["ids"]]
    print(f"tokenizer.json on open_clip-cleaned text: {sum(cleaned_ok)}/{len(cleaned_ok)} equal to open_clip ids")
    bad = [t["name"] for t, good in zip(ref["texts"], cleaned_ok) if not good]
    if bad:
        print(f"  differ after cleaning: {bad}")
        ok = False
    print(f"tokenizer.json on RAW text (no ftfy/html cleaning): {len(ref['texts']) - len(raw_bad)}/"
          f"{len(ref['texts'])} equal; differ: {raw_bad}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="tests/fixtures/model")
    ap.add_argument("--immich-dir", default=None, help="immich-style export of the same weights to compare")
    ap.add_argument("--fixtures", default="tests/fixtures", help="holds images/ and texts.json")
    ap.add_argument("--out", default=None, help="output dir (default <fixtures>/reference)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--keep-existing", action="store_true",
                    help="keep the embeddings of texts/images already in reference.json (add new fixtures only)")
    a = ap.parse_args()
    out = a.out or os.path.join(a.fixtures, "reference")
    ref = generate(a.model_dir, a.fixtures, out, a.threads, a.cache_dir, a.keep_existing)
    if a.no_check:
        return 0
    ok = check(ref, a.fixtures, a.model_dir, a.immich_dir, a.threads)
    print("CHECKS PASSED" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
