#!/usr/bin/env python3
r"""Export an OpenCLIP model to ONNX in the Immich-style model directory that clip-serve loads.

    <out>/config.json                  open_clip model config (embed_dim, vision_cfg, text_cfg) + provenance
    <out>/visual/model.onnx            image tower
    <out>/visual/preprocess_cfg.json   size, mode, mean, std, interpolation, resize_mode, fill_color
    <out>/textual/model.onnx           text tower
    <out>/textual/tokenizer.json       HF tokenizers file reproducing open_clip's SimpleTokenizer
    <out>/textual/tokenizer_config.json

Weights (exactly one):
  default          the real checkpoint: open_clip.create_model_and_transforms(model, pretrained=tag), which
                   downloads it from Hugging Face (laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K for the default
                   tag). Needs network access to huggingface.co (or a warm HF cache / --cache-dir).
  --random-init    the same architecture with open_clip's random initialisation (seeded): for speed
                   measurements only. config.json says "weights": "random-init" and "pretrained": null.
  --tiny           a small model of the same family (224 px, patch 32, context 77, vocab 49408, so preprocessing
                   and tokenisation are identical to the real model), seeded: the committed test fixture.
                   config.json says "weights": "test".
In the last two cases the preprocessing config is still the one the tagged checkpoint gets from open_clip
(mean/std, interpolation, resize mode from open_clip's pretrained table), without downloading anything.

Graph variants:
  standard  image float32 [N,3,H,W] (already normalized) -> image_embedding float32 [N,D]
            text  int64   [N,L]                         -> text_embedding  float32 [N,D]
            dynamic batch axis ("batch"), embeddings NOT L2-normalized (open_clip encode_* with normalize=False).
            The text input also has a dynamic sequence axis ("sequence", L = 1..context_length): CLIP's text
            tower is causal and pools at argmax(ids) (the first EOT, 49407 being the largest id), so cutting
            every row after the batch's last EOT gives the same vectors as the full context_length (checked at
            several L against torch at full length; verify_export). config.json exporter.text_dynamic_sequence
            records it. The text graph is VarLenTextTower (positional embedding and causal mask sliced to L,
            attention written out), not nn.MultiheadAttention, whose legacy export bakes the traced L in.
  immich    deliberately the other style seen in the wild, to exercise the server's input/output adapter:
            image uint8 [1,H,W,3] raw 0..255 (the /255 and mean/std normalisation are inside the graph),
            text int32 [1,context_length], both outputs named `embedding` and L2-normalized in the graph,
            static batch 1.

Zero-shot classifiers (optional): --classifiers imagenet-1k,cifar-10 then precomputes the built-in label sets
(assets/label_sets/NAME.json) into <out>/classifiers/NAME.{json,f32} with the model just exported (see
scripts/export_classifiers.py, which does the same for an existing model directory). Cost: one text-tower
forward per label x template; imagenet-1k is 1000 x 80 = 80,000 texts, for ViT-B-32 roughly 1 to 2 hours on 2 CPU
cores (~50 min at best), minutes on a GPU (--classifiers-device cuda); cifar-10 is 180 texts.

Reduced-precision variants (optional, behind an accuracy gate; see scripts/quantize.py):
  --quantize int8   visual/model.int8.onnx + textual/model.int8.onnx (ONNX Runtime dynamic quantization of
                    MatMul/Gemm weights, QInt8 per channel) for CPUs;
  --fp16            visual/model.fp16.onnx + textual/model.fp16.onnx (float16 weights/activations, fp32 I/O,
                    LayerNorm/Softmax/ArgMax kept fp32) for GPUs.
  Each is compared with the fp32 graph on a calibration set (tests/fixtures/images + --calibration-images,
  tests/fixtures/texts.json + cifar-10 prompts) and written to <out>/quantization.json; a tower below the
  thresholds gets no file and the exporter exits non-zero. With --random-init/--tiny weights those figures
  say nothing about the real checkpoint's accuracy.

Example (real checkpoint, on a machine with internet):
    python scripts/export_onnx.py --model ViT-B-32 --pretrained datacomp_xl_s13b_b90k \
        --out models/ViT-B-32__datacomp_xl_s13b_b90k [--classifiers imagenet-1k,cifar-10]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import open_clip
from open_clip.pretrained import get_pretrained_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from open_clip.model import set_model_preprocess_cfg
from open_clip.transformer import ResidualAttentionBlock, text_global_pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_tokenizer_json import write_tokenizer_files  # noqa: E402

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "datacomp_xl_s13b_b90k"
DEFAULT_SEED = 0
DEFAULT_OPSET = 17

#: The tiny test configuration. Same family as ViT-B-32 and the same input contract (224 px, patch 32,
#: context 77, vocab 49408): only the widths/depths shrink. Text width 8 keeps the 49408 x width token table,
#: which dominates the text tower, under 2 MB.
TINY_SUFFIX = "-tiny-test"
TINY_CFG: Dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2},
}


# --------------------------------------------------------------------------------------------------------------
# Model construction (shared with scripts/reference.py so the reference uses exactly the exported torch model)
# --------------------------------------------------------------------------------------------------------------


def _register_tiny_config(model_name: str) -> str:
    """Register TINY_CFG with open_clip's config registry under `<model_name>-tiny-test` and return that name."""
    name = model_name + TINY_SUFFIX
    if open_clip.get_model_config(name) is None:
        tmpdir = tempfile.mkdtemp(prefix="clip_tiny_cfg_")
        with open(os.path.join(tmpdir, name + ".json"), "w") as f:
            json.dump(TINY_CFG, f)
        open_clip.add_model_config(tmpdir)
    return name


def pretrained_preprocess_cfg(model: nn.Module, model_name: str, pretrained: Optional[str]) -> Dict[str, Any]:
    """The preprocess cfg open_clip.create_model(model_name, pretrained=tag) would attach, without downloading.

    Mirrors open_clip.factory.create_model: defaults (PreprocessCfg) <- pretrained-tag cfg (mean, std,
    interpolation, resize_mode) <- size from the instantiated visual tower.
    """
    cfg = asdict(PreprocessCfg())
    if pretrained:
        tag_cfg = get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            raise SystemExit(f"unknown pretrained tag {pretrained!r} for {model_name!r}; "
                             f"known: {open_clip.list_pretrained_tags_by_model(model_name)}")
        cfg = merge_preprocess_dict(cfg, tag_cfg)
    size = getattr(model.visual, "image_size", None)
    if size is not None:
        cfg["size"] = size
    return cfg


def build_model(
    model_name: str = DEFAULT_MODEL,
    pretrained: Optional[str] = DEFAULT_PRETRAINED,
    weights: str = "pretrained",
    seed: int = DEFAULT_SEED,
    cache_dir: Optional[str] = None,
    state_dict_path: Optional[str] = None,
) -> Tuple[nn.Module, Any, Dict[str, Any]]:
    """Create the torch model, its open_clip inference transform, and provenance info.

    weights: "pretrained" (download the tagged checkpoint), "random-init" (same architecture, seeded random
    init) or "test" (TINY_CFG, seeded; or the weights in `state_dict_path` when given).
    Returns (model in eval mode, preprocess_val, info dict with model_cfg/model_name/arch_name/hf_hub).
    """
    tag_cfg = get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if weights == "pretrained":
        if not pretrained:
            raise SystemExit("--pretrained is required unless --random-init or --tiny is given")
        if not tag_cfg:
            raise SystemExit(f"unknown pretrained tag {pretrained!r} for {model_name!r}")
        # The real path: open_clip resolves the tag to its HF hub repo, downloads and loads it (strict=True)
        # and attaches the tag's preprocess cfg to model.visual.preprocess_cfg.
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, cache_dir=cache_dir)
        arch_name = model_name
    elif weights in ("random-init", "test"):
        arch_name = _register_tiny_config(model_name) if weights == "test" else model_name
        torch.manual_seed(seed)
        model = open_clip.create_model(arch_name, pretrained=None)
        if state_dict_path:
            model.load_state_dict(torch.load(state_dict_path, map_location="cpu", weights_only=True), strict=True)
        set_model_preprocess_cfg(model, pretrained_preprocess_cfg(model, model_name, pretrained))
        preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    else:
        raise ValueError(f"unknown weights kind {weights!r}")
    model.eval()
    model_cfg = open_clip.get_model_config(arch_name)
    info = {
        "arch_name": arch_name,
        "model_cfg": model_cfg,
        "hf_hub": (tag_cfg.get("hf_hub") or "").rstrip("/") or None,
    }
    return model, preprocess, info


# --------------------------------------------------------------------------------------------------------------
# Export wrappers
# --------------------------------------------------------------------------------------------------------------


class VisualTower(nn.Module):
    """Standard variant: normalized float32 NCHW -> unnormalized image embedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image, normalize=False)


class TextTower(nn.Module):
    """int64 token ids [N,context_length] -> unnormalized text embedding (pooled at argmax(ids), i.e. first EOT).

    Fixed length only: open_clip's encode_text adds the full positional embedding and the full causal mask.
    Kept as the torch reference; the standard export uses VarLenTextTower.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(text, normalize=False)


#: CLIP's end-of-text token: the largest id of the vocabulary, so argmax(ids) finds the (first) EOT.
EOT_TOKEN = 49407
SOT_TOKEN = 49406


class VarLenTextTower(nn.Module):
    """Standard variant: int64 token ids [N,L], L = 1..context_length -> unnormalized text embedding [N,D].

    The same arithmetic as open_clip's CLIP.encode_text(text, normalize=False), written so that the traced
    graph works at every L:
      * positional_embedding[:L] and attn_mask[:L,:L] instead of the full context_length rows (open_clip adds
        all 77 rows, so encode_text(ids[:, :14]) fails);
      * attention written out (q/k/v from in_proj_weight.chunk(3) + bias, heads, q @ k^T * scale + mask,
        softmax, @ v, out_proj) instead of nn.MultiheadAttention, whose legacy ONNX export bakes the traced
        length into a Reshape;
      * pooling with open_clip's text_global_pool(pool_type='argmax') on the integer ids (no cast to a float
        type before the ArgMax: in fp16, 49406 and 49407 are the same number).
    Because the mask is causal and pooling is at the first EOT, rows cut after the batch's last EOT give the
    same vectors as at full length.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        missing = [a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
                   if not hasattr(model, a)]
        if missing:
            raise SystemExit(f"variable-length text export supports open_clip CLIP models with the built-in text "
                             f"transformer; this model lacks {missing}")
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise SystemExit(f"variable-length text export needs argmax pooling, not {model.text_pool_type!r}")
        if model.attn_mask is None:
            raise SystemExit("variable-length text export needs the causal attention mask (cutting rows is exact "
                             "only for a causal text tower)")
        for i, blk in enumerate(model.transformer.resblocks):
            if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
                raise SystemExit(f"text block {i} is {type(blk).__name__}; only ResidualAttentionBlock is supported")
            if not blk.attn._qkv_same_embed_dim or blk.attn.in_proj_weight is None:
                raise SystemExit(f"text block {i}: separate q/k/v projection weights are not supported")
            if blk.attn.bias_k is not None or blk.attn.add_zero_attn:
                raise SystemExit(f"text block {i}: bias_k/bias_v/add_zero_attn are not supported")
        self.model = model

    @staticmethod
    def _attention(mha: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, l, d = x.shape[0], x.shape[1], x.shape[2]
        heads = mha.num_heads
        head_dim = mha.embed_dim // heads
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        if mha.in_proj_bias is not None:
            bq, bk, bv = mha.in_proj_bias.chunk(3)
        else:
            bq = bk = bv = None
        q = F.linear(x, wq, bq).reshape(n, l, heads, head_dim).transpose(1, 2)  # [N,H,L,hd]
        k = F.linear(x, wk, bk).reshape(n, l, heads, head_dim).transpose(1, 2)
        v = F.linear(x, wv, bv).reshape(n, l, heads, head_dim).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-2, -1)) * (float(head_dim) ** -0.5) + mask
        att = att.softmax(dim=-1)
        o = torch.matmul(att, v).transpose(1, 2).reshape(n, l, d)
        return mha.out_proj(o)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        m = self.model
        l = text.shape[1]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast_dtype)  # [N,L,W]
        x = x + m.positional_embedding[:l].to(cast_dtype)
        mask = m.attn_mask[:l, :l].to(cast_dtype)
        for blk in m.transformer.resblocks:
            x = x + blk.ls_1(self._attention(blk.attn, blk.ln_1(x), mask))
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        x = m.ln_final(x)
        x = text_global_pool(x, text, "argmax")
        if m.text_projection is not None:
            if isinstance(m.text_projection, nn.Linear):
                x = m.text_projection(x)
            else:
                x = x @ m.text_projection
        return x


class ImmichVisualTower(nn.Module):
    """Immich-style variant: uint8 NHWC 0..255 -> L2-normalized embedding.

    Normalisation is done op for op like torchvision's ToTensor (float, /255) then Normalize ((x-mean)/std).
    """

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = (x - self.mean) / self.std
        return F.normalize(self.model.encode_image(x), dim=-1)


class ImmichTextTower(nn.Module):
    """Immich-style variant: int32 token ids -> L2-normalized embedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(text.to(torch.int64)), dim=-1)


def _export(module: nn.Module, args: tuple, path: str, input_name: str, output_name: str,
            dynamic_batch: bool, opset: int, exporter: str, dynamic_seq_max: Optional[int] = None) -> None:
    """dynamic_seq_max: also make input axis 1 dynamic ("sequence", 1..dynamic_seq_max)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if exporter == "legacy":
        in_axes = {0: "batch", 1: "sequence"} if dynamic_seq_max else {0: "batch"}
        # The TorchScript exporter cannot export nn.MultiheadAttention's fused fast path
        # (aten::_native_multi_head_attention); the plain math path exports fine.
        torch.backends.mha.set_fastpath_enabled(False)
        torch.onnx.export(
            module, args, path,
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: in_axes, output_name: {0: "batch"}} if dynamic_batch else None,
            opset_version=opset,
            do_constant_folding=True,
        )
    elif exporter == "dynamo":
        if output_name == "embedding":
            # The dynamo exporter already names an internal value `embedding` (token embedding):
            # "Duplicate definition of name". Use the legacy exporter for that name.
            raise SystemExit("output name 'embedding' collides with the dynamo exporter; use --exporter legacy")
        axes = {0: torch.export.Dim("batch", min=1, max=4096)}
        if dynamic_seq_max:
            axes[1] = torch.export.Dim("sequence", min=1, max=dynamic_seq_max)
        dyn = {input_name: axes} if dynamic_batch else None
        prog = torch.onnx.export(
            module, args, dynamo=True, input_names=[input_name], output_names=[output_name],
            dynamic_shapes=dyn, opset_version=max(opset, 18), external_data=False)
        prog.save(path, external_data=False)
    else:
        raise ValueError(exporter)


def _add_metadata(path: str, meta: Dict[str, str]) -> None:
    """Record provenance inside the ONNX file too, so a lone model.onnx still says what it is."""
    import onnx

    m = onnx.load(path)
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, str(v)
    m.producer_name = "clip-serve scripts/export_onnx.py"
    onnx.save(m, path)


def _sample_ids(batch: int, context_length: int, generator: torch.Generator,
                max_len: Optional[int] = None) -> torch.Tensor:
    """Random token ids shaped like open_clip.tokenize output: SOT, words, EOT (the max id), zero padding.

    max_len: every row's EOT sits at a position < max_len, the last row's exactly at max_len - 1 (so the
    batch cut to max_len columns holds every EOT, and no shorter cut does).
    """
    ids = torch.zeros(batch, context_length, dtype=torch.int64)
    for i in range(batch):
        if max_len is None:
            n = int(torch.randint(1, context_length - 1, (1,), generator=generator))
        elif i == batch - 1 or max_len <= 2:
            n = max_len - 1
        else:
            n = int(torch.randint(1, max_len - 1, (1,), generator=generator))
        ids[i, 0] = SOT_TOKEN
        ids[i, 1:n] = torch.randint(0, SOT_TOKEN, (n - 1,), generator=generator)
        ids[i, n] = EOT_TOKEN
    return ids


#: Sequence lengths verify_export checks the variable-length text graph at (besides each test text's own).
VERIFY_SEQ_LENGTHS = (2, 8, 16, 24, 77)
#: Below this cosine between the ONNX graph and torch, the export is refused (a wrong graph, not rounding).
VERIFY_MIN_COSINE = 0.99999
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEXTS = os.path.join(REPO_ROOT, "tests", "fixtures", "texts.json")


def minimal_seq_len(ids: np.ndarray) -> int:
    """Fewest columns that keep every row's pooled token: max over rows of argmax(ids) + 1 (first EOT + 1)."""
    return int(np.asarray(ids).argmax(axis=-1).max()) + 1


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def verify_export(model: nn.Module, out: str, variant: str, preprocess_cfg: Dict[str, Any],
                  context_length: int, threads: int = 1, tokenizer=None,
                  texts_path: Optional[str] = DEFAULT_TEXTS) -> Dict[str, float]:
    """Run onnxruntime on random inputs and compare with the torch model; print and return the diffs.

    Standard variant: batch sizes 2 and 3 at full length, then the variable-length text graph at each L of
    VERIFY_SEQ_LENGTHS (random ids whose EOTs all fall before L) and, for each text of texts_path, at its
    minimal L (first EOT + 1), alone and all together at the batch's minimal L, always against torch's
    encode_text at the full context_length.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    vis = ort.InferenceSession(os.path.join(out, "visual", "model.onnx"), so, providers=["CPUExecutionProvider"])
    txt = ort.InferenceSession(os.path.join(out, "textual", "model.onnx"), so, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1234)
    h, w = _hw(preprocess_cfg["size"])
    results: Dict[str, float] = {}
    batches = (2, 3) if variant == "standard" else (1,)
    with torch.no_grad():
        for b in batches:
            if variant == "standard":
                img = torch.randn(b, 3, h, w, generator=g)
                ref_i = model.encode_image(img).numpy()
                got_i = vis.run(None, {"image": img.numpy()})[0]
                ids = _sample_ids(b, context_length, g)
                ref_t = model.encode_text(ids).numpy()
                got_t = txt.run(None, {"text": ids.numpy()})[0]
            else:
                raw = torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)
                mean = torch.tensor(preprocess_cfg["mean"]).view(1, 3, 1, 1)
                std = torch.tensor(preprocess_cfg["std"]).view(1, 3, 1, 1)
                x = (raw.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
                ref_i = model.encode_image(x, normalize=True).numpy()
                got_i = vis.run(None, {"image": raw.numpy()})[0]
                ids = _sample_ids(b, context_length, g)
                ref_t = model.encode_text(ids, normalize=True).numpy()
                got_t = txt.run(None, {"text": ids.numpy().astype(np.int32)})[0]
            for name, ref, got in (("visual", ref_i, got_i), ("textual", ref_t, got_t)):
                assert got.shape == ref.shape, f"{name}: ONNX shape {got.shape} != torch {ref.shape}"
                d = float(np.abs(ref - got).max())
                c = float(_cos(ref, got).min())
                results[f"{name}_b{b}_max_abs_diff"] = d
                results[f"{name}_b{b}_min_cosine"] = c
                print(f"  verify {variant} {name} batch={b}: ONNX vs torch max|diff|={d:.3e} min cosine={c:.9f}")
        if variant == "standard":
            results.update(_verify_seq_lengths(model, txt, context_length, g, tokenizer, texts_path))
    bad = {k: v for k, v in results.items() if k.endswith("_min_cosine") and not v >= VERIFY_MIN_COSINE}
    if bad:
        raise SystemExit(f"ONNX export does not match torch (min cosine < {VERIFY_MIN_COSINE}): {bad}")
    return results


def _verify_seq_lengths(model: nn.Module, txt, context_length: int, g: torch.Generator, tokenizer,
                        texts_path: Optional[str]) -> Dict[str, float]:
    """The text graph fed ids cut to L columns vs torch at the full context_length (see verify_export)."""
    results: Dict[str, float] = {}
    shape = txt.get_inputs()[0].shape
    if not (len(shape) == 2 and not isinstance(shape[1], int)):
        raise SystemExit(f"text graph input shape {shape}: expected a dynamic sequence axis")

    def check(label: str, ids77: torch.Tensor, l: int) -> Tuple[float, float]:
        ref = model.encode_text(ids77).numpy()
        got = txt.run(None, {"text": ids77[:, :l].numpy()})[0]
        assert got.shape == ref.shape, f"textual L={l}: ONNX shape {got.shape} != torch {ref.shape}"
        d, c = float(np.abs(ref - got).max()), float(_cos(ref, got).min())
        results[f"textual_{label}_max_abs_diff"] = d
        results[f"textual_{label}_min_cosine"] = c
        return d, c

    for l in sorted({x for x in VERIFY_SEQ_LENGTHS if 2 <= x <= context_length} | {context_length}):
        ids = _sample_ids(3, context_length, g, max_len=l)
        assert minimal_seq_len(ids.numpy()) == l
        d, c = check(f"L{l}", ids, l)
        print(f"  verify standard textual batch=3 L={l:>2} (torch at L={context_length}): "
              f"max|diff|={d:.3e} min cosine={c:.9f}")
    if texts_path and os.path.exists(texts_path) and tokenizer is not None:
        with open(texts_path, encoding="utf-8") as f:
            texts = [t["text"] for t in json.load(f)]
        ids_all = tokenizer(texts).to(torch.int64)
        assert ids_all.shape[1] == context_length, ids_all.shape
        lens = [minimal_seq_len(r.numpy()[None]) for r in ids_all]
        worst_d, worst_c = 0.0, 1.0
        for i, l in enumerate(lens):  # each text alone at its own minimal L
            ref = model.encode_text(ids_all[i:i + 1]).numpy()
            got = txt.run(None, {"text": ids_all[i:i + 1, :l].numpy()})[0]
            worst_d = max(worst_d, float(np.abs(ref - got).max()))
            worst_c = min(worst_c, float(_cos(ref, got).min()))
        results["textual_texts_own_L_max_abs_diff"] = worst_d
        results["textual_texts_own_L_min_cosine"] = worst_c
        print(f"  verify standard textual {len(texts)} test texts, each alone at its minimal L "
              f"({min(lens)}..{max(lens)}): max|diff|={worst_d:.3e} min cosine={worst_c:.9f}")
        l = minimal_seq_len(ids_all.numpy())
        d, c = check("texts_batch", ids_all, l)
        results["textual_texts_batch_L"] = float(l)
        print(f"  verify standard textual {len(texts)} test texts in one batch at L={l}: "
              f"max|diff|={d:.3e} min cosine={c:.9f}")
    return results


def _hw(size) -> Tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


# --------------------------------------------------------------------------------------------------------------
# Directory writer
# --------------------------------------------------------------------------------------------------------------


def export_model_dir(
    model: nn.Module,
    info: Dict[str, Any],
    out: str,
    model_name: str,
    pretrained: Optional[str],
    weights: str,
    variant: str = "standard",
    opset: int = DEFAULT_OPSET,
    exporter: str = "legacy",
    seed: Optional[int] = None,
    verify: bool = True,
    threads: int = 1,
) -> Dict[str, Any]:
    """Write the full model directory for `model` (see module docstring) and return config.json's content."""
    import onnx

    pp = copy.deepcopy(model.visual.preprocess_cfg)
    h, w = _hw(pp["size"])
    context_length = int(model.context_length)
    if os.path.isdir(out):
        for sub in ("visual", "textual"):
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(os.path.join(out, "visual"), exist_ok=True)
    os.makedirs(os.path.join(out, "textual"), exist_ok=True)

    t0 = time.time()
    with torch.no_grad():
        if variant == "standard":
            _export(VisualTower(model), (torch.randn(2, 3, h, w),), os.path.join(out, "visual", "model.onnx"),
                    "image", "image_embedding", True, opset, exporter)
            # Traced at a length other than context_length, so nothing can silently depend on 77.
            trace_len = min(16, context_length - 1)
            ids = _sample_ids(2, context_length, torch.Generator().manual_seed(0), max_len=trace_len)[:, :trace_len]
            _export(VarLenTextTower(model), (ids,), os.path.join(out, "textual", "model.onnx"),
                    "text", "text_embedding", True, opset, exporter, dynamic_seq_max=context_length)
        elif variant == "immich":
            if exporter != "legacy":
                raise SystemExit("--variant immich names its outputs `embedding`: use --exporter legacy")
            raw = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8)
            _export(ImmichVisualTower(model, pp["mean"], pp["std"]), (raw,),
                    os.path.join(out, "visual", "model.onnx"), "image", "embedding", False, opset, exporter)
            ids = _sample_ids(1, context_length, torch.Generator().manual_seed(0)).to(torch.int32)
            _export(ImmichTextTower(model), (ids,), os.path.join(out, "textual", "model.onnx"),
                    "text", "embedding", False, opset, exporter)
        else:
            raise ValueError(variant)
    print(f"exported {variant} towers with the {exporter} exporter in {time.time() - t0:.1f}s")

    logit_scale = float(model.logit_scale.exp().item())
    logit_bias = None if getattr(model, "logit_bias", None) is None else float(model.logit_bias.item())
    cfg = copy.deepcopy(info["model_cfg"])
    cfg.update({
        "model_name": info["arch_name"],
        "pretrained": pretrained if weights == "pretrained" else None,
        "hf_hub": info["hf_hub"] if weights == "pretrained" else None,
        "weights": weights,
        "logit_scale": logit_scale,
        "logit_bias": logit_bias,
        "context_length": context_length,
        "image_size": [h, w],
        "exporter": {
            "script": "scripts/export_onnx.py",
            "variant": variant,
            "export_style": f"torch.onnx {exporter} exporter, opset {opset if exporter == 'legacy' else max(opset, 18)}",
            "embeddings_normalized_in_graph": variant == "immich",
            # The text graph's input axis 1 is dynamic ("sequence", 1..context_length): the server may cut
            # every row after the batch's last pooled token (max over rows of argmax(ids) + 1).
            "text_dynamic_sequence": variant == "standard",
            "open_clip": open_clip.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "seed": seed,
            # The architecture/tag this directory stands for, also for random-init/test weights, whose
            # preprocessing config and tokenizer are those of this tag.
            "base_model": model_name,
            "base_pretrained": pretrained,
        },
    })
    if weights != "pretrained":
        cfg["note"] = ("NOT the real checkpoint: random weights ({}) with the real model's input contract "
                       "(preprocessing and tokenizer).".format(weights))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    pp_out = {
        "size": [h, w],
        "mode": pp.get("mode", "RGB"),
        "mean": list(pp["mean"]),
        "std": list(pp["std"]),
        "interpolation": pp["interpolation"],
        "resize_mode": pp["resize_mode"],
        "fill_color": pp.get("fill_color", 0),
    }
    with open(os.path.join(out, "visual", "preprocess_cfg.json"), "w") as f:
        json.dump(pp_out, f, indent=2)
        f.write("\n")
    write_tokenizer_files(os.path.join(out, "textual"), context_length)

    meta = {"model_name": cfg["model_name"], "pretrained": cfg["pretrained"] or "", "weights": weights,
            "variant": variant, "open_clip": open_clip.__version__, "torch": torch.__version__}
    for tower in ("visual", "textual"):
        tower_meta = dict(meta)
        if tower == "textual":
            tower_meta["dynamic_sequence"] = "true" if variant == "standard" else "false"
        _add_metadata(os.path.join(out, tower, "model.onnx"), tower_meta)

    if verify:
        cfg_checks = verify_export(model, out, variant, pp_out, context_length, threads,
                                   tokenizer=open_clip.get_tokenizer(info["arch_name"]))
        cfg["_verify"] = cfg_checks
    for tower in ("visual", "textual"):
        p = os.path.join(out, tower, "model.onnx")
        print(f"  {p}: {os.path.getsize(p) / 1e6:.2f} MB")
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture name (default %(default)s)")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="open_clip pretrained tag (default %(default)s); with --random-init/--tiny it only "
                        "selects the preprocessing config, nothing is downloaded")
    p.add_argument("--out", required=True, help="output model directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--random-init", action="store_true", help="same architecture, seeded random weights")
    g.add_argument("--tiny", action="store_true", help="tiny same-family test model, seeded random weights")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="torch.manual_seed for --random-init/--tiny")
    p.add_argument("--state-dict", help="with --tiny: load these weights instead of the seeded init")
    p.add_argument("--save-state-dict", help="also save the torch state_dict here (tiny fixtures)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--variant", choices=("standard", "immich"), default="standard")
    p.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    p.add_argument("--cache-dir", help="open_clip/HF download cache directory")
    p.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads (default %(default)s)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs torch check")
    p.add_argument("--classifiers", default="",
                   help="comma list of label sets (assets/label_sets) to precompute into <out>/classifiers after the "
                        "export, e.g. imagenet-1k,cifar-10 (imagenet-1k = 80,000 text encodings: ~1-2 h for "
                        "ViT-B-32 on 2 CPU cores, minutes on a GPU); default none")
    p.add_argument("--classifiers-device", default="cpu", help="cpu or cuda, for --classifiers")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write <tower>/model.int8.onnx (dynamic INT8, for CPUs), behind the accuracy gate")
    p.add_argument("--fp16", action="store_true",
                   help="also write <tower>/model.fp16.onnx (float16, for GPUs), behind the accuracy gate")
    from quantize import add_gate_args  # noqa: E402 - scripts/ is on sys.path

    add_gate_args(p)
    a = p.parse_args(argv)
    if a.classifiers:
        from export_classifiers import load_label_set, parse_sets, DEFAULT_LABEL_SETS_DIR

        classifier_sets = parse_sets(a.classifiers)
        for name in classifier_sets:  # fail before the export, not after it
            load_label_set(DEFAULT_LABEL_SETS_DIR, name)

    torch.set_num_threads(a.threads)
    weights = "test" if a.tiny else "random-init" if a.random_init else "pretrained"
    if a.state_dict and not a.tiny:
        p.error("--state-dict only applies to --tiny")
    model, _, info = build_model(a.model, a.pretrained, weights, seed=a.seed, cache_dir=a.cache_dir,
                                 state_dict_path=a.state_dict)
    if weights != "pretrained":
        print(f"WARNING: exporting {weights} weights (seed {a.seed}); this is NOT the {a.model}/{a.pretrained} "
              f"checkpoint, only its architecture{' family' if a.tiny else ''} and preprocessing.")
    if a.save_state_dict:
        os.makedirs(os.path.dirname(os.path.abspath(a.save_state_dict)), exist_ok=True)
        torch.save(model.state_dict(), a.save_state_dict)
    cfg = export_model_dir(model, info, a.out, a.model, a.pretrained, weights, a.variant, a.opset, a.exporter,
                           seed=None if weights == "pretrained" else a.seed, verify=not a.no_verify,
                           threads=a.threads)
    print(f"wrote {a.out}: model_name={cfg['model_name']} weights={cfg['weights']} "
          f"logit_scale={cfg['logit_scale']:.4f} embed_dim={cfg['embed_dim']}")
    if a.classifiers:
        from export_classifiers import export_classifiers

        export_classifiers(model, open_clip.get_tokenizer(a.model), cfg, os.path.join(a.out, "classifiers"),
                           classifier_sets, device=a.classifiers_device)
    elif os.path.isdir(os.path.join(a.out, "classifiers")):
        print(f"WARNING: {a.out}/classifiers/ was kept from an earlier run; if the weights changed, regenerate it "
              f"(scripts/export_classifiers.py --model-dir {a.out} --sets ...)")
    # The fp32 graphs changed: variants and their gate report from an earlier export no longer apply.
    from quantize import FILELESS_VARIANTS, TOWERS, VARIANTS, variant_file, run_gate, gate_kwargs

    for tower in TOWERS:
        for v in VARIANTS:
            if v in FILELESS_VARIANTS:  # bf16 is model.onnx itself, run differently: nothing stale to remove
                continue
            stale = os.path.join(a.out, variant_file(tower, v))
            if os.path.exists(stale):
                os.remove(stale)
    if os.path.exists(os.path.join(a.out, "quantization.json")):
        os.remove(os.path.join(a.out, "quantization.json"))
    variants = (["int8"] if a.quantize == "int8" else []) + (["fp16"] if a.fp16 else [])
    if variants:
        if weights != "pretrained":
            print(f"NOTE: the accuracy gate on {weights} weights says nothing about the real checkpoint's accuracy")
        _, rc = run_gate(a.out, variants, threads=a.threads, **gate_kwargs(a))
        if rc:
            print("export: a variant failed the accuracy gate (see quantization.json)", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
