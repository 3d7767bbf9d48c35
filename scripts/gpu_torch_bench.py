#!/usr/bin/env python3
"""The GPU compute ceiling with the host's own torch: open_clip's ViT-B-32 (random init), compute only.

Runs each tower at fp32 (TF32 off), tf32, fp16 and bf16 (weights and inputs in that dtype), at each batch size,
on inputs already on the device, for --seconds per point after a warm-up; prints one JSON object per point and
writes them all to --json. This is the figure an ONNX Runtime CUDA provider serving the same model should
approach (it has preprocessing, copies and batching on top).

Needs torch (the host's) and open_clip with its small dependencies (the bundle's wheels, unpacked by
`gpu_check.py wheels`). open_clip imports torchvision at import time for its image transforms; where the host has
no torchvision (or no numpy), a stand-in that only satisfies those imports is put on the path for the import
(nothing here uses transforms or numpy: the inputs are random tensors) and the result says so.

  gpu_torch_bench.py --device cuda --json out.json [--batches 1,32,256] [--modes fp32,tf32,fp16,bf16]
                     [--towers image,text] [--seconds 2] [--limit 240]
  gpu_torch_bench.py --device cpu --batches 1 --modes fp32,bf16 --towers image --warmup 1 --min-runs 1 --seconds 0
                     (the dry run's smoke test of the same code on a CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

# Stand-ins for what open_clip 3.x imports at import time and this benchmark never uses: torchvision (image
# transforms, FrozenBatchNorm2d) and numpy (np.log in default arguments; the rest in functions not called here).
# Used only when the real package cannot be imported, and taken off the path again right after the import.
_UNAVAILABLE = (
    "def __getattr__(name):\n"
    "    raise AttributeError(f'{__name__}.{name}: not installed here (gpu_torch_bench stand-in)')\n")
STANDINS = {
    "torchvision": {
        "__init__.py": "STANDIN = True\n__version__ = '0+standin'\n",
        "transforms/__init__.py": (
            "import enum\n"
            "class InterpolationMode(enum.Enum):\n"
            "    NEAREST = 'nearest'\n    BILINEAR = 'bilinear'\n    BICUBIC = 'bicubic'\n    LANCZOS = 'lanczos'\n"
            "class _Unavailable:\n"
            "    def __init__(self, *a, **k):\n"
            "        raise RuntimeError('torchvision is not installed here (gpu_torch_bench stand-in)')\n"
            "def __getattr__(name):\n"
            "    return type(name, (_Unavailable,), {})\n"),
        "transforms/functional.py": _UNAVAILABLE,
        "ops/__init__.py": "",
        "ops/misc.py": (
            "import torch\n"
            "class FrozenBatchNorm2d(torch.nn.Module):\n"
            "    def __init__(self, *a, **k):\n"
            "        raise RuntimeError('torchvision is not installed here (gpu_torch_bench stand-in)')\n"),
    },
    "numpy": {"__init__.py": "import math\nSTANDIN = True\n__version__ = '0+standin'\nlog = math.log\n" + _UNAVAILABLE},
}


def import_open_clip() -> Tuple[Any, Dict[str, str]]:
    """open_clip, and {package: its version or 'stand-in'} for the packages above."""
    found: Dict[str, str] = {}
    d = tempfile.mkdtemp(prefix="standins_")
    for pkg, files in STANDINS.items():
        try:
            found[pkg] = str(importlib.import_module(pkg).__version__)
            continue
        except Exception:  # noqa: BLE001 - missing, or a build that does not match this torch
            for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
                sys.modules.pop(name)
        for rel, text in files.items():
            path = os.path.join(d, pkg, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        found[pkg] = "stand-in (not importable here)"
    sys.path.insert(0, d)
    importlib.invalidate_caches()
    try:
        import open_clip
    finally:
        sys.path.remove(d)
        for pkg, v in found.items():
            if v.startswith("stand-in"):
                for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
                    sys.modules.pop(name)
    return open_clip, found


def set_tf32(torch: Any, on: bool) -> None:
    """TF32 for matmuls and cuDNN convolutions on or off (the legacy flags; still honoured by torch 2.x)."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def bench_point(fn: Any, x: Any, sync: Any, seconds: float, end: float, warmup: int = 3,
                min_runs: int = 5) -> Dict[str, Any]:
    for _ in range(warmup):  # kernels chosen, memory pools grown
        fn(x)
    sync()
    runs, t0 = 0, time.perf_counter()
    while runs < min_runs or (time.perf_counter() - t0 < seconds and time.time() < end):
        fn(x)
        runs += 1
        if runs % 5 == 0:
            sync()
    sync()
    dt = time.perf_counter() - t0
    return {"runs": runs, "seconds": round(dt, 3), "items_per_s": runs * x.shape[0] / dt,
            "ms_per_batch": 1e3 * dt / runs}


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--modes", default="fp32,tf32,fp16,bf16")
    p.add_argument("--towers", default="image,text")
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per point")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured runs per point")
    p.add_argument("--min-runs", type=int, default=5, help="measured runs per point, at least")
    p.add_argument("--limit", type=float, default=240.0, help="seconds for everything")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    end = time.time() + a.limit

    import torch

    res: Dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": a.device,
                           "model": f"{a.model} (open_clip, random init)", "rows": []}
    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("torch.cuda.is_available() is False: no usable GPU for this torch")
        props = torch.cuda.get_device_properties(0)
        res.update({"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "cudnn": torch.backends.cudnn.version()})
        sync = torch.cuda.synchronize
    else:
        res["threads"] = torch.get_num_threads()

        def sync() -> None:
            return None
    open_clip, res["imports"] = import_open_clip()
    res["open_clip"] = open_clip.__version__
    torch.manual_seed(0)
    base = open_clip.create_model(a.model, pretrained=None).eval()
    ctx = int(getattr(base, "context_length", 77) or 77)
    vocab = int(getattr(base, "vocab_size", 49408) or 49408)
    size = base.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    rc = 0
    dtypes = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for mode in a.modes.split(","):
        if mode not in dtypes:
            raise SystemExit(f"unknown mode {mode!r} (fp32, tf32, fp16, bf16)")
        if a.device.startswith("cuda"):
            set_tf32(torch, mode == "tf32")
        model = copy.deepcopy(base).to(device=a.device, dtype=dtypes[mode])
        for tower in a.towers.split(","):
            for b in [int(x) for x in a.batches.split(",") if x.strip()]:
                row: Dict[str, Any] = {"tower": tower, "mode": mode, "batch": b}
                if time.time() > end - 2 * a.seconds:
                    row["skipped"] = "budget"
                    rc = 1
                else:
                    try:
                        with torch.inference_mode():
                            if tower == "image":
                                x = torch.randn(b, 3, *size, device=a.device, dtype=dtypes[mode])
                                fn = model.encode_image
                            else:
                                x = torch.randint(1, vocab - 2, (b, ctx), device=a.device)
                                row["seq_len"] = ctx
                                fn = model.encode_text
                            row.update(bench_point(fn, x, sync, a.seconds, end, a.warmup, a.min_runs))
                    except Exception as e:  # noqa: BLE001 - recorded; the stage fails
                        row["error"] = f"{type(e).__name__}: {e}"[:400]
                        rc = 1
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
        del model
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
    if a.device.startswith("cuda"):
        set_tf32(torch, False)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
