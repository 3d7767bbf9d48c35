#!/usr/bin/env python3
r"""Compute-only anchor for the OpenVINO numbers in BENCHMARKS.md: one batch size, one thread count, no server.

    .cache/export-venv/bin/python scripts/bench_openvino.py --model-dir DIR [--batch 8] [--threads 2] [--seconds 10]

Per tower (images at the preprocess size; texts at L=16 and L=77 on a dynamic sequence axis), each engine that can
run here, on the same random inputs:
  ort-fp32        ONNX Runtime CPU provider, model.onnx
  ort-int8        ONNX Runtime CPU provider, model.int8.onnx (when present)
  ov-native-f32   OpenVINO's own runtime (PyPI `openvino`), INFERENCE_PRECISION_HINT=f32
  ov-native-bf16  the same at bf16 (only on CPUs with AVX512-BF16 or AMX-BF16)
  ov-plugin-f32 / ov-plugin-bf16   ONNX Runtime with the onnxruntime-ep-openvino plugin EP (what the server runs);
                  the plugin publishes devices on Intel CPUs only, so elsewhere these rows say why they are missing.
Prints items/s (median of the runs) and the minimum cosine of each engine's vectors with ort-fp32's, and the CPU
flags. Random inputs: the cosine is an indicator; the accuracy gate (scripts/quantize.py) measures real photographs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quantize as q  # noqa: E402


def timed(run, x, seconds: float):
    run(x)  # warm-up (and OpenVINO's first-shape compile)
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        out = run(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--openvino-plugin", default=None)
    p.add_argument("--shape-probe", action="store_true", help="also time the first and second run of new shapes")
    a = p.parse_args(argv)
    cpu = q.read_cpu_flags()
    flags = " ".join(f for f in q.RELEVANT_CPU_FLAGS if cpu.get(f))
    print(f"cpu: {cpu.get('model_name')}; flags: {flags}; threads {a.threads}; batch {a.batch}")
    rng = np.random.default_rng(0)
    engines = ["ort-fp32", "ort-int8", "ov-native-f32", "ov-native-bf16", "ov-plugin-f32", "ov-plugin-bf16"]
    for tower in q.TOWERS:
        fp32 = os.path.join(a.model_dir, tower, "model.onnx")
        if not os.path.exists(fp32):
            continue
        cases = []
        if tower == "visual":
            cases.append(("images", rng.standard_normal((a.batch, 3, 224, 224)).astype(np.float32)))
        else:
            for length in (16, 77):
                x = np.zeros((a.batch, length), dtype=np.int64)
                x[:, 0] = 49406
                x[:, 1:length - 1] = rng.integers(256, 49405, size=(a.batch, length - 2))
                x[:, length - 1] = 49407
                cases.append((f"texts L={length}", x))
        for label, x in cases:
            ref = None
            for engine in engines:
                try:
                    t = make(engine, a.model_dir, tower, a.threads, a.openvino_plugin, cpu)
                except Exception as e:  # noqa: BLE001 - an engine that cannot run here is reported, not fatal
                    print(f"{tower:<7} {label:<10} {engine:<15} not run: {type(e).__name__}: {e}")
                    continue
                median, out = timed(t.run, x, a.seconds)
                if ref is None:
                    ref = out
                cos = float(np.min(q.row_cosines(ref, out)))
                print(f"{tower:<7} {label:<10} {engine:<15} {a.batch / median:8.1f} items/s "
                      f"({median * 1e3:7.1f} ms/batch)  min cosine vs ort-fp32 {cos:.6f}")
    if a.shape_probe:
        shape_probe(a.model_dir, a.threads, a.openvino_plugin, cpu)
    return 0


def shape_probe(model_dir: str, threads: int, plugin, cpu) -> None:
    """Does OpenVINO recompile per input shape? The text tower at a sequence of (batch, length) shapes as the
    server's batches arrive (lengths in steps of 8), each shape run twice: a first run much slower than the second
    means a compile per shape; then the first shapes again (a cache, or a recompile)."""
    import numpy as np

    shapes = [(b, l) for b in (1, 3, 8) for l in (8, 16, 24, 40, 77)]
    for engine in ("ov-native-bf16" if q.has_bf16(cpu) else "ov-native-f32", "ov-plugin-bf16"):
        try:
            t = make(engine, model_dir, "textual", threads, plugin, cpu)
        except Exception as e:  # noqa: BLE001
            print(f"shape probe {engine}: not run: {type(e).__name__}: {e}")
            continue
        rows = []
        for b, l in shapes + shapes[:3]:
            x = np.full((b, l), 400, dtype=np.int64)
            x[:, 0], x[:, -1] = 49406, 49407
            t0 = time.perf_counter()
            t.run(x)
            t1 = time.perf_counter()
            t.run(x)
            t2 = time.perf_counter()
            rows.append(f"{b}x{l}: {1e3 * (t1 - t0):.0f}/{1e3 * (t2 - t1):.0f}")
        print(f"shape probe {engine} (ms first/second run per shape): " + ", ".join(rows))


def make(engine: str, model_dir: str, tower: str, threads: int, plugin, cpu):
    fp32 = os.path.join(model_dir, tower, "model.onnx")
    if engine == "ort-fp32":
        return q.Tower(fp32, "cpu", threads)
    if engine == "ort-int8":
        path = os.path.join(model_dir, q.variant_file(tower, "int8"))
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {path} (scripts/quantize.py --int8)")
        return q.Tower(path, "cpu", threads)
    precision = "bf16" if engine.endswith("bf16") else "f32"
    if precision == "bf16" and not q.has_bf16(cpu):
        raise RuntimeError("no AVX512-BF16 or AMX-BF16 on this CPU")
    if engine.startswith("ov-native"):
        t = q.Tower.__new__(q.Tower)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(fp32)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "INFERENCE_NUM_THREADS": threads,
                                                     "PERFORMANCE_HINT": "LATENCY"})
        t.path, t.sess = fp32, q._NativeSession(model, compiled)
        t._describe()
        return t
    if precision == "bf16":
        return q.Tower(fp32, "openvino-plugin", threads, plugin)
    # ov-plugin-f32: the plugin EP with f32 inference precision.
    import json
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_provider_for_devices([q.openvino_cpu_device(plugin)], {"load_config": json.dumps(
        {"CPU": {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads),
                 "PERFORMANCE_HINT": "LATENCY"}})})
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    t = q.Tower.__new__(q.Tower)
    t.path, t.sess = fp32, ort.InferenceSession(fp32, so)
    t._describe()
    return t


if __name__ == "__main__":
    sys.exit(main())
