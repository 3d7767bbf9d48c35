#!/usr/bin/env python3
"""Differential check of the image decoders against Pillow on a directory of files (by hand).

    python scripts/odd_parity.py DIR OUT        # Pillow's side: OUT/pil/<file>.rgb and pil.json
    CLIP_SERVE_ODD_IN=DIR CLIP_SERVE_ODD_OUT=OUT/ours \\
        cargo test --lib odd_files::dump -- --ignored          # ours: OUT/ours/<file>.rgb or .err
    python scripts/odd_parity.py DIR OUT --compare

Pillow's side is open_clip's inference transform reproduced with Pillow alone (the function of
make_odd_fixtures.py) on `Image.open(f)`. The comparison lists every file Pillow opens that we
refuse (with our reason) or serve with different levels, and the totals issue 22 counts: files
served, refused, and off by more than 2 levels.
"""

import argparse
import json
import os
import sys
import warnings

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_odd_fixtures import open_clip_pixels  # noqa: E402


def reference(src: str, out: str) -> None:
    os.makedirs(os.path.join(out, "pil"), exist_ok=True)
    rows = {}
    warnings.simplefilter("ignore")
    for name in sorted(os.listdir(src)):
        try:
            im = Image.open(os.path.join(src, name))
            mode = im.mode
            px = np.asarray(open_clip_pixels(im))
            px.tofile(os.path.join(out, "pil", name + ".rgb"))
            rows[name] = {"mode": mode, "size": im.size, "compression": im.info.get("compression")}
        except Exception as e:  # Pillow refuses it: not counted
            rows[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
    with open(os.path.join(out, "pil.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(sum("error" not in r for r in rows.values()), "of", len(rows), "files open in Pillow")


def compare(out: str) -> None:
    pil = json.load(open(os.path.join(out, "pil.json")))
    served = refused = off = 0
    for name, r in sorted(pil.items()):
        if "error" in r:
            continue
        err = os.path.join(out, "ours", name + ".err")
        if os.path.exists(err):
            refused += 1
            print(f"refused {name:50} {r['mode']:6} {str(r['compression']):12} {open(err).read()[:120]}")
            continue
        ours = np.fromfile(os.path.join(out, "ours", name + ".rgb"), dtype=np.uint8).astype(int)
        theirs = np.fromfile(os.path.join(out, "pil", name + ".rgb"), dtype=np.uint8).astype(int)
        served += 1
        d = int(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else 255
        if d:
            print(f"off {d:3}  {name:50} {r['mode']:6} {r['compression']}")
        off += d > 2
    print(f"served {served}, refused {refused}, off by more than 2 levels: {off} "
          f"(of {served + refused} files Pillow opens)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("out")
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    if args.compare:
        compare(args.out)
    else:
        reference(args.dir, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
