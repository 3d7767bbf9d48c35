#!/usr/bin/env python3
"""Reference image preprocessing levels from open_clip, for parity tests of the Rust preprocessor.

For each input image, runs open_clip's inference transform for ViT-B-32 / datacomp_xl_s13b_b90k
(or the config given with --cfg, an Immich-style preprocess_cfg.json) on PIL.Image.open(file)
and writes the 8-bit levels round((tensor * std + mean) * 255) as an RGB PNG
<out>/<file name>.png, plus <out>/manifest.json listing {file, png, mode, size, height, width}.

Usage:
  image_parity.py OUT_DIR FILE_OR_DIR... [--cfg preprocess_cfg.json] [--exif] [--time N]

--exif applies PIL.ImageOps.exif_transpose before the transform (the server's
apply_exif_orientation option); open_clip itself ignores EXIF orientation.
--dump-tensor also writes the normalized float32 tensor (CHW) as <out>/<file name>.f32.
--time N also reports the median wall time of N runs of open + transform + ToTensor per file.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image, ImageOps

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict


def build_transform(cfg_path):
    if cfg_path:
        with open(cfg_path) as f:
            overlay = json.load(f)
        size = overlay.get("size")
        if isinstance(size, list):
            overlay["size"] = tuple(size)
        fill = overlay.get("fill_color")
        if isinstance(fill, list):
            overlay["fill_color"] = tuple(fill)
    else:
        overlay = open_clip.get_pretrained_cfg("ViT-B-32", "datacomp_xl_s13b_b90k")
    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(size=224), overlay))
    if cfg.interpolation not in ("bicubic", "bilinear", "random"):
        # open_clip only accepts bicubic/bilinear; for other filters build the equivalent
        # torchvision pipeline by hand (shortest/squash only).
        from torchvision import transforms as T
        from open_clip.transform import MaybeConvertMode, MaybeToTensor
        mode = T.InterpolationMode(cfg.interpolation)
        size = cfg.size if isinstance(cfg.size, int) else tuple(cfg.size)
        if cfg.resize_mode == "squash":
            steps = [T.Resize(size if isinstance(size, tuple) else (size, size), interpolation=mode)]
        else:
            assert cfg.resize_mode == "shortest" and (isinstance(size, int) or size[0] == size[1])
            s = size if isinstance(size, int) else size[0]
            steps = [T.Resize(s, interpolation=mode), T.CenterCrop(s)]
        steps += [MaybeConvertMode(), MaybeToTensor(), T.Normalize(cfg.mean, cfg.std)]
        return cfg, T.Compose(steps)
    return cfg, image_transform_v2(cfg, is_train=False)


def levels(tensor, cfg):
    mean = np.asarray(cfg.mean, dtype=np.float64).reshape(3, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float64).reshape(3, 1, 1)
    v = (tensor.numpy().astype(np.float64) * std + mean) * 255.0
    lv = np.rint(v)
    assert np.abs(v - lv).max() < 1e-3, "tensor is not an 8-bit image"
    return np.clip(lv, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--cfg")
    ap.add_argument("--exif", action="store_true")
    ap.add_argument("--time", type=int, default=0)
    ap.add_argument("--dump-tensor", action="store_true",
                    help="also write <out>/<file name>.f32: the CHW float32 tensor, little-endian")
    args = ap.parse_args()

    cfg, tf = build_transform(args.cfg)
    files = []
    for p in args.inputs:
        if os.path.isdir(p):
            files += [os.path.join(p, n) for n in sorted(os.listdir(p))]
        else:
            files.append(p)
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    for f in files:
        name = os.path.basename(f)
        try:
            im = Image.open(f)
            mode, size = im.mode, im.size
            if args.exif:
                im = ImageOps.exif_transpose(im)
            tensor = tf(im)
            lv = levels(tensor, cfg)
            if args.dump_tensor:
                tensor.numpy().astype("<f4").tofile(os.path.join(args.out, name + ".f32"))
        except Exception as e:  # noqa: BLE001
            manifest.append({"file": name, "error": f"{type(e).__name__}: {e}"})
            print(f"{name}: ERROR {e}", file=sys.stderr)
            continue
        png = name + ".png"
        Image.fromarray(lv, "RGB").save(os.path.join(args.out, png))
        entry = {"file": name, "png": png, "mode": mode, "size": list(size),
                 "height": lv.shape[0], "width": lv.shape[1]}
        if args.time:
            ts = []
            for _ in range(args.time):
                t0 = time.perf_counter()
                im = Image.open(f)
                if args.exif:
                    im = ImageOps.exif_transpose(im)
                tf(im)
                ts.append(time.perf_counter() - t0)
            entry["median_ms"] = statistics.median(ts) * 1e3
            print(f"{name}: {entry['median_ms']:.2f} ms", file=sys.stderr)
        manifest.append(entry)
    with open(os.path.join(args.out, "manifest.json"), "w") as fh:
        json.dump({"config": {k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in cfg.__dict__.items()},
                   "exif": args.exif, "images": manifest}, fh, indent=1)


if __name__ == "__main__":
    main()
