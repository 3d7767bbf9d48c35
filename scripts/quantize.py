#!/usr/bin/env python3
r"""Reduced-precision variants of an exported model directory, behind an accuracy gate.

    python scripts/quantize.py --model-dir DIR --int8 [--fp16] [--bf16] [--calibration-images PHOTOS] [--bench]

Variants (each written beside the fp32 graph, per tower):
  int8   <tower>/model.int8.onnx  for CPUs. onnxruntime.quantization.quantize_dynamic: QInt8 weights, per channel,
         only MatMul and Gemm (quantizing the patch Conv makes ORT CPU fail with "ConvInteger not implemented";
         LayerNorm, Softmax, GELU and the token-embedding Gather stay fp32; only MatMuls with constant weights are
         quantized, the attention products stay fp32). Activations are quantized per tensor at run time, so an
         int8 row's embedding depends slightly on the other rows of its batch (reported as batch_invariance).
         reduce_range is off when the CPU has avx512_vnni (no u8*s8 saturation), else on; the choice and its
         reason are recorded (--reduce-range on|off overrides).
  fp16   <tower>/model.fp16.onnx  for GPUs. onnxruntime.transformers.float16.convert_float_to_float16 with
         keep_io_types=True (inputs and outputs stay float32 / integer ids), LayerNormalization, Softmax and ArgMax
         (plus ORT's default block list) kept in fp32. The token ids are never cast to a float type (49406 and 49407
         are the same fp16 number), which check_token_ids_integer() verifies on every text graph. ONNX Runtime's CPU
         provider runs fp16 graphs through inserted casts, mostly in fp32 (slow, and it measures little more than
         the fp16 rounding of the weights, not a GPU's fp16 arithmetic; its session for the fp16 image tower crashes
         at ORT_ENABLE_ALL in ORT 1.32, so the gate uses ORT_ENABLE_EXTENDED there): gate it on CUDA when there is
         one (--fp16-provider auto picks CUDA when available).
  bf16   no file: the fp32 graph run by OpenVINO at INFERENCE_PRECISION_HINT=bf16 (what `clip-serve --provider
         openvino --precision bf16` serves), on CPUs with AVX512-BF16 or AMX-BF16 only. Measured through the same
         plugin execution provider as the server (PyPI onnxruntime-ep-openvino, registered with
         onnxruntime.register_execution_provider_library, its CPU EpDevice added with add_provider_for_devices and
         the options in load_config). The plugin publishes devices on Intel CPUs only: elsewhere --bf16-engine auto
         falls back to OpenVINO's own runtime (PyPI `openvino` of the plugin's OpenVINO release, the same CPU plugin
         and ONNX frontend) and records that it did; --bf16-engine plugin refuses instead.
Both keep the fp32 graph's dynamic axes (batch, and the text sequence axis of scripts/export_onnx.py).

The gate compares each variant with the fp32 graph of the same directory on a calibration set:
  images  the committed photographs in tests/fixtures/images/ plus every image under --calibration-images DIR,
          decoded with PIL and preprocessed by open_clip's own transform (image_transform_v2 of
          visual/preprocess_cfg.json), batches of --image-batch;
  texts   tests/fixtures/texts.json plus the cifar-10 prompts (assets/label_sets/cifar-10.json, labels x templates),
          tokenized by open_clip, in batches of --text-batch cut to the batch's minimal length when the graph's
          sequence axis is dynamic (as the server feeds them).
Measured per variant and tower: cosine of each item's embedding with fp32's (min, p1 = 1st percentile, mean);
top-1 agreement with fp32 of zero-shot cifar-10 classification of the calibration images (CLIP prompt-ensemble
classifiers built from the same text tower) and of text->image retrieval among the set (each text's best image),
each with only that tower replaced ("image_tower" / "text_tower") and with both ("both"). A tower passes when its
cosine min is >= --image-min-cosine / --text-min-cosine (default 0.99) and its own and the combined agreements are
>= --top1-agreement (default 0.95). A tower that fails gets no variant file (it is deleted) and the script exits 1.
Everything goes to <model-dir>/quantization.json (entries for variants not run this time are kept).

Random-weight (--random-init) and tiny test models: their figures say nothing about the real checkpoint's
accuracy (random embeddings are near-ties everywhere, so agreements may fail or pass for reasons of their own).
Re-run the gate on the real checkpoint before serving a variant.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IMAGES_DIR = os.path.join(ROOT, "tests", "fixtures", "images")
DEFAULT_TEXTS = os.path.join(ROOT, "tests", "fixtures", "texts.json")
DEFAULT_LABEL_SET = os.path.join(ROOT, "assets", "label_sets", "cifar-10.json")

VARIANTS = ("int8", "fp16", "bf16")
# Variants that are a way of running model.onnx, not a file of their own.
FILELESS_VARIANTS = ("bf16",)
OPENVINO_EP_NAME = "OpenVINOExecutionProvider"
DEFAULT_OPENVINO_PLUGIN = os.path.join(ROOT, ".cache", "onnxruntime-ep-openvino", "1.8.1", "lib",
                                       "libonnxruntime_providers_openvino_plugin.so")
TOWERS = ("visual", "textual")
DEFAULT_THRESHOLDS = {"image_min_cosine": 0.99, "text_min_cosine": 0.99, "top1_agreement": 0.95}
RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
INT8_OP_TYPES = ("MatMul", "Gemm")
FP16_EXTRA_BLOCKED_OPS = ("LayerNormalization", "Softmax", "ArgMax")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SCHEMA_VERSION = 1
FLOAT_TYPES = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def variant_file(tower: str, variant: str) -> str:
    """Relative path of a tower's variant graph: visual/model.int8.onnx, textual/model.fp16.onnx, ..."""
    if tower not in TOWERS or variant not in VARIANTS:
        raise ValueError((tower, variant))
    if variant in FILELESS_VARIANTS:
        return f"{tower}/model.onnx"
    return f"{tower}/model.{variant}.onnx"


def openvino_load_config(threads: int) -> str:
    """The plugin EP's load_config (the server's model::openvino::load_config): bf16, threads, one inference at a
    time."""
    return json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": str(max(1, threads)),
                               "PERFORMANCE_HINT": "LATENCY"}})


def has_bf16(cpu: Dict[str, Any]) -> bool:
    return bool(cpu.get("avx512_bf16") or cpu.get("amx_bf16"))


# --------------------------------------------------------------------------------------------------------------
# Machine facts
# --------------------------------------------------------------------------------------------------------------


def parse_cpu_flags(cpuinfo_text: str) -> Dict[str, Any]:
    """The relevant x86 flags and the model name from /proc/cpuinfo's text (first processor's lines)."""
    flags: set = set()
    model = None
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "model name" and model is None:
            model = value.strip()
    out: Dict[str, Any] = {f: f in flags for f in RELEVANT_CPU_FLAGS}
    out["model_name"] = model
    return out


def read_cpu_flags(path: str = "/proc/cpuinfo") -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cpu_flags(f.read())
    except OSError:
        out: Dict[str, Any] = {f: None for f in RELEVANT_CPU_FLAGS}
        out["model_name"] = platform.processor() or None
        return out


def choose_reduce_range(cpu: Dict[str, Any], override: str = "auto") -> Tuple[bool, str]:
    """reduce_range for quantize_dynamic: off with avx512_vnni, on without (7-bit weights avoid the u8*s8
    saturation of the pre-VNNI vpmaddubsw path); 'on'/'off' override."""
    if override == "on":
        return True, "forced on (--reduce-range on)"
    if override == "off":
        return False, "forced off (--reduce-range off)"
    if override != "auto":
        raise ValueError(override)
    if cpu.get("avx512_vnni"):
        return False, "off: the CPU has avx512_vnni (u8*s8 dot products without saturation)"
    return True, "on: no avx512_vnni on this CPU (pre-VNNI u8*s8 multiply-add can saturate with 8-bit weights)"


# --------------------------------------------------------------------------------------------------------------
# Statistics (pure numpy, unit-tested)
# --------------------------------------------------------------------------------------------------------------


def l2_normalize(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def row_cosines(a, b):
    """Cosine of each row of a with the same row of b."""
    import numpy as np

    a, b = l2_normalize(a), l2_normalize(b)
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} != {b.shape}")
    return (a * b).sum(-1).astype(np.float64)


def summarize_cosines(c) -> Dict[str, float]:
    import numpy as np

    c = np.asarray(c, dtype=np.float64)
    if c.size == 0:
        return {"n": 0, "min": None, "p1": None, "mean": None}
    return {"n": int(c.size), "min": float(c.min()), "p1": float(np.percentile(c, 1)), "mean": float(c.mean())}


def zero_shot_classifier(text_emb, n_labels: int, n_templates: int):
    """CLIP's prompt ensemble: rows label-major (label 0's templates first), mean of normalized, normalized."""
    import numpy as np

    e = l2_normalize(text_emb)
    if e.shape[0] != n_labels * n_templates:
        raise ValueError(f"{e.shape[0]} text rows for {n_labels} labels x {n_templates} templates")
    return l2_normalize(e.reshape(n_labels, n_templates, -1).mean(axis=1))


def top1(queries, keys):
    """Index of each query's most similar key (cosine)."""
    import numpy as np

    return np.argmax(l2_normalize(queries) @ l2_normalize(keys).T, axis=1)


def agreement(ref_idx, got_idx) -> float:
    import numpy as np

    ref_idx, got_idx = np.asarray(ref_idx), np.asarray(got_idx)
    if ref_idx.size == 0:
        return float("nan")
    return float((ref_idx == got_idx).mean())


def margins(queries, keys):
    """fp32 top-1 minus top-2 similarity of each query (how close to a tie its top-1 was)."""
    import numpy as np

    s = l2_normalize(queries) @ l2_normalize(keys).T
    if s.shape[1] < 2:
        return np.full(s.shape[0], np.inf)
    part = np.sort(s, axis=1)
    return part[:, -1] - part[:, -2]


def gate_decision(towers: Dict[str, Dict[str, Any]], agreements: Dict[str, Dict[str, float]],
                  thresholds: Dict[str, float]) -> Dict[str, Any]:
    """Which towers pass. towers: {tower: {"cosine": {"min": ...}}}; agreements: {metric: {"image_tower": x,
    "text_tower": y, "both": z}} (missing keys are not checked). Returns {"towers": {tower: {"pass", "failures"}},
    "pass": all towers pass}. A tower needs its cosine min, its own agreements and the combined ones."""
    own = {"visual": "image_tower", "textual": "text_tower"}
    cos_key = {"visual": "image_min_cosine", "textual": "text_min_cosine"}
    combined_failures = []
    for metric, vals in sorted(agreements.items()):
        v = vals.get("both")
        if v is not None and not (v >= thresholds["top1_agreement"]):
            combined_failures.append(f"{metric}.both {v:.4f} < {thresholds['top1_agreement']}")
    out: Dict[str, Any] = {"towers": {}}
    for tower, t in towers.items():
        fails = []
        mn = t["cosine"]["min"]
        if mn is None or not (mn >= thresholds[cos_key[tower]]):
            fails.append(f"cosine min {mn} < {thresholds[cos_key[tower]]}")
        for metric, vals in sorted(agreements.items()):
            v = vals.get(own[tower])
            if v is not None and not (v >= thresholds["top1_agreement"]):
                fails.append(f"{metric}.{own[tower]} {v:.4f} < {thresholds['top1_agreement']}")
        fails += combined_failures
        out["towers"][tower] = {"pass": not fails, "failures": fails}
    out["pass"] = bool(out["towers"]) and all(t["pass"] for t in out["towers"].values())
    return out


# --------------------------------------------------------------------------------------------------------------
# Graph checks and conversions
# --------------------------------------------------------------------------------------------------------------


def check_token_ids_integer(model) -> List[str]:
    """Problems found on the path of the integer graph inputs (token ids): a Cast of id values to a float type, or
    an ArgMax on float. Follows values derived from the ids through Cast/Identity/Reshape/Slice/... ; stops at
    Shape (its output is a shape, not ids), at Gather's indices input (the output is table rows) and at ArgMax."""
    g = model.graph
    int_types = {2, 3, 4, 5, 6, 7, 12, 13}  # uint8 int8 uint16 int16 int32 int64 uint32 uint64
    tainted = {i.name for i in g.input if i.type.tensor_type.elem_type in int_types}
    problems: List[str] = []
    passthrough = {"Cast", "Identity", "Reshape", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Transpose",
                   "Concat", "Expand", "Tile", "Gather", "Max", "Min", "Where", "Split"}
    changed = True
    seen_nodes: set = set()
    while changed:
        changed = False
        for idx, node in enumerate(g.node):
            ins = list(node.input)
            hit = [j for j, name in enumerate(ins) if name in tainted]
            if not hit or idx in seen_nodes:
                continue
            seen_nodes.add(idx)
            changed = True
            label = node.name or f"#{idx}"
            if node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if to in FLOAT_TYPES:
                    problems.append(f"{label}: Cast of token ids {ins[0]!r} to float type {to}")
                    continue
            if node.op_type == "ArgMax" or node.op_type == "Shape":
                continue
            if node.op_type == "Gather" and hit == [1]:
                continue  # embedding lookup: ids are indices
            if node.op_type in passthrough:
                if node.op_type in ("Reshape", "Slice", "Expand", "Tile", "Squeeze", "Unsqueeze") and 0 not in hit:
                    continue  # ids used as a shape/axes argument
                tainted.update(o for o in node.output if o)
            else:
                problems.append(f"{label}: {node.op_type} consumes token ids ({[ins[j] for j in hit]})")
    # ArgMax on a float tensor derived from ids is caught as a Cast above; also flag any ArgMax whose input
    # is a float graph input or initializer-free float value feeding from a Cast of ids (covered) — nothing more.
    return problems


def quantize_int8(src: str, dst: str, reduce_range: bool) -> Dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                     op_types_to_quantize=list(INT8_OP_TYPES))
    return {"function": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": True,
            "reduce_range": reduce_range, "op_types_to_quantize": list(INT8_OP_TYPES)}


def convert_fp16(src: str, dst: str) -> Dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    m = onnx.load(src)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_EXTRA_BLOCKED_OPS))
    m16 = convert_float_to_float16(m, keep_io_types=True, op_block_list=block)
    # The converter appends its Cast nodes at the end of the node list; ONNX wants them sorted.
    from onnxruntime.transformers.onnx_model import OnnxModel

    om = OnnxModel(m16)
    om.topological_sort()
    m16 = om.model
    onnx.checker.check_model(m16)
    onnx.save(m16, dst)
    return {"function": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
            "op_block_list_extra": list(FP16_EXTRA_BLOCKED_OPS)}


def op_counts(path: str) -> Dict[str, int]:
    import onnx

    counts: Dict[str, int] = {}
    for n in onnx.load(path, load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------------------------------------------
# Running towers
# --------------------------------------------------------------------------------------------------------------


def minimal_seq_len(ids) -> int:
    """Fewest columns keeping every row's pooled token (argmax(ids) = first EOT): max(argmax) + 1."""
    import numpy as np

    return int(np.asarray(ids).argmax(axis=-1).max()) + 1


def openvino_cpu_device(plugin: Optional[str]):
    """Registers the OpenVINO plugin (once) and returns its CPU EpDevice, or raises saying why there is none."""
    import onnxruntime as ort

    # Absolute: ONNX Runtime would look for a relative library path beside its own library.
    plugin = os.path.realpath(plugin or DEFAULT_OPENVINO_PLUGIN)
    if not os.path.isfile(plugin):
        raise RuntimeError(f"no OpenVINO plugin at {plugin}: run scripts/setup.sh (PyPI onnxruntime-ep-openvino)")
    if not getattr(openvino_cpu_device, "registered", None):
        ort.register_execution_provider_library(OPENVINO_EP_NAME, plugin)
        openvino_cpu_device.registered = plugin
    devices = ort.get_ep_devices()
    for d in devices:
        if d.ep_name == OPENVINO_EP_NAME and d.device.type == ort.OrtHardwareDeviceType.CPU:
            return d
    vendors = sorted({d.device.vendor for d in devices if d.device.type == ort.OrtHardwareDeviceType.CPU})
    raise RuntimeError(f"the OpenVINO plugin offers no CPU device here (CPU vendor: {', '.join(vendors) or '?'}): "
                       f"onnxruntime-ep-openvino publishes devices for Intel CPUs only")


class _NativeInput:
    TYPES = {"f32": "tensor(float)", "u8": "tensor(uint8)", "i64": "tensor(int64)", "i32": "tensor(int32)"}

    def __init__(self, port):
        self.name = port.get_any_name()
        self.shape = [d.get_length() if d.is_static else "dyn" for d in port.get_partial_shape()]
        self.type = self.TYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))


class _NativeSession:
    """The slice of onnxruntime.InferenceSession that Tower uses, over an OpenVINO compiled model."""

    def __init__(self, model, compiled):
        self._inputs = [_NativeInput(p) for p in model.inputs]
        self._request = compiled.create_infer_request()

    def get_inputs(self):
        return self._inputs

    def run(self, _outputs, feed):
        import numpy as np

        result = self._request.infer(feed)
        return [np.array(v) for v in result.values()]


class Tower:
    """An ONNX Runtime session adapted to the tower's input like the server does: image float32 NCHW or uint8 NHWC,
    token ids int64/int32, dynamic batch or static batch 1, dynamic sequence axis (rows cut to the batch's
    minimal length) or fixed. run() returns float64 L2-normalized embeddings."""

    def __init__(self, path: str, provider: str = "cpu", threads: Optional[int] = None,
                 openvino_plugin: Optional[str] = None):
        import onnxruntime as ort

        if provider == "openvino-native":
            self._init_native(path, threads)
            return
        so = ort.SessionOptions()
        if provider == "cpu" and path.endswith(".fp16.onnx"):
            # ORT 1.32's CPU provider crashes (SIGSEGV in session creation) on the fp16 image tower at
            # ORT_ENABLE_ALL (layout optimizations); the extended level runs it.
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.path = path
        if provider == "openvino-plugin":
            so.add_provider_for_devices([openvino_cpu_device(openvino_plugin)],
                                        {"load_config": openvino_load_config(so.intra_op_num_threads)})
            # Nodes OpenVINO cannot take are an error, as in the server, not a silent CPU fall back.
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            self.sess = ort.InferenceSession(path, so)
            self._describe()
            return
        providers = {"cpu": ["CPUExecutionProvider"],
                     "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}[provider]
        if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            # Checked first: a silent fallback to the CPU provider would gate (or crash on) the wrong thing.
            raise RuntimeError(f"{path}: the CUDA provider is not available here ({ort.get_available_providers()})")
        self.sess = ort.InferenceSession(path, so, providers=providers)
        if provider == "cuda" and self.sess.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"{path}: CUDA provider did not start ({self.sess.get_providers()})")
        self._describe()

    def _init_native(self, path: str, threads: Optional[int]):
        """OpenVINO's own runtime at bf16 (where the plugin EP offers no device): the same OpenVINO release, CPU
        plugin and ONNX frontend as the plugin, without ONNX Runtime around it."""
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                     "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
                                                     "PERFORMANCE_HINT": "LATENCY"})
        self.path = path
        self.sess = _NativeSession(model, compiled)
        self._describe()

    def _describe(self):
        inp = self.sess.get_inputs()[0]
        self.name, self.shape, self.type = inp.name, list(inp.shape), inp.type
        self.static_batch1 = self.shape[0] == 1
        self.dynamic_seq = (self.type in ("tensor(int64)", "tensor(int32)") and len(self.shape) == 2
                            and not isinstance(self.shape[1], int))
        self.kind = "text" if self.type in ("tensor(int64)", "tensor(int32)") else "image"

    def _feed(self, x):
        import numpy as np

        if self.kind == "text":
            x = np.asarray(x, dtype=np.int32 if self.type == "tensor(int32)" else np.int64)
            if self.dynamic_seq:
                x = x[:, :minimal_seq_len(x)]
        out = self.sess.run(None, {self.name: x})[0]
        return np.asarray(out, dtype=np.float64)

    def run(self, x):
        import numpy as np

        if self.static_batch1:
            return l2_normalize(np.concatenate([self._feed(x[i:i + 1]) for i in range(len(x))]))
        return l2_normalize(self._feed(x))

    def run_batched(self, x, batch: int):
        import numpy as np

        return np.concatenate([self.run(x[i:i + batch]) for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------------------------------------------
# Calibration set
# --------------------------------------------------------------------------------------------------------------


def list_images(dirs: Sequence[str]) -> List[str]:
    out: List[str] = []
    for d in dirs:
        if os.path.isfile(d):
            out.append(d)
            continue
        for p in sorted(glob.glob(os.path.join(d, "**", "*"), recursive=True)):
            if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS):
                out.append(p)
    return out


def load_texts(texts_json: Optional[str], label_set_json: Optional[str]) -> Tuple[List[str], Dict[str, Any]]:
    """Fixture texts then the label set's prompts (label-major); returns (texts, {"n_fixture", "labels",
    "templates", "prompt_offset"})."""
    texts: List[str] = []
    if texts_json and os.path.exists(texts_json):
        with open(texts_json, encoding="utf-8") as f:
            texts = [t["text"] if isinstance(t, dict) else str(t) for t in json.load(f)]
    info: Dict[str, Any] = {"n_fixture": len(texts), "labels": [], "templates": [], "prompt_offset": len(texts)}
    if label_set_json and os.path.exists(label_set_json):
        with open(label_set_json, encoding="utf-8") as f:
            ls = json.load(f)
        info["labels"], info["templates"] = list(ls["labels"]), list(ls["templates"])
        texts += [t.format(label) for label in ls["labels"] for t in ls["templates"]]
    return texts, info


def preprocess_images(model_dir: str, paths: Sequence[str]):
    """(float32 NCHW normalized, uint8 NHWC raw levels, used paths, skipped {path: error}) with open_clip's
    transform for visual/preprocess_cfg.json (the raw levels are the same pipeline before ToTensor/Normalize)."""
    import numpy as np
    from PIL import Image
    from open_clip.transform import PreprocessCfg, image_transform_v2

    with open(os.path.join(model_dir, "visual", "preprocess_cfg.json")) as f:
        cfg = json.load(f)
    fields = {k: cfg[k] for k in ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")
              if k in cfg}
    if isinstance(fields.get("size"), list):
        fields["size"] = tuple(fields["size"])
    tf = image_transform_v2(PreprocessCfg(**fields), is_train=False)
    steps = list(tf.transforms)
    names = [type(s).__name__ for s in steps]
    if names[-1] != "Normalize" or not names[-2].endswith("ToTensor"):
        raise SystemExit(f"unexpected open_clip transform {names}")
    floats, raws, used, skipped = [], [], [], {}
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                x = im
                for s in steps[:-2]:
                    x = s(x)
                raw = np.asarray(x, dtype=np.uint8)
                t = steps[-1](steps[-2](x))
            floats.append(t.numpy().astype(np.float32))
            raws.append(raw)
            used.append(p)
        except Exception as e:  # noqa: BLE001 - record and go on
            skipped[p] = f"{type(e).__name__}: {e}"
    if not used:
        raise SystemExit("no calibration image could be decoded")
    return np.stack(floats), np.stack(raws), used, skipped


def tokenize(model_dir: str, texts: Sequence[str]):
    import numpy as np
    import open_clip

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    ctx = int(cfg.get("text_cfg", {}).get("context_length", cfg.get("context_length", 77)))
    ids = open_clip.tokenize(list(texts), context_length=ctx)
    return np.asarray(ids.numpy(), dtype=np.int64)


# --------------------------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------------------------


def _disagreements(ref_idx, got_idx, ref_margin, limit: int = 10) -> List[Dict[str, Any]]:
    import numpy as np

    out = []
    for i in np.nonzero(np.asarray(ref_idx) != np.asarray(got_idx))[0][:limit]:
        out.append({"item": int(i), "fp32": int(ref_idx[i]), "variant": int(got_idx[i]),
                    "fp32_top1_margin": float(ref_margin[i])})
    return out


def evaluate_variant(ref: Dict[str, Any], var: Dict[str, Any], cal: Dict[str, Any]) -> Dict[str, Any]:
    """ref/var: {"visual": emb or None, "textual": emb or None} (normalized). cal: calibration info with
    prompt_offset, labels, templates. Returns per-tower cosine summaries and the agreement metrics."""
    out: Dict[str, Any] = {"towers": {}, "agreements": {}, "disagreements": {}}
    for tower in TOWERS:
        if ref.get(tower) is not None and var.get(tower) is not None:
            out["towers"][tower] = {"cosine": summarize_cosines(row_cosines(ref[tower], var[tower]))}
    if ref.get("visual") is None or ref.get("textual") is None:
        return out
    img = {"ref": ref["visual"], "var": var.get("visual") if var.get("visual") is not None else ref["visual"]}
    txt = {"ref": ref["textual"], "var": var.get("textual") if var.get("textual") is not None else ref["textual"]}
    combos = {"image_tower": ("var", "ref"), "text_tower": ("ref", "var"), "both": ("var", "var")}
    if var.get("visual") is None:
        combos = {k: v for k, v in combos.items() if k == "text_tower"}
    if var.get("textual") is None:
        combos = {k: v for k, v in combos.items() if k == "image_tower"}
    n_l, n_t, off = len(cal["labels"]), len(cal["templates"]), cal["prompt_offset"]
    if n_l and n_t:
        zs = {}
        clf_ref = zero_shot_classifier(txt["ref"][off:off + n_l * n_t], n_l, n_t)
        pred_ref = top1(img["ref"], clf_ref)
        for name, (i_src, t_src) in combos.items():
            clf = zero_shot_classifier(txt[t_src][off:off + n_l * n_t], n_l, n_t)
            pred = top1(img[i_src], clf)
            zs[name] = agreement(pred_ref, pred)
            if name == "both":
                out["disagreements"]["zero_shot"] = _disagreements(pred_ref, pred, margins(img["ref"], clf_ref))
        out["agreements"]["zero_shot_top1"] = zs
    rt = {}
    best_ref = top1(txt["ref"], img["ref"])
    for name, (i_src, t_src) in combos.items():
        best = top1(txt[t_src], img[i_src])
        rt[name] = agreement(best_ref, best)
        if name == "both":
            out["disagreements"]["text_to_image"] = _disagreements(best_ref, best, margins(txt["ref"], img["ref"]))
    out["agreements"]["text_to_image_top1"] = rt
    return out


def time_tower(tower: Tower, x, batch: int, min_seconds: float = 1.0, min_runs: int = 3) -> Dict[str, float]:
    """Median seconds per run at a fixed batch (input rows repeated); items/s."""
    import numpy as np

    reps = -(-batch // len(x))
    xb = np.concatenate([x] * reps)[:batch]
    tower._feed(xb)  # warm-up
    times: List[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        tower._feed(xb)
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    med = float(np.median(times))
    return {"batch": batch, "median_ms": med * 1e3, "items_per_s": batch / med, "runs": len(times)}


def json_safe(x: Any) -> Any:
    """NaN/inf (e.g. an agreement over nothing) as null: the report must be strict JSON (the server parses it)."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _rm(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def run_gate(model_dir: str, variants: Sequence[str], thresholds: Dict[str, float],
             calibration_images: Sequence[str] = (), texts_json: Optional[str] = DEFAULT_TEXTS,
             label_set_json: Optional[str] = DEFAULT_LABEL_SET, reduce_range: str = "auto",
             fp16_provider: str = "auto", threads: Optional[int] = None, image_batch: int = 8,
             text_batch: int = 16, keep_on_fail: bool = False, bench: bool = False,
             bench_batches: Sequence[int] = (1, 16), bench_seconds: float = 1.0,
             bf16_engine: str = "auto", openvino_plugin: Optional[str] = None,
             log=print) -> Tuple[Dict[str, Any], int]:
    """Make the variants, gate them and write <model_dir>/quantization.json. Returns (report, exit code)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    t_start = time.time()
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    towers_present = [t for t in TOWERS if os.path.exists(os.path.join(model_dir, t, "model.onnx"))]
    if not towers_present:
        raise SystemExit(f"{model_dir}: no visual/model.onnx or textual/model.onnx")
    cpu = read_cpu_flags()
    available = ort.get_available_providers()
    threads = threads or (os.cpu_count() or 1)

    image_paths = list_images([DEFAULT_IMAGES_DIR, *calibration_images])
    texts, tinfo = load_texts(texts_json, label_set_json)
    imgs_f = imgs_u8 = None
    used_images: List[str] = []
    skipped: Dict[str, str] = {}
    if "visual" in towers_present:
        imgs_f, imgs_u8, used_images, skipped = preprocess_images(model_dir, image_paths)
    ids = tokenize(model_dir, texts) if "textual" in towers_present else None
    log(f"calibration: {len(used_images)} images ({len(skipped)} skipped), {len(texts)} texts")

    def embed(tower_name: str, path: str, provider: str, batched: bool = True):
        t = Tower(path, provider, threads, openvino_plugin)
        if tower_name == "visual":
            x = imgs_u8 if t.type == "tensor(uint8)" else imgs_f
            bs = image_batch
        else:
            x, bs = ids, text_batch
        return (t.run_batched(x, bs) if batched else t.run_batched(x, 1)), t

    report_path = os.path.join(model_dir, "quantization.json")
    report: Dict[str, Any] = {}
    if os.path.exists(report_path):
        try:
            with open(report_path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            report = {}
    if report.get("schema") != SCHEMA_VERSION:
        report = {}
    report.update({
        "schema": SCHEMA_VERSION,
        "generated_by": "scripts/quantize.py",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": os.path.abspath(model_dir),
        "model_name": cfg.get("model_name"),
        "weights": cfg.get("weights"),
        "machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads,
                    "onnxruntime": ort.__version__, "onnx": onnx.__version__, "providers_available": available,
                    "python": platform.python_version()},
        "thresholds": dict(thresholds),
        "calibration": {
            "images": [os.path.relpath(p, ROOT) if p.startswith(ROOT) else p for p in used_images],
            "images_skipped": skipped,
            "image_preprocess": "PIL decode + open_clip image_transform_v2(visual/preprocess_cfg.json)",
            "texts": len(texts), "fixture_texts": tinfo["n_fixture"],
            "label_set": os.path.relpath(label_set_json, ROOT) if label_set_json else None,
            "labels": len(tinfo["labels"]), "templates": len(tinfo["templates"]),
            "image_batch": image_batch, "text_batch": text_batch,
        },
    })
    if cfg.get("weights") != "pretrained":
        report["note"] = (f"weights are {cfg.get('weights')!r}, not the real checkpoint: these figures say nothing "
                          f"about the real model's accuracy; re-run the gate on the real checkpoint")
    report.setdefault("variants", {})

    ref: Dict[str, Any] = {}
    for tw in towers_present:
        ref[tw], t = embed(tw, os.path.join(model_dir, tw, "model.onnx"), "cpu")
        log(f"fp32 {tw}: input {t.name} {t.type} {t.shape} dynamic_seq={t.dynamic_seq}")
    token_check = {}
    if "textual" in towers_present:
        token_check["fp32"] = check_token_ids_integer(onnx.load(os.path.join(model_dir, "textual", "model.onnx")))

    rc = 0

    def _one_variant(variant: str) -> int:
        rc = 0
        t0 = time.time()
        entry: Dict[str, Any] = {"files": {}, "file_bytes": {}}
        if variant == "int8":
            rr, why = choose_reduce_range(cpu, reduce_range)
            entry["reduce_range_reason"] = why
            provider = "cpu"
        elif variant == "bf16":
            if not has_bf16(cpu):
                raise RuntimeError("bf16 needs a CPU with AVX512-BF16 or AMX-BF16 (OpenVINO would emulate it)")
            provider, entry["engine"] = bf16_provider(bf16_engine, openvino_plugin)
        else:
            provider = ("cuda" if "CUDAExecutionProvider" in available else "cpu") if fp16_provider == "auto" \
                else fp16_provider
        entry["provider"] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                             "openvino-plugin": OPENVINO_EP_NAME,
                             "openvino-native": "OpenVINO runtime (no ONNX Runtime)"}[provider]
        if variant == "fp16" and provider == "cpu":
            entry["provider_note"] = ("gated on the CPU provider, which runs fp16 graphs through inserted casts with "
                                      "most arithmetic in fp32: this measures mostly the fp16 rounding of the weights, "
                                      "not a GPU's fp16 arithmetic; gate on CUDA (--fp16-provider cuda) before serving. "
                                      "Run at ORT_ENABLE_EXTENDED: ORT 1.32's CPU provider crashes (SIGSEGV) creating "
                                      "the fp16 image tower's session at ORT_ENABLE_ALL")
        var: Dict[str, Any] = {}
        single: Dict[str, Any] = {}
        for tw in towers_present:
            src = os.path.join(model_dir, tw, "model.onnx")
            dst = os.path.join(model_dir, variant_file(tw, variant))
            if variant in FILELESS_VARIANTS:
                method = {"op": "OpenVINO INFERENCE_PRECISION_HINT=bf16 over model.onnx (no file written)"}
            else:
                _rm(dst)
                method = quantize_int8(src, dst, rr) if variant == "int8" else convert_fp16(src, dst)
            entry["method"] = method
            entry["files"][tw] = variant_file(tw, variant)
            entry["file_bytes"][tw] = os.path.getsize(dst)
            if tw == "textual":
                token_check[variant] = check_token_ids_integer(onnx.load(dst))
            var[tw], t = embed(tw, dst, provider)
            single[tw], _ = embed(tw, dst, provider, batched=False)
            log(f"{variant} {tw}: {os.path.basename(dst)} {os.path.getsize(dst) / 1e6:.1f} MB, input {t.name} "
                f"{t.type} {t.shape}")
        ev = evaluate_variant(ref, var, tinfo)
        for tw in ev["towers"]:
            ev["towers"][tw]["batch_invariance"] = summarize_cosines(row_cosines(single[tw], var[tw]))
        decision = gate_decision(ev["towers"], ev["agreements"], thresholds)
        if variant in token_check and token_check[variant]:
            decision["towers"]["textual"]["failures"] += token_check[variant]
            decision["towers"]["textual"]["pass"] = False
            decision["pass"] = False
        for tw, d in decision["towers"].items():
            ev["towers"][tw].update(d)
            written = d["pass"] or keep_on_fail
            ev["towers"][tw]["written"] = written
            if not written and variant in FILELESS_VARIANTS:
                entry["files"].pop(tw, None)
            elif not written:
                _rm(os.path.join(model_dir, variant_file(tw, variant)))
                entry["files"].pop(tw, None)
            if not d["pass"]:
                rc = 1
        entry.update({"towers": ev["towers"], "agreements": ev["agreements"],
                      "disagreements": ev["disagreements"], "pass": decision["pass"],
                      "token_ids_integer_problems": token_check.get(variant, []),
                      "seconds": round(time.time() - t0, 1)})
        report["variants"][variant] = entry
        for tw, tr in ev["towers"].items():
            c = tr["cosine"]
            log(f"{variant} {tw}: cosine vs fp32 min {c['min']:.6f} p1 {c['p1']:.6f} mean {c['mean']:.6f} "
                f"-> {'PASS' if tr['pass'] else 'FAIL ' + '; '.join(tr['failures'])}"
                f"{'' if tr['written'] or variant in FILELESS_VARIANTS else ' (file deleted)'}")
        for metric, vals in ev["agreements"].items():
            log(f"{variant} {metric} agreement: " + ", ".join(f"{k} {v:.4f}" for k, v in vals.items()))
        return rc

    for variant in variants:
        try:
            rc = max(rc, _one_variant(variant))
        except Exception as e:  # noqa: BLE001 - a variant that cannot be made or run is a failed gate
            for tw in towers_present:
                if variant not in FILELESS_VARIANTS:  # never model.onnx itself
                    _rm(os.path.join(model_dir, variant_file(tw, variant)))
            report["variants"][variant] = {"pass": False, "error": f"{type(e).__name__}: {e}", "files": {}}
            log(f"{variant}: FAILED: {type(e).__name__}: {e} (no variant file written)")
            rc = 1
    report["token_ids_integer_problems_fp32"] = token_check.get("fp32", [])

    if bench:
        report["timing"] = bench_variants(model_dir, towers_present, imgs_f, imgs_u8, ids, threads,
                                          bench_batches, bench_seconds, log)
    report["seconds"] = round(time.time() - t_start, 1)
    report = json_safe(report)
    with open(report_path + ".tmp", "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(report_path + ".tmp", report_path)
    log(f"wrote {report_path}")
    return report, rc


def bf16_provider(engine: str, plugin: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """Which engine measures bf16: the plugin EP (what the server runs) or, where the plugin offers no device and
    `engine` is auto, OpenVINO's own runtime. Returns (Tower provider, what to record)."""
    if engine in ("auto", "plugin"):
        try:
            openvino_cpu_device(plugin)
            return "openvino-plugin", {"name": "onnxruntime-ep-openvino plugin EP", "plugin": plugin or
                                       DEFAULT_OPENVINO_PLUGIN}
        except Exception as e:  # noqa: BLE001 - reported, then the fallback or the failure
            if engine == "plugin":
                raise
            why = f"{type(e).__name__}: {e}"
    else:
        why = "--bf16-engine openvino-native"
    import openvino as ov

    return "openvino-native", {"name": f"OpenVINO {ov.get_version()} runtime (native)",
                               "why_not_plugin": why,
                               "note": "the server runs bf16 through the plugin EP (same OpenVINO CPU plugin and ONNX "
                                       "frontend); re-gate with --bf16-engine plugin on the serving machine"}


def bench_variants(model_dir: str, towers_present: Sequence[str], imgs_f, imgs_u8, ids, threads: int,
                   batches: Sequence[int], seconds: float, log=print) -> Dict[str, Any]:
    """CPU provider timing of fp32 and each variant file present: images, texts at L=77 and L=16."""
    import numpy as np

    out: Dict[str, Any] = {"provider": "CPUExecutionProvider", "threads": threads,
                           "cpu": read_cpu_flags(), "rows": []}
    for tw in towers_present:
        for name in ("fp32", *VARIANTS):
            if name in FILELESS_VARIANTS:
                continue
            rel = f"{tw}/model.onnx" if name == "fp32" else variant_file(tw, name)
            path = os.path.join(model_dir, rel)
            if not os.path.exists(path):
                continue
            t = Tower(path, "cpu", threads)
            cases: List[Tuple[str, Any]] = []
            if tw == "visual":
                cases.append(("images", imgs_u8 if t.type == "tensor(uint8)" else imgs_f))
            else:
                ctx = ids.shape[1]
                rng = np.random.default_rng(0)
                for l in sorted({ctx, 16}, reverse=True):
                    if l != ctx and not t.dynamic_seq:
                        continue  # a fixed-length graph always runs context_length columns
                    x = np.zeros((32, ctx), dtype=np.int64)
                    x[:, 0] = 49406
                    x[:, 1:l - 1] = rng.integers(256, 49405, size=(32, l - 2))
                    x[:, l - 1] = 49407
                    cases.append((f"texts L={l}", x))
            for label, x in cases:
                for b in batches:
                    if t.static_batch1 and b != 1:
                        continue
                    r = time_tower(t, x, b, seconds)
                    row = {"tower": tw, "variant": name, "input": label, **r}
                    out["rows"].append(row)
                    log(f"timing {tw:<7} {name:<4} {label:<11} batch {b:>3}: {r['median_ms']:8.2f} ms "
                        f"{r['items_per_s']:8.1f} items/s")
    return out


def add_gate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy gate (scripts/quantize.py)")
    g.add_argument("--calibration-images", action="append", default=[], metavar="DIR",
                   help="more calibration photographs (a folder, searched recursively, or a file); repeatable. "
                        "tests/fixtures/images is always used")
    g.add_argument("--calibration-texts", default=DEFAULT_TEXTS, help="texts JSON (default %(default)s)")
    g.add_argument("--calibration-label-set", default=DEFAULT_LABEL_SET,
                   help="label set for zero-shot agreement and prompts (default %(default)s)")
    g.add_argument("--image-min-cosine", type=float, default=DEFAULT_THRESHOLDS["image_min_cosine"])
    g.add_argument("--text-min-cosine", type=float, default=DEFAULT_THRESHOLDS["text_min_cosine"])
    g.add_argument("--top1-agreement", type=float, default=DEFAULT_THRESHOLDS["top1_agreement"],
                   help="minimum top-1 agreement with fp32 (zero-shot and retrieval) (default %(default)s)")
    g.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="int8: auto = off with avx512_vnni, else on")
    g.add_argument("--fp16-provider", choices=("auto", "cpu", "cuda"), default="auto",
                   help="provider the fp16 gate runs on (auto: CUDA when available)")
    g.add_argument("--bf16-engine", choices=("auto", "plugin", "openvino-native"), default="auto",
                   help="bf16: through the OpenVINO plugin EP (as served), or OpenVINO's own runtime where the plugin "
                        "offers no device (auto: the plugin if it can, else native, recorded in the report)")
    g.add_argument("--openvino-plugin", default=None,
                   help=f"libonnxruntime_providers_openvino_plugin.so (default {DEFAULT_OPENVINO_PLUGIN})")
    g.add_argument("--keep-on-fail", action="store_true",
                   help="keep variant files that fail the gate (still recorded as failed, still exit 1)")
    g.add_argument("--bench", action="store_true",
                   help="also time fp32 and the variants on the CPU provider into quantization.json")
    g.add_argument("--bench-batches", default="1,16")
    g.add_argument("--bench-seconds", type=float, default=1.0)


def gate_kwargs(a: argparse.Namespace) -> Dict[str, Any]:
    return dict(
        thresholds={"image_min_cosine": a.image_min_cosine, "text_min_cosine": a.text_min_cosine,
                    "top1_agreement": a.top1_agreement},
        calibration_images=a.calibration_images, texts_json=a.calibration_texts,
        label_set_json=a.calibration_label_set, reduce_range=a.reduce_range, fp16_provider=a.fp16_provider,
        keep_on_fail=a.keep_on_fail, bench=a.bench, bf16_engine=a.bf16_engine, openvino_plugin=a.openvino_plugin,
        bench_batches=[int(b) for b in str(a.bench_batches).split(",") if b.strip()],
        bench_seconds=a.bench_seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="exported model directory (scripts/export_onnx.py)")
    p.add_argument("--int8", action="store_true", help="make and gate <tower>/model.int8.onnx")
    p.add_argument("--fp16", action="store_true", help="make and gate <tower>/model.fp16.onnx")
    p.add_argument("--bf16", action="store_true", help="gate model.onnx at OpenVINO's bf16 inference precision")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--image-batch", type=int, default=8)
    p.add_argument("--text-batch", type=int, default=16)
    add_gate_args(p)
    a = p.parse_args(argv)
    variants = [v for v, on in (("int8", a.int8), ("fp16", a.fp16), ("bf16", a.bf16)) if on]
    if not variants:
        p.error("nothing to do: give --int8, --fp16 and/or --bf16")
    _, rc = run_gate(a.model_dir, variants, threads=a.threads, image_batch=a.image_batch,
                     text_batch=a.text_batch, **gate_kwargs(a))
    if rc:
        print("quantize: a variant failed the accuracy gate (see quantization.json); its file was not written"
              if not a.keep_on_fail else "quantize: a variant failed the accuracy gate (kept: --keep-on-fail)",
              file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
