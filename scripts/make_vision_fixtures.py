#!/usr/bin/env python3
"""Build the vision fixtures: synthetic images and a clip, transformers' preprocessing of them, the outputs of a
tiny random vision tower, and a full multimodal prompt through `fixtures/models/tiny-vl`.

Usage (from the repository root):

    python scripts/make_vision_fixtures.py [--out fixtures/vision] [--tokenizer-dir fixtures-gen/qwen3_5-tokenizer]

Requirements: scripts/requirements-fixtures.txt plus the image stack transformers uses for Qwen3.5:
``torchvision`` (its antialiased uint8 bicubic resize *is* the reference preprocessing: with torchvision installed
``AutoImageProcessor`` picks the torchvision backend ``Qwen2VLImageProcessor``; these fixtures were made with
torchvision 0.29.2 installed with ``--no-deps`` next to torch 2.15.0) and ``Pillow`` (12.3.0; writes the image
files, decodes the GIF, and runs the PIL backend for the comparison recorded in ``expected.json``). The tokenizer
is the generated ``tokenizer.json`` (``scripts/build_tokenizer.py --family qwen3_5``). Deterministic: running it
again gives identical files.

Output (``--out``):

* ``a_small.png`` (40x30 RGB: below ``min_pixels``, upscaled), ``b_photo.jpg`` (400x260 JPEG: downscaled, and
  round(12.5) = 12), ``c_tall.png`` (100x700 RGBA, tall), ``d_small.webp`` (lossless WebP of ``a_small``),
  ``v_clip.gif`` (6 frames 90x60 at 4 fps: the video).
* ``preprocessor_config.json``, ``video_preprocessor_config.json``: the real Qwen3.5-0.8B files (copied from
  ``--reference-dir`` when given, else the copies already in ``--out`` are reused).
* ``tower/``: a tiny random ``Qwen3_5VisionModel`` (2 blocks) as a checkpoint would store it: ``config.json``
  (real-checkpoint layout, ``vision_config`` only) and ``model.safetensors`` (bf16, ``model.visual.*``).
* ``expected.safetensors`` (preprocessing and tower references), ``prompt.safetensors`` (the tiny-vl prompt:
  ids, positions, logits, greedy tokens) and ``expected.json`` (metadata; ``semantics`` says what each tensor is).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (shared helpers: greedy generation, JSON writer, seeds)

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoImageProcessor, AutoVideoProcessor, PreTrainedTokenizerFast  # noqa: E402
from transformers.image_utils import load_image_as_tensor  # noqa: E402
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig  # noqa: E402
from transformers.models.qwen3_5.modeling_qwen3_5 import (  # noqa: E402
    Qwen3_5ForConditionalGeneration,
    Qwen3_5VisionModel,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor  # noqa: E402
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

SEED = mf.SEED + 100
PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")

# The tiny tower: the real geometry's proportions (patch 16, temporal 2, merge 2, 48x48 position table), small widths.
# head_dim 32 keeps 8 rotary frequencies per axis; depth 2 checks that blocks chain.
TOWER_VISION = {
    "deepstack_visual_indexes": [],
    "depth": 2,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 64,
    "in_channels": 3,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "model_type": "qwen3_5",
    "num_heads": 2,
    "num_position_embeddings": 2304,
    "out_hidden_size": 48,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}

# The video: frames of the GIF are 250 ms apart (4 fps); the processor samples them at its default 2 fps.
CLIP_FRAMES = 6
CLIP_FPS = 4.0
CLIP_SIZE = (60, 90)  # (height, width)

# Every 16th patch row of each image is stored verbatim (the rest is checked through the resized uint8 image).
ROW_STRIDE = 16
N_GREEDY = 8

MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]},
    {"role": "assistant", "content": "A small test pattern."},
    {"role": "user", "content": [
        {"type": "image"},
        {"type": "image"},
        {"type": "video"},
        {"type": "text", "text": "Compare the two pictures with the clip."},
    ]},
]
IMAGE_FILES = ("a_small.png", "b_photo.jpg", "c_tall.png")


# ----------------------------------------------------------------------------------------------------
# Synthetic media
# ----------------------------------------------------------------------------------------------------
def synth_rgb(height: int, width: int, seed: int, phase: float = 0.0) -> np.ndarray:
    """A smooth but detailed picture [H, W, 3] uint8: gradients, waves, a disc, a bar and mild noise, so that
    resizing has edges and texture to get right."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    r = 255 * u
    g = 127.5 + 127.5 * np.sin(2 * np.pi * (3 * v + u + phase))
    b = 255 * (1 - v) * (0.5 + 0.5 * np.cos(2 * np.pi * 5 * u * v + phase))
    img = np.stack([r, g, b], -1)
    cy, cx, rad = height * (0.4 + 0.2 * math.sin(phase)), width * (0.6 - 0.2 * math.cos(phase)), min(height, width) / 4
    img[(y - cy) ** 2 + (x - cx) ** 2 < rad**2] = (250, 30, 60)
    img[int(height * 0.7): int(height * 0.75) + 1, :] = (20, 20, 20)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_media(out: Path) -> dict:
    from PIL import Image

    a = synth_rgb(30, 40, SEED + 1)
    Image.fromarray(a).save(out / "a_small.png", optimize=False)
    Image.fromarray(a).save(out / "d_small.webp", lossless=True, quality=100, method=4)
    b = synth_rgb(260, 400, SEED + 2)
    Image.fromarray(b).save(out / "b_photo.jpg", quality=90)
    c = synth_rgb(700, 100, SEED + 3)
    alpha = (np.linspace(40, 255, 700)[:, None] * np.ones((1, 100))).astype(np.uint8)
    Image.fromarray(np.concatenate([c, alpha[..., None]], -1), mode="RGBA").save(out / "c_tall.png", optimize=False)

    # GIF frames use a fixed 6x6x6 palette, so the decoded colours are exact on every decoder.
    levels = np.arange(6) * 51
    palette = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    frames = []
    for i in range(CLIP_FRAMES):
        rgb = synth_rgb(*CLIP_SIZE, SEED + 4, phase=0.6 * i).astype(np.int64)
        q = np.clip(np.round(rgb / 51), 0, 5)
        index = (q[..., 0] * 36 + q[..., 1] * 6 + q[..., 2]).astype(np.uint8)
        frame = Image.fromarray(index, mode="P")
        frame.putpalette(palette.astype(np.uint8).flatten().tolist())
        frames.append(frame)
    frames[0].save(out / "v_clip.gif", save_all=True, append_images=frames[1:], duration=int(1000 / CLIP_FPS),
                   loop=0, optimize=False, disposal=1)
    return {"a_small.png": a, "c_tall.png": c}


def decode_gif_frames(path: Path) -> torch.Tensor:
    """All frames of the GIF, composited, as [T, 3, H, W] uint8 (Pillow)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------
# Tiny tower
# ----------------------------------------------------------------------------------------------------
def tower_config_dict() -> dict:
    real = mf.REAL_0_8B_CONFIG
    return {
        "architectures": real["architectures"],
        "model_type": real["model_type"],
        "image_token_id": real["image_token_id"],
        "video_token_id": real["video_token_id"],
        "vision_start_token_id": real["vision_start_token_id"],
        "vision_end_token_id": real["vision_end_token_id"],
        "vision_config": dict(TOWER_VISION),
    }


def init_tower(model: torch.nn.Module, seed: int) -> dict:
    """Every parameter from a fixed scheme in sorted-name order: Linear/Conv N(0, 1/sqrt(fan_in)), biases N(0, 0.1),
    LayerNorm weight 1+N(0, 0.2) and bias N(0, 0.2), position table N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    rules = {}
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            shape = tuple(p.shape)
            is_norm = ".norm" in f".{name}" and len(shape) == 1
            if name.endswith("pos_embed.weight"):
                v, rule = mf._randn(gen, shape, 1.0), "N(0,1)"
            elif is_norm and name.endswith(".weight"):
                v, rule = mf._randn(gen, shape, 0.2, 1.0), "1+N(0,0.2) (LayerNorm)"
            elif is_norm and name.endswith(".bias"):
                v, rule = mf._randn(gen, shape, 0.2), "N(0,0.2) (LayerNorm bias)"
            elif name.endswith(".bias"):
                v, rule = mf._randn(gen, shape, 0.1), "N(0,0.1)"
            elif name.endswith(".weight") and len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                v, rule = mf._randn(gen, shape, 1.0 / math.sqrt(fan_in)), f"N(0,1/sqrt({fan_in}))"
            else:
                raise RuntimeError(f"no init rule for {name} {shape}")
            p.copy_(v.to(p.dtype))
            rules["model.visual." + name.replace(".0.", ".N.").replace(".1.", ".N.")] = rule
    return rules


def build_tower(out: Path):
    d = out / "tower"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg_dict = tower_config_dict()
    vcfg = Qwen3_5VisionConfig(**{k: v for k, v in TOWER_VISION.items() if k != "model_type"})
    vcfg._attn_implementation = mf.ATTN_IMPL
    torch.manual_seed(SEED + 10)
    tower = Qwen3_5VisionModel(vcfg).float().eval()
    rules = init_tower(tower, SEED + 11)
    # bf16 storage like the real checkpoint; the float32 reference runs on exactly these values
    state = {f"model.visual.{k}": v.detach().to(torch.bfloat16).contiguous() for k, v in tower.state_dict().items()}
    save_file(dict(sorted(state.items())), str(d / "model.safetensors"), metadata={"format": "pt"})
    mf.write_json(d / "config.json", cfg_dict)
    with torch.no_grad():
        for k, v in tower.state_dict().items():
            v.copy_(state[f"model.visual.{k}"].float())
    return tower, rules


# ----------------------------------------------------------------------------------------------------
# Reference preprocessing
# ----------------------------------------------------------------------------------------------------
def unpatchify(rows: torch.Tensor, grid, patch: int = 16, merge: int = 2, temporal: int = 2) -> torch.Tensor:
    """Inverse of the processors' patch layout: rows [t*h*w, C*T*P*P] -> frames [t*T, C, h*P, w*P]."""
    t, h, w = grid
    x = rows.view(t, h // merge, w // merge, merge, merge, 3, temporal, patch, patch)
    # -> (t, T, C, h/m, m, P, w/m, m, P)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
    return x.reshape(t * temporal, 3, h * patch, w * patch)


def to_uint8(normalized: torch.Tensor) -> torch.Tensor:
    """Recovers the resized uint8 values from (x - 127.5) / 127.5 (exact: the steps are 1/127.5 apart)."""
    u = torch.round(normalized.double() * 127.5 + 127.5)
    assert torch.equal(((u.float() - 127.5) / 127.5), normalized), "pixel values are not (u8 - 127.5) / 127.5"
    return u.to(torch.uint8)


def pil_backend_diff(out: Path, pixel_values: torch.Tensor) -> float:
    """Max |pixel value| difference between transformers' PIL backend and the torchvision one on the same files."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = json.loads((out / "preprocessor_config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("processor_class", "image_processor_type")}
    pil = Qwen2VLImageProcessorPil(**cfg)
    images = [Image.open(out / f).convert("RGB") for f in IMAGE_FILES]
    pv = torch.as_tensor(pil(images, return_tensors="np")["pixel_values"])
    return float((pv.float() - pixel_values).abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="fixtures/vision")
    ap.add_argument("--tokenizer-dir", default="fixtures-gen/qwen3_5-tokenizer")
    ap.add_argument("--tiny-vl", default="fixtures/models/tiny-vl")
    ap.add_argument("--reference-dir", default=os.environ.get("QWENRT_REFERENCE_DIR"),
                    help="folder holding qwen3_5-0.8b/{preprocessor,video_preprocessor}_config.json "
                         "(default: $QWENRT_REFERENCE_DIR, else reuse the copies in --out)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    import PIL
    import torchvision

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.reference_dir:
        for name in PREPROCESSOR_FILES:
            data = (Path(args.reference_dir) / "qwen3_5-0.8b" / name).read_bytes()
            (out / name).unlink(missing_ok=True)  # the reference copies may be read-only
            (out / name).write_bytes(data)
    for name in PREPROCESSOR_FILES:
        if not (out / name).is_file():
            raise SystemExit(f"{out / name} not found: pass --reference-dir (the folder holding qwen3_5-0.8b/)")

    write_media(out)

    # --- transformers' processor, exactly as a user would run it --------------------------------------------------
    image_processor = AutoImageProcessor.from_pretrained(out)
    video_processor = AutoVideoProcessor.from_pretrained(out)
    assert image_processor.backend == "torchvision", image_processor.backend
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(args.tokenizer_dir) / "tokenizer.json"))
    template = (Path(args.tiny_vl) / "chat_template.jinja").read_text()
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                 chat_template=template)
    rendered, _ = render_jinja_template(conversations=[MESSAGES], chat_template=template, add_generation_prompt=True)
    text = rendered[0]
    # transformers' own loader for image paths with the torchvision backend (torchvision.io.decode_image, RGB)
    images = [load_image_as_tensor(str(out / f)) for f in IMAGE_FILES]
    clip = decode_gif_frames(out / "v_clip.gif")
    metadata = {"total_num_frames": CLIP_FRAMES, "fps": CLIP_FPS, "frames_indices": list(range(CLIP_FRAMES))}
    inputs = processor(text=[text], images=images, videos=[clip],
                       videos_kwargs={"video_metadata": [metadata], "cap_pixels_per_frame": False},
                       return_tensors="pt")
    pixel_values, image_grids = inputs["pixel_values"], inputs["image_grid_thw"]
    pixel_values_videos, video_grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    expanded = inputs["input_ids"]
    mm_types = inputs["mm_token_type_ids"]
    # the sampled frames and their timestamps, as the processor chose them
    sampled = video_processor.sample_frames(VideoMetadata(**metadata))
    timestamps = processor._calculate_timestamps(list(sampled), CLIP_FPS, video_processor.temporal_patch_size)

    tensors = {}
    meta_images = []
    start = 0
    for i, (name, grid) in enumerate(zip(IMAGE_FILES, image_grids.tolist())):
        n = int(np.prod(grid))
        rows = pixel_values[start : start + n]
        start += n
        frames = unpatchify(rows, grid)
        assert torch.equal(frames[0], frames[1]), "an image's frame must be repeated over the temporal patch"
        resized = to_uint8(frames[0])  # [3, H, W]
        tensors[f"image{i}.resized"] = resized.permute(1, 2, 0).contiguous()  # HWC like an RGB buffer
        tensors[f"image{i}.grid"] = torch.tensor(grid, dtype=torch.int32)
        index = torch.arange(0, n, ROW_STRIDE)
        tensors[f"image{i}.rows_index"] = index.to(torch.int32)
        tensors[f"image{i}.rows"] = rows[index].contiguous()
        tensors[f"image{i}.decoded_sum"] = torch.tensor([int(images[i].long().sum())], dtype=torch.int64)
        meta_images.append({"file": name, "decoded_hw": list(images[i].shape[1:]), "grid_thw": grid,
                            "resized_hw": list(resized.shape[1:]), "tokens": n // 4})
    frames = unpatchify(pixel_values_videos, video_grid[0].tolist())
    tensors["video.resized"] = to_uint8(frames).permute(0, 2, 3, 1).contiguous()  # [T, H, W, 3]
    tensors["video.grid"] = video_grid[0].to(torch.int32)
    tensors["video.frame_indices"] = torch.as_tensor(sampled, dtype=torch.int32)
    tensors["video.timestamps"] = torch.tensor(timestamps, dtype=torch.float64)
    tensors["video.rows"] = pixel_values_videos[::ROW_STRIDE].contiguous()

    # --- tiny tower -----------------------------------------------------------------------------------------------
    tower, rules = build_tower(out)
    with torch.no_grad():
        img_out = tower(pixel_values, grid_thw=image_grids)
        vid_out = tower(pixel_values_videos, grid_thw=video_grid)
    tensors["tower.image_hidden"] = img_out.last_hidden_state.float().contiguous()
    tensors["tower.image_embeds"] = img_out.pooler_output.float().contiguous()
    tensors["tower.video_embeds"] = vid_out.pooler_output.float().contiguous()

    # --- the whole prompt through tiny-vl ---------------------------------------------------------------------------
    model = Qwen3_5ForConditionalGeneration.from_pretrained(
        args.tiny_vl, dtype=torch.float32, attn_implementation=mf.ATTN_IMPL).eval()
    cfg = model.config
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    mm_extra = {"pixel_values": pixel_values, "image_grid_thw": image_grids,
                "pixel_values_videos": pixel_values_videos, "video_grid_thw": video_grid,
                "mm_token_type_ids": mm_types}
    with torch.no_grad():
        vl_img = model.model.get_image_features(pixel_values, image_grids, return_dict=True)
        vl_vid = model.model.get_video_features(pixel_values_videos, video_grid, return_dict=True)
        pos, delta = model.model.get_rope_index(expanded, mm_token_type_ids=mm_types, image_grid_thw=image_grids,
                                                video_grid_thw=video_grid)
        model.model.rope_deltas = None
        last = model(expanded, use_cache=False, logits_to_keep=1, **mm_extra).logits[0, -1].float()
        model.model.rope_deltas = None
    greedy, step_logits = mf.gen_greedy(model, expanded, N_GREEDY, **mm_extra)
    model.model.rope_deltas = None
    assert float((step_logits[0] - last).abs().max()) < 1e-4
    tensors["tinyvl.image_embeds"] = torch.cat(vl_img.pooler_output).float().contiguous()
    tensors["tinyvl.video_embeds"] = torch.cat(vl_vid.pooler_output).float().contiguous()
    tensors["prompt.ids"] = ids.to(torch.int32)
    tensors["prompt.expanded_ids"] = expanded[0].to(torch.int32)
    tensors["prompt.mm_token_type_ids"] = mm_types[0].to(torch.int32)
    tensors["prompt.position_ids"] = pos[:, 0].to(torch.int32).contiguous()
    tensors["prompt.rope_delta"] = delta.flatten()[:1].to(torch.int32)
    tensors["prompt.last_logits"] = last.contiguous()
    tensors["prompt.greedy"] = greedy.to(torch.int32).contiguous()

    timestamp_texts = [f"<{t:.1f} seconds>" for t in timestamps]
    meta = {
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": transformers.__version__,
            "Pillow": PIL.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "seed": SEED,
        "image_processor": f"{type(image_processor).__name__} (backend {image_processor.backend}): "
                           "antialiased bicubic on uint8 (torch _upsample_bicubic2d_aa), then (x - 127.5) / 127.5",
        "video_processor": f"{type(video_processor).__name__}, fps {video_processor.fps}, min_frames "
                           f"{video_processor.min_frames}, cap_pixels_per_frame False",
        "images": meta_images,
        "video": {"file": "v_clip.gif", "frames": CLIP_FRAMES, "source_fps": CLIP_FPS, "decoded_hw": list(CLIP_SIZE),
                  "frame_indices": [int(i) for i in sampled], "timestamps": timestamps,
                  "timestamp_texts": timestamp_texts, "grid_thw": video_grid[0].tolist(),
                  "tokens": int(np.prod(video_grid[0].tolist())) // 4},
        "pil_backend_vs_torchvision_max_abs_pixel": pil_backend_diff(out, pixel_values),
        "tower": {"config": "tower/config.json", "weights": "bf16, upcast exactly to float32", "init": rules,
                  "attn_implementation": mf.ATTN_IMPL},
        "prompt": {
            "messages": MESSAGES,
            "text": text,
            "text_expanded": tok.decode(expanded[0]),
            "length": int(ids.shape[0]),
            "expanded_length": int(expanded.shape[1]),
            "rope_delta": int(delta.flatten()[0]),
            "timestamp_token_ids": {t: tok.encode(t) for t in timestamp_texts},
            "last_logits_std": float(last.std()),
            "greedy": greedy.tolist(),
        },
        "semantics": {
            "image{i}.resized": "uint8 [H, W, 3]; the image after decode + smart_resize + bicubic resize (RGB), "
                                "recovered exactly from pixel_values",
            "image{i}.grid": "int32 [3]; image_grid_thw (t, h, w) in patches",
            "image{i}.rows": f"float32 [n, 1536]; pixel_values rows 0, {ROW_STRIDE}, 2*{ROW_STRIDE}, ... of the image",
            "image{i}.rows_index": "int32 [n]; which rows image{i}.rows are",
            "image{i}.decoded_sum": "int64 [1]; sum of the decoded uint8 RGB values (transformers' loader)",
            "video.resized": "uint8 [T, H, W, 3]; the sampled frames after resize (T even)",
            "video.grid": "int32 [3]; video_grid_thw",
            "video.frame_indices": "int32 [T]; frames sampled from the clip",
            "video.timestamps": "float64 [T/2]; seconds of each temporal pair (mean of its two frames)",
            "video.rows": f"float32 [n, 1536]; pixel_values_videos rows 0, {ROW_STRIDE}, ...",
            "tower.image_hidden": "float32 [patches, 64]; tiny tower blocks output for the 3 images in one call",
            "tower.image_embeds": "float32 [tokens, 48]; tiny tower merger output for the 3 images",
            "tower.video_embeds": "float32 [tokens, 48]; tiny tower merger output for the video",
            "tinyvl.image_embeds": "float32 [tokens, 12]; tiny-vl's tower for the 3 images (what replaces "
                                   "<|image_pad|>)",
            "tinyvl.video_embeds": "float32 [tokens, 12]; tiny-vl's tower for the video (replaces <|video_pad|>)",
            "prompt.ids": "int32 [T0]; the rendered chat template, tokenized (one <|image_pad|>/<|video_pad|> each)",
            "prompt.expanded_ids": "int32 [T]; the processor's input_ids (placeholders expanded, timestamps added)",
            "prompt.mm_token_type_ids": "int32 [T]; 0 text, 1 image, 2 video",
            "prompt.position_ids": "int32 [3, T]; get_rope_index (t, h, w)",
            "prompt.rope_delta": "int32 [1]; decode position = cache_len + rope_delta on all 3 axes",
            "prompt.last_logits": "float32 [248320]; tiny-vl logits at the last position, one forward, no cache",
            "prompt.greedy": f"int32 [{N_GREEDY}]; tiny-vl generate, greedy, eos disabled",
        },
    }
    # two files, each under 2 MiB: the preprocessing and tower references, and the tiny-vl prompt references
    prompt_keys = [k for k in tensors if k.startswith(("prompt.", "tinyvl."))]
    save_file({k: tensors.pop(k) for k in prompt_keys}, str(out / "prompt.safetensors"), metadata={"format": "pt"})
    save_file(tensors, str(out / "expected.safetensors"), metadata={"format": "pt"})
    mf.write_json(out / "expected.json", meta)
    total = 0
    for f in sorted(out.rglob("*")):
        if f.is_file():
            total += f.stat().st_size
            print(f"  {f.relative_to(out)}: {f.stat().st_size} B")
    print(f"  total {total} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
