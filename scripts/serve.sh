#!/usr/bin/env bash
# Runs clip-serve on its default model, models/ViT-B-32__datacomp_xl_s13b_b90k.
#
# If that directory is absent it is exported first: the real checkpoint (open_clip ViT-B-32,
# pretrained datacomp_xl_s13b_b90k, downloaded from Hugging Face), or, when Hugging Face cannot be
# reached, the same architecture with RANDOM weights, announced loudly (here, in the server's logs and
# in the Info RPC). Exporting needs torch + open_clip (installed into .cache/export-venv from PyPI, about
# 3 GB, once) unless CLIP_SERVE_PYTHON names a python that has them.
#
# Extra arguments go to `clip-serve serve`, e.g. scripts/serve.sh --grpc-addr 127.0.0.1:50051
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh

MODEL_DIR="${CLIP_SERVE_MODEL_DIR:-models/ViT-B-32__datacomp_xl_s13b_b90k}"
export CLIP_SERVE_MODEL_DIR="$MODEL_DIR"

banner() {
  printf '\n%s\n' "################################################################################" >&2
  printf '#  %s\n' "$@" >&2
  printf '%s\n\n' "################################################################################" >&2
}

model_complete() {
  local f
  for f in config.json visual/model.onnx visual/preprocess_cfg.json textual/model.onnx textual/tokenizer.json; do
    [[ -s "$1/$f" ]] || return 1
  done
}

if ! model_complete "$MODEL_DIR"; then
  if [[ -e "$MODEL_DIR" ]]; then
    echo "serve: $MODEL_DIR is incomplete (an interrupted export?); exporting it again" >&2
    rm -rf "$MODEL_DIR"
  fi
  PYTHON="${CLIP_SERVE_PYTHON:-}"
  if [[ -z "$PYTHON" ]]; then
    if [[ ! -x .cache/export-venv/bin/python ]]; then
      echo "serve: installing the exporter's Python packages into .cache/export-venv (torch, open_clip; once)" >&2
      python3 -m venv .cache/export-venv 2>/dev/null || {
        # Debian splits venv out of python3.
        SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .cache/export-venv
      }
      .cache/export-venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-export.txt
    fi
    PYTHON=.cache/export-venv/bin/python
  fi
  echo "serve: exporting ViT-B-32 / datacomp_xl_s13b_b90k from Hugging Face into $MODEL_DIR" >&2
  if ! "$PYTHON" scripts/export_onnx.py --model ViT-B-32 --pretrained datacomp_xl_s13b_b90k --out "$MODEL_DIR"; then
    banner "The real checkpoint could not be downloaded (no access to Hugging Face?)." \
      "Exporting the SAME ARCHITECTURE WITH RANDOM WEIGHTS instead: its vectors are MEANINGLESS." \
      "Use it to try the API and measure speed only. Delete $MODEL_DIR and rerun with internet access" \
      "to get the real model."
    "$PYTHON" scripts/export_onnx.py --model ViT-B-32 --pretrained datacomp_xl_s13b_b90k --random-init --out "$MODEL_DIR"
  fi
fi

if grep -q '"weights": *"random-init"' "$MODEL_DIR/config.json"; then
  banner "$MODEL_DIR has RANDOM WEIGHTS: embeddings are meaningless (speed measurements only)."
fi

cargo build --release --locked
# Per tower, the fastest variant whose accuracy gate passed and which this CPU runs fast (bf16 on AMX,
# int8 on VNNI/AMX-INT8, else fp32); the log and Info say what was chosen and why. --precision overrides.
export CLIP_SERVE_PRECISION="${CLIP_SERVE_PRECISION:-auto}"
exec target/release/clip-serve serve "$@"
