"""Build a Hugging Face `tokenizer.json` that reproduces open_clip's SimpleTokenizer, offline.

Reference: `open_clip/tokenizer.py` (`bytes_to_unicode`, `SimpleTokenizer.__init__`, `SimpleTokenizer.bpe`,
`SimpleTokenizer.__call__`), itself copied from OpenAI's CLIP. The vocabulary and merges are read from the
`bpe_simple_vocab_16e6.txt.gz` file that ships inside the open_clip wheel, exactly as SimpleTokenizer reads
it, so no network access (and no `transformers`) is needed.

What the JSON reproduces exactly:
  * vocab (49408 entries): the 256 byte-level characters, the same 256 with `</w>`, then the
    48894 merge results, then `<start_of_text>` = 49406 and `<end_of_text>` = 49407 (open_clip's own
    names; OpenAI/HF call them `<|startoftext|>` / `<|endoftext|>`),
  * merges in rank order, BPE with `end_of_word_suffix = "</w>"`,
  * the pre-tokenizer regex `'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+` (preceded, as in
    open_clip, by the two special tokens), byte-level mapping without its own regex,
  * `[SOT] tokens [EOT]`, truncation to `context_length` keeping SOT and EOT (75 content tokens for 77), and
    right-padding with id 0, which is what `open_clip.tokenize` returns.

What a tokenizer.json cannot express, and a consumer must do itself *before* calling it, is open_clip's text
cleaning (`_clean_lower`): `ftfy.fix_text`, `html.unescape` twice, strip, collapse whitespace, lower-case.
The JSON normalizer does NFC (ftfy's default normalization), whitespace collapsing and lower-casing, so for
text that ftfy and html.unescape leave unchanged the JSON alone gives open_clip's ids.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Dict, List, Tuple

#: open_clip's names for the two special tokens (SimpleTokenizer.__init__: `special_tokens`).
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
#: open_clip.tokenize pads with zeros; id 0 is the byte-level token "!" (not a dedicated pad token).
PAD_ID = 0

#: open_clip's SimpleTokenizer pattern, without the special-token alternatives (added below).
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def default_bpe_path() -> str:
    """Path of open_clip's bundled `bpe_simple_vocab_16e6.txt.gz` (imports open_clip's tokenizer module only)."""
    from open_clip.tokenizer import default_bpe

    return default_bpe()


def bytes_to_unicode() -> Dict[int, str]:
    """Byte -> printable unicode char table; identical to `open_clip.tokenizer.bytes_to_unicode`."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def load_vocab_and_merges(bpe_path: str | None = None) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Vocab (token -> id) and ranked merges, built line for line like `SimpleTokenizer.__init__`."""
    bpe_path = bpe_path or default_bpe_path()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    # The first line is a version header; SimpleTokenizer keeps 49152 - 256 - 2 merges.
    lines = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    for m in merges:
        if len(m) != 2:
            raise ValueError(f"malformed merge line in {bpe_path}: {m!r}")
    vocab_list = list(bytes_to_unicode().values())
    vocab_list = vocab_list + [v + "</w>" for v in vocab_list]
    vocab_list.extend("".join(m) for m in merges)
    vocab_list.extend([SOT_TOKEN, EOT_TOKEN])
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != VOCAB_SIZE or len(vocab_list) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} unique vocab entries, got {len(vocab)} of {len(vocab_list)}")
    if vocab[SOT_TOKEN] != SOT_ID or vocab[EOT_TOKEN] != EOT_ID:
        raise ValueError("special token ids differ from open_clip's 49406/49407")
    return vocab, merges  # type: ignore[return-value]


def _added_token(token_id: int, content: str) -> dict:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
        "special": True,
    }


def build_tokenizer_json(context_length: int = 77, bpe_path: str | None = None) -> dict:
    """The tokenizer.json document (a dict), in the layout HF's CLIP tokenizers use."""
    vocab, merges = load_vocab_and_merges(bpe_path)
    split_pattern = f"{SOT_TOKEN}|{EOT_TOKEN}|{_WORD_PATTERN}"
    return {
        "version": "1.0",
        "truncation": {
            "direction": "Right",
            "max_length": context_length,
            "strategy": "LongestFirst",
            "stride": 0,
        },
        "padding": {
            "strategy": {"Fixed": context_length},
            "direction": "Right",
            "pad_to_multiple_of": None,
            "pad_id": PAD_ID,
            "pad_type_id": 0,
            "pad_token": "!",
        },
        "added_tokens": [_added_token(SOT_ID, SOT_TOKEN), _added_token(EOT_ID, EOT_TOKEN)],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"},
            ],
        },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": split_pattern},
                    "behavior": "Removed",
                    "invert": True,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": [EOT_TOKEN, EOT_ID],
            "cls": [SOT_TOKEN, SOT_ID],
            "trim_offsets": False,
            "add_prefix_space": False,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            # "a b" strings: the form every tokenizers version reads (no vocab entry contains a space).
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def build_tokenizer_config(context_length: int = 77) -> dict:
    """tokenizer_config.json: transformers-style keys plus explicit ids and the cleaning open_clip applies."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "bos_token": SOT_TOKEN,
        "eos_token": EOT_TOKEN,
        # open_clip.tokenize pads with id 0 (the byte token "!"); the text tower pools at argmax(ids), the first
        # EOT, and its attention is causal, so padding never reaches the embedding.
        "pad_token": "!",
        "unk_token": None,
        "bos_token_id": SOT_ID,
        "eos_token_id": EOT_ID,
        "pad_token_id": PAD_ID,
        "vocab_size": VOCAB_SIZE,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(SOT_ID): _added_token(SOT_ID, SOT_TOKEN),
            str(EOT_ID): _added_token(EOT_ID, EOT_TOKEN),
        },
        "text_cleaning": "open_clip 'lower': ftfy.fix_text, html.unescape twice, strip, "
        "collapse whitespace, lower-case (open_clip/tokenizer.py _clean_lower)",
        "truncation": "keep the first context_length-1 ids, then set the last to eos (open_clip.tokenize)",
        "source": "built offline from open_clip's bpe_simple_vocab_16e6.txt.gz by scripts/clip_tokenizer_json.py",
    }


def write_tokenizer_files(out_dir: str, context_length: int = 77, bpe_path: str | None = None) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` into `out_dir` (created if needed)."""
    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer_json(context_length, bpe_path)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(build_tokenizer_config(context_length), f, ensure_ascii=False, indent=2)
        f.write("\n")


def _self_check(out_dir: str) -> None:
    """Compare the written tokenizer.json (via the `tokenizers` package) with open_clip.tokenize."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower
    from tokenizers import Tokenizer

    st = SimpleTokenizer()
    vocab, merges = load_vocab_and_merges()
    assert st.encoder == vocab, "vocab differs from SimpleTokenizer.encoder"
    assert st.bpe_ranks == {m: i for i, m in enumerate(merges)}, "merges differ from SimpleTokenizer.bpe_ranks"
    assert st.sot_token_id == SOT_ID and st.eot_token_id == EOT_ID
    tk = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    samples = [
        "a photo of a cat", "hello world", "the quick brown fox jumps over the lazy dog",
        "it's a dog's life", "2024 was 12 months", "Hello, World!", "multiple   spaces\tand\nnewlines",
        "a " * 100,
    ]
    for s in samples:
        ref = open_clip.tokenize([s])[0].tolist()
        got = tk.encode(_clean_lower(s)).ids
        assert got == ref, f"mismatch for {s!r}:\n{got}\n{ref}"
    print(f"tokenizer.json matches open_clip.tokenize on {len(samples)} samples")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--context-length", type=int, default=77)
    p.add_argument("--check", action="store_true", help="verify against open_clip with the tokenizers package")
    a = p.parse_args()
    write_tokenizer_files(a.out_dir, a.context_length)
    if a.check:
        _self_check(a.out_dir)
