"""Random-weight diffusers pipelines, built offline, for tests and for timing without downloading weights.

Three kinds, each saved in the standard diffusers folder layout (model_index.json + one sub-folder per
component, weights as safetensors) so that the same ``from_pretrained(folder)`` path users take loads them:

* :func:`save_tiny_sd_pipeline`: a Stable-Diffusion-shaped latent pipeline small enough for CPU tests
  (64 px images, 4 x 8 x 8 latents).
* :func:`save_sd21_base_random_pipeline`: the full Stable Diffusion 2.1-base architecture (865M-parameter
  UNet, 83M VAE, 340M text encoder) with random weights: the same FLOPs and memory as the real model.
* :func:`save_tiny_pixel_pipeline`: a pixel-space text-conditioned UNet with no VAE (32 px images).

All use a small CLIP tokenizer written here (byte-level BPE over a short word list), so nothing is
downloaded. Construction is seeded: the same seed gives the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from fsd_gs.io.clip_tokenizer import BOS_TOKEN, EOS_TOKEN, write_clip_tokenizer
from fsd_gs.prior.loading import quiet_hf

TOKENIZER_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "photo",
    "dslr",
    "high",
    "quality",
    "detailed",
    "render",
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "orange",
    "purple",
    "wooden",
    "golden",
    "small",
    "big",
    "mushroom",
    "chair",
    "car",
    "cat",
    "dog",
    "hamburger",
    "apple",
    "cup",
    "teapot",
    "house",
    "tree",
    "robot",
    "cube",
    "sphere",
    "ball",
    "table",
    "lamp",
    "bird",
    "flower",
    "vase",
    "front",
    "side",
    "back",
    "overhead",
    "view",
)
"""Whole words the offline tokenizer knows as single tokens (others are spelled out byte by byte)."""

MAX_TOKENS = 77

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
"""DDIM with Stable Diffusion's training noise schedule (scaled_linear betas 0.00085..0.012, T = 1000)."""

SD21_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
}
"""UNet2DConditionModel of Stable Diffusion 2.1-base (latent 4 x 64 x 64, OpenCLIP-H text features)."""

SD21_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 768,
    "scaling_factor": 0.18215,
}
"""AutoencoderKL of Stable Diffusion 2.x (8x downsampling, 4 latent channels)."""

SD21_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "max_position_embeddings": MAX_TOKENS,
    "vocab_size": 49408,
    "projection_dim": 512,
    "layer_norm_eps": 1e-5,
}
"""CLIPTextModel of Stable Diffusion 2.x (OpenCLIP ViT-H/14 text tower without its last layer)."""


# -- tokenizer ------------------------------------------------------------------------------------
def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2 / CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def build_vocab(words: Iterable[str] = TOKENIZER_WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary and merge list: all bytes (plain and word-final) plus ``words`` whole.

    Returns (vocab token -> id, merges "left right" in priority order); the special tokens come last.
    """
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in _byte_alphabet():
            vocab[char + suffix] = len(vocab)
    merges: list[str] = []
    for word in words:
        pieces = list(word)
        pieces[-1] += "</w>"
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            if merge not in merges:
                merges.append(merge)
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return vocab, merges


def save_offline_tokenizer(folder: Path, words: Iterable[str] = TOKENIZER_WORDS) -> dict[str, int]:
    """Write vocab.json, merges.txt and tokenizer_config.json of a small CLIPTokenizer into ``folder``.

    Returns {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"} for the text encoder config.
    """
    vocab, merges = build_vocab(words)
    write_clip_tokenizer(folder, vocab, merges, MAX_TOKENS)
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN],
        "pad_token_id": vocab[EOS_TOKEN],
    }


# -- components -----------------------------------------------------------------------------------
def _save_text_encoder(
    folder: Path, config: dict[str, Any], token_ids: dict[str, int], dtype: torch.dtype, with_projection: bool = False
) -> None:
    """A random CLIPTextModel (``with_projection``: CLIPTextModelWithProjection, as in Stable Diffusion 3) in ``folder``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = {k: v for k, v in token_ids.items() if k != "vocab_size"}
    full = {"vocab_size": token_ids["vocab_size"], **config, **ids}
    full["vocab_size"] = max(full["vocab_size"], token_ids["vocab_size"])
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    # .to is functools.wraps(nn.Module.to) there: the stubs take the dtype for self
    model = model_class(CLIPTextConfig(**full)).to(dtype)  # pyright: ignore[reportArgumentType]
    model.save_pretrained(folder, safe_serialization=True)


def _save_scheduler(folder: Path) -> None:
    from diffusers import DDIMScheduler

    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder)


def _write_model_index(path: Path, class_name: str, components: dict[str, tuple[str, str]], extra: dict | None = None) -> None:
    import diffusers

    index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    index.update({name: list(lib_cls) for name, lib_cls in components.items()})
    index.update(extra or {})
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


SD_COMPONENTS = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "scheduler": ("diffusers", "DDIMScheduler"),
}
SD_EXTRA = {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}


def save_latent_pipeline(
    path: Path | str,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    text_config: dict[str, Any],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    save_unet: Optional[Callable[[Path, dict[str, Any], torch.dtype], Any]] = None,
    pipeline: tuple[str, Any, Any] | None = None,
) -> Path:
    """Build a random-weight Stable-Diffusion-layout pipeline from configs and save it under ``path``.

    One component is built, saved and freed at a time (peak memory: the largest component).
    ``save_unet(folder, unet_config, dtype)`` writes another UNet (MVDream's) in place of diffusers' own, and
    ``pipeline`` = (class name, components, extra keys) its model_index.json. Returns the pipeline folder.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def save_diffusers_unet(folder: Path, config: dict[str, Any], dtype: torch.dtype) -> None:
        # .to is functools.wraps(nn.Module.to) there: the stubs take the dtype for self
        UNet2DConditionModel(**config).to(dtype).save_pretrained(folder, safe_serialization=True)  # pyright: ignore[reportArgumentType]

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), quiet_hf():  # seeded, and without touching the caller's global RNG
        torch.manual_seed(seed)
        token_ids = save_offline_tokenizer(path / "tokenizer")
        _save_text_encoder(path / "text_encoder", text_config, token_ids, dtype)
        (save_unet or save_diffusers_unet)(path / "unet", unet_config, dtype)
        # .to is functools.wraps(nn.Module.to) there: the stubs take the dtype for self
        AutoencoderKL(**vae_config).to(dtype).save_pretrained(path / "vae", safe_serialization=True)  # pyright: ignore[reportArgumentType]
    _save_scheduler(path / "scheduler")
    _write_model_index(path, *(pipeline or ("StableDiffusionPipeline", SD_COMPONENTS, SD_EXTRA)))
    return path


# -- the three kinds ------------------------------------------------------------------------------
TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": 32,
}

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "attention_head_dim": (2, 4),
    "cross_attention_dim": 32,
    "use_linear_projection": True,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
}

TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (8, 16, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TINY_PIXEL_UNET_CONFIG: dict[str, Any] = {**TINY_UNET_CONFIG, "sample_size": 32, "in_channels": 3, "out_channels": 3}


def save_tiny_sd_pipeline(path: Path | str, seed: int = 0) -> Path:
    """A tiny random Stable-Diffusion-layout pipeline (64 px images, 4 x 8 x 8 latents, ~1.5M parameters)."""
    return save_latent_pipeline(path, TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG, seed=seed)


def save_sd21_base_random_pipeline(path: Path | str, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Stable Diffusion 2.1-base's full architecture with random weights (same FLOPs and memory as the real one).

    Weights are stored in ``dtype`` (fp16 by default: 2.6 GB instead of 5.2 GB on disk); loading casts them
    to whatever precision the prior asks for. Building takes ~5 GB of RAM and tens of seconds on a CPU.
    """
    return save_latent_pipeline(path, SD21_UNET_CONFIG, SD21_VAE_CONFIG, SD21_TEXT_CONFIG, seed=seed, dtype=dtype)


def save_tiny_pixel_pipeline(path: Path | str, seed: int = 0) -> Path:
    """A tiny random pixel-space pipeline: text-conditioned UNet on 3 x 32 x 32 images, no VAE."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), quiet_hf():
        torch.manual_seed(seed)
        token_ids = save_offline_tokenizer(path / "tokenizer")
        _save_text_encoder(path / "text_encoder", TINY_TEXT_CONFIG, token_ids, torch.float32)
        UNet2DConditionModel(**TINY_PIXEL_UNET_CONFIG).save_pretrained(path / "unet", safe_serialization=True)
    _save_scheduler(path / "scheduler")
    components = {k: v for k, v in SD_COMPONENTS.items() if k != "vae"}
    _write_model_index(path, "PixelDiffusionPipeline", components)
    return path


KINDS = {"tiny": save_tiny_sd_pipeline, "sd21": save_sd21_base_random_pipeline, "pixel": save_tiny_pixel_pipeline}
"""``--kind`` of scripts/make_random_pipeline.py -> builder."""
