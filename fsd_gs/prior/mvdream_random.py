"""Random-weight MVDream pipelines in the public diffusers-format layout, built offline (tests and timing).

The folder looks like ``ashawkey/mvdream-sd2.1-diffusers``: model_index.json (``MVDreamPipeline``, unet
``["mv_unet", "MultiViewUNetModel"]``), SD-layout vae/, text_encoder/, tokenizer/, scheduler/, and unet/ with
config.json in the original parameter names and the weights under the original LDM names, so loading it
exercises the same renaming path as the real weights.

* :func:`build_tiny_mvdream`: 64 px images (8 x 8 latents), tiny networks, about a second on a CPU.
* :func:`save_mvdream_sd21_random_pipeline`: MVDream SD 2.1-base's full size (868M-parameter UNet, 256 px).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fsd_gs.prior.mvdream_unet import CAMERA_DIM, MVDREAM_SD21_CONFIG, UNET_CLASS, build_unet, parse_config, to_ldm_state_dict
from fsd_gs.prior.random_pipeline import (
    SD21_TEXT_CONFIG,
    SD21_VAE_CONFIG,
    TINY_TEXT_CONFIG,
    TINY_VAE_CONFIG,
    save_latent_pipeline,
)

TINY_MVDREAM_CONFIG: dict[str, Any] = {
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [1],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 16,
    "transformer_depth": 1,
    "context_dim": TINY_TEXT_CONFIG["hidden_size"],
    "camera_dim": CAMERA_DIM,
}
"""A tiny MVDream UNet (original parameter names): 2 levels, attention at the first, 8 x 8 latents."""

MVDREAM_COMPONENTS = {
    "unet": ("mv_unet", UNET_CLASS),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "scheduler": ("diffusers", "DDIMScheduler"),
}
MVDREAM_EXTRA = {"feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False}


def save_mvdream_unet(folder: Path | str, ldm_config: dict[str, Any], dtype: torch.dtype = torch.float32) -> Path:
    """A random MVDream UNet written as unet/ of the public layout: config.json (original names) and LDM-named
    safetensors. Uses the caller's torch RNG (seed it, or fork it, outside)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = parse_config(ldm_config)
    unet = build_unet(spec).to(dtype)
    state = {k: v.contiguous() for k, v in to_ldm_state_dict(unet, spec).items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": UNET_CLASS, **ldm_config}, indent=2) + "\n")
    return folder


def save_mvdream_pipeline(
    path: Path | str,
    unet_config: dict[str, Any],
    vae_config: dict[str, Any],
    text_config: dict[str, Any],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build a random-weight MVDream pipeline from configs and save it under ``path`` (seeded; one component at a time)."""
    return save_latent_pipeline(
        path,
        unet_config,
        vae_config,
        text_config,
        seed,
        dtype,
        save_unet=save_mvdream_unet,
        pipeline=("MVDreamPipeline", MVDREAM_COMPONENTS, MVDREAM_EXTRA),
    )


def build_tiny_mvdream(folder: Path | str, seed: int = 0) -> Path:
    """A tiny random MVDream pipeline folder (64 px images, 4 x 8 x 8 latents, 4 views per group)."""
    return save_mvdream_pipeline(folder, TINY_MVDREAM_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG, seed=seed)


def save_mvdream_sd21_random_pipeline(path: Path | str, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """MVDream SD 2.1-base's full architecture with random weights (same FLOPs and memory as the real one).

    Stored in ``dtype`` (fp16: about 2.6 GB on disk, like the public weights); ~6 GB of RAM and tens of
    seconds on a CPU to build.
    """
    vae = {**SD21_VAE_CONFIG, "sample_size": 256}
    return save_mvdream_pipeline(path, MVDREAM_SD21_CONFIG, vae, SD21_TEXT_CONFIG, seed=seed, dtype=dtype)


KINDS = {"mvdream": save_mvdream_sd21_random_pipeline, "tiny-mvdream": build_tiny_mvdream}
"""``--kind`` of scripts/make_random_pipeline.py -> builder, beside fsd_gs.prior.random_pipeline.KINDS."""
