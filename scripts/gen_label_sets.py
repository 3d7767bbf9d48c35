#!/usr/bin/env python3
"""Write the built-in zero-shot label sets of clip-serve's Classify service to `assets/label_sets/*.json`.

Each file is `{"name", "description", "source", "labels", "templates"}`. A template holds exactly one `{}` and
no other brace, so `template.format(label)` (what open_clip's build_zero_shot_classifier does with str
templates) and `template.replace("{}", label)` give the same text for every label.

    imagenet-1k.json         1000 ImageNet classes, CLIP's class names, OpenAI's 80 prompt templates
    imagenet-1k-simple.json  the same labels, open_clip's 7-template subset (SIMPLE_IMAGENET_TEMPLATES)
    cifar-10.json            the 10 CIFAR-10 classes and 18 templates of OpenAI CLIP's data/prompts.md

ImageNet names come from the installed open_clip (`open_clip.zero_shot_metadata`), which copies OpenAI's
notebooks/Prompt_Engineering_for_ImageNet.ipynb. That list is NOT unique: "missile" (classes 657 and 744) and
"sunglasses" (836 and 837) appear twice. Labels here must be unique, so class 744 becomes "projectile" and class
836 "sunglass" (the first WordNet lemma of those synsets, as in torchvision's ImageNet categories); the other
998 names are CLIP's verbatim, in class-index order.

Deterministic: re-running rewrites identical files (for the same open_clip version, which `source` records).

    python scripts/gen_label_sets.py [--out assets/label_sets]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Sequence

import open_clip
from open_clip import zero_shot_metadata as zsm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: CLIP's ImageNet names are ambiguous at these indices: (index, CLIP's name, unique replacement).
IMAGENET_RENAMES = ((744, "missile", "projectile"), (836, "sunglasses", "sunglass"))

#: Typed from OpenAI CLIP's data/prompts.md, section CIFAR10 (github.com/openai/CLIP, commit 04f4dc2); open_clip
#: does not ship CIFAR prompts. The same 18 templates are listed there for CIFAR100.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
]


def template_strings(templates: Sequence, labels: Sequence[str]) -> List[str]:
    """open_clip templates (lambdas `c -> f'...{c}...'` or str) -> str templates with exactly one `{}`.

    Asserts, for every label, that the callable, `str.format` and `str.replace` give the same text.
    """
    out = []
    for t in templates:
        s = t("{}") if callable(t) else t
        assert isinstance(s, str), s
        assert s.count("{}") == 1, f"template must hold exactly one {{}}: {s!r}"
        rest = s.replace("{}", "")
        assert "{" not in rest and "}" not in rest, f"template has other braces: {s!r}"
        for label in labels:
            text = t(label) if callable(t) else t.format(label)
            assert text == s.format(label) == s.replace("{}", label), (s, label)
        out.append(s)
    assert len(set(out)) == len(out), "duplicate templates"
    return out


def check_labels(labels: Sequence[str]) -> None:
    seen: Dict[str, int] = {}
    for i, label in enumerate(labels):
        assert isinstance(label, str) and label and label == label.strip(), (i, label)
        assert label not in seen, f"duplicate label {label!r} at {seen[label]} and {i}"
        seen[label] = i


def imagenet_labels() -> List[str]:
    labels = list(zsm.IMAGENET_CLASSNAMES)
    assert len(labels) == 1000, len(labels)
    for i, old, new in IMAGENET_RENAMES:
        assert labels[i] == old, f"open_clip's IMAGENET_CLASSNAMES[{i}] is {labels[i]!r}, expected {old!r}"
        assert labels.count(old) == 2, f"{old!r} is no longer duplicated in open_clip; revisit IMAGENET_RENAMES"
        assert new not in labels, new
        labels[i] = new
    check_labels(labels)
    return labels


def label_sets() -> List[Dict]:
    v = open_clip.__version__
    inet = imagenet_labels()
    renames = ", ".join(f"class {i} {old!r} -> {new!r}" for i, old, new in IMAGENET_RENAMES)
    inet_source = (
        f"labels: open_clip {v} open_clip/zero_shot_metadata.py IMAGENET_CLASSNAMES (= OpenAI CLIP "
        "notebooks/Prompt_Engineering_for_ImageNet.ipynb), in ImageNet class-index order, except two names "
        "that are duplicated there and renamed here to be unique (first WordNet lemma, as torchvision's "
        f"ImageNet categories): {renames}")
    sets = [
        {
            "name": "imagenet-1k",
            "description": "ImageNet-1k (ILSVRC 2012) 1000 classes with CLIP's class names and OpenAI's 80 "
                           "prompt-ensemble templates (CLIP paper, Prompt_Engineering_for_ImageNet.ipynb)",
            "source": inet_source + f"; templates: open_clip {v} OPENAI_IMAGENET_TEMPLATES (80), as strings",
            "labels": inet,
            "templates": template_strings(zsm.OPENAI_IMAGENET_TEMPLATES, inet),
        },
        {
            "name": "imagenet-1k-simple",
            "description": "ImageNet-1k 1000 classes with CLIP's class names and the short 7-template "
                           "ensemble (a subset of the 80 OpenAI templates)",
            "source": inet_source + f"; templates: open_clip {v} SIMPLE_IMAGENET_TEMPLATES (7), as strings",
            "labels": inet,
            "templates": template_strings(zsm.SIMPLE_IMAGENET_TEMPLATES, inet),
        },
        {
            "name": "cifar-10",
            "description": "CIFAR-10 10 classes with the 18 prompt templates OpenAI CLIP used for CIFAR-10",
            "source": "OpenAI CLIP repository data/prompts.md, section CIFAR10 (classes and templates), typed "
                      "into scripts/gen_label_sets.py (open_clip ships no CIFAR prompts)",
            "labels": list(CIFAR10_CLASSES),
            "templates": template_strings(CIFAR10_TEMPLATES, CIFAR10_CLASSES),
        },
    ]
    for s in sets:
        check_labels(s["labels"])
    assert len(sets[0]["templates"]) == 80 and len(sets[1]["templates"]) == 7 and len(sets[2]["templates"]) == 18
    return sets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "assets", "label_sets"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for s in label_sets():
        path = os.path.join(a.out, s["name"] + ".json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(s, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        print(f"wrote {path}: {len(s['labels'])} labels x {len(s['templates'])} templates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
