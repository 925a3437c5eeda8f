#!/usr/bin/env python3
"""Build a tiny random-weight Qwen3-Embedding fixture and its sentence-transformers reference outputs.

Usage (from the repository root, after `scripts/test` or `build_tokenizer.py` has made the Qwen3 tokenizer):

    python scripts/make_embedding_fixtures.py [--out fixtures/models/tiny-embed]
        [--tokenizer fixtures-gen/qwen3-tokenizer]

Requirements: scripts/requirements-fixtures.txt (torch, transformers, sentence-transformers, pinned).
Deterministic: every random number comes from a fixed seed.

Output: a sentence-transformers folder laid out like Qwen/Qwen3-Embedding-0.6B — `config.json`
(`Qwen3ForCausalLM`, `model_type: qwen3`), `model.safetensors` (bfloat16, tensor names without the
`model.` prefix, as sentence-transformers saves a `Qwen3Model`), `modules.json` (Transformer -> Pooling
-> Normalize), `1_Pooling/config.json` (last-token pooling), `config_sentence_transformers.json` (the real
query prompt), `sentence_bert_config.json` — the real 151,669-token vocabulary with a tiny decoder.
`tokenizer.json` is not committed (11 MB): tests copy the generated one in, which appends `<|endoftext|>`
in its post-processor like the current Qwen3-Embedding files.

`expected.json` holds, per text, the prompt used, the token ids sentence-transformers fed the model and
the float32 embedding (computed in float32 from the bfloat16-rounded weights), plus Matryoshka
truncations made with sentence-transformers' own `truncate_dim`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
INSTRUCT = "Given a question, retrieve the Rust documentation that answers it"

SEED = 20261128


def config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=151669,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        bos_token_id=151643,
        eos_token_id=151643,
        architectures=["Qwen3ForCausalLM"],
    )


def init_weights(model: torch.nn.Module) -> None:
    """Scales that make every component matter: N(0,1) embeddings, N(0, 1/fan_in) matrices, norms 1 + N(0, 0.2)."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("embed_tokens.weight"):
                v = torch.randn(p.shape, generator=gen)
            elif "norm" in name:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            else:
                v = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
            # Round to bfloat16 here so the stored weights are exactly what the reference used.
            p.copy_(v.to(torch.bfloat16).float())


def texts() -> list[dict]:
    long_doc = " ".join(
        f"Paragraph {i}: the delta rule corrects an associative memory by the error of its own recall, "
        f"and gated attention scales each head's output by a learned sigmoid gate."
        for i in range(30)
    )
    return [
        {"name": "query", "kind": "query", "text": "What is the capital of France?"},
        {"name": "query_instruct", "kind": "instruct", "instruct": INSTRUCT, "text": "How do I borrow a slice mutably?"},
        {"name": "doc_en", "kind": "document", "text": "Paris is the capital and largest city of France."},
        {"name": "doc_code", "kind": "document", "text": "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n}"},
        {"name": "doc_cjk", "kind": "document", "text": "北京是中华人民共和国的首都。東京は日本の首都です。서울은 한국의 수도입니다."},
        {"name": "doc_emoji", "kind": "document", "text": "Caf\u00e9 \U0001F600 na\u00efve \u2014 r\u00e9sum\u00e9"},
        {"name": "doc_long", "kind": "document", "text": long_doc},
        {"name": "doc_empty", "kind": "document", "text": ""},
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("fixtures/models/tiny-embed"))
    ap.add_argument("--tokenizer", type=Path, default=Path("fixtures-gen/qwen3-tokenizer"))
    args = ap.parse_args()
    tok_json = args.tokenizer / "tokenizer.json"
    if not tok_json.exists():
        print(f"{tok_json} is missing: run scripts/build_tokenizer.py --family qwen3 --append-eos first", file=sys.stderr)
        return 2

    torch.manual_seed(SEED)
    cfg = config()
    model = Qwen3Model(cfg).float().eval()
    init_weights(model)

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Build the sentence-transformers folder the way the real one is laid out.
        tmp = Path(tmp)
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        model.float()
        shutil.copy(tok_json, tmp / "tokenizer.json")
        tok_config = json.loads((args.tokenizer / "tokenizer_config.json").read_text())
        tok_config.update({"model_max_length": 2048, "padding_side": "left", "pad_token": "<|endoftext|>"})
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
        cfg_json = json.loads((tmp / "config.json").read_text())
        cfg_json["architectures"] = ["Qwen3ForCausalLM"]
        (tmp / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (tmp / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
        (tmp / "1_Pooling").mkdir()
        pooling = {
            "word_embedding_dimension": cfg.hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        }
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=4) + "\n")
        (tmp / "2_Normalize").mkdir()
        st_config = {
            "prompts": {"query": QUERY_PROMPT, "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        }
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
        (tmp / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": 2048, "do_lower_case": False}, indent=2) + "\n"
        )

        st = SentenceTransformer(str(tmp), device="cpu", model_kwargs={"dtype": torch.float32})
        st.eval()
        cases = texts()
        results = []
        for case in cases:
            prompt = {"query": QUERY_PROMPT, "instruct": f"Instruct: {case.get('instruct')}\nQuery:"}.get(case["kind"], "")
            full = prompt + case["text"]
            ids = st.tokenizer(full, add_special_tokens=True)["input_ids"]
            emb = st.encode([full], convert_to_tensor=True, normalize_embeddings=False)[0]
            results.append({**case, "prompt": prompt, "input_ids": ids, "embedding": emb.tolist()})
        # Batch of everything (padding inside sentence-transformers) must equal one by one.
        batch = st.encode([r["prompt"] + r["text"] for r in results], convert_to_tensor=True, batch_size=8)
        worst = max(1 - float(torch.dot(batch[i], torch.tensor(r["embedding"]))) for i, r in enumerate(results))
        # Matryoshka: sentence-transformers' truncate_dim, then its Normalize.
        st_small = SentenceTransformer(
            str(tmp), device="cpu", model_kwargs={"dtype": torch.float32}, truncate_dim=8
        )
        small = st_small.encode([r["prompt"] + r["text"] for r in results[:3]], convert_to_tensor=True, normalize_embeddings=True)

        for name in ("config.json", "model.safetensors", "modules.json", "config_sentence_transformers.json",
                     "sentence_bert_config.json", "tokenizer_config.json"):
            shutil.copy(tmp / name, out / name)
        shutil.copytree(tmp / "1_Pooling", out / "1_Pooling")

    # The same weights as a causal LM (tied head): qwenrt's Qwen3 decoder must generate like it.
    lm = Qwen3ForCausalLM(cfg).float().eval()
    lm.model.load_state_dict(model.state_dict())
    lm.tie_weights()
    prompt_ids = results[2]["input_ids"]
    with torch.no_grad():
        logits = lm(torch.tensor([prompt_ids])).logits[0, -1]
        greedy = lm.generate(
            torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt_ids):].tolist()
    top = torch.topk(logits, 10)
    causal_lm = {
        "prompt_ids": prompt_ids,
        "greedy": greedy,
        "top10_ids": top.indices.tolist(),
        "top10_logits": top.values.tolist(),
        "logit_std": float(logits.std()),
    }

    expected = {
        "generator": {
            "script": "scripts/make_embedding_fixtures.py",
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "semantics": "embedding = SentenceTransformer.encode(prompt + text) in float32: "
        "last-token pooling of the final RMSNorm output, L2-normalised by the Normalize module. input_ids are "
        "what the tokenizer fed the model (the post-processor appends <|endoftext|>). matryoshka_8: "
        "truncate_dim=8 then normalised, for the first three texts. causal_lm: the same weights as "
        "Qwen3ForCausalLM (tied head): last-position top-10 logits and 8 greedy tokens after prompt_ids.",
        "batch_vs_single_worst_one_minus_cosine": worst,
        "texts": results,
        "matryoshka_8": small.tolist(),
        "causal_lm": causal_lm,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out} ({len(results)} texts; batch vs single worst 1-cos {worst:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
