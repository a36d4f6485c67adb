"""Choosing and loading the diffusion prior once, at start-up: ``load_prior(model, PriorConfig(...), device)``.

``model`` is a hub id, a local diffusers folder, an MVDream single-file checkpoint (.pt/.safetensors),
or "shapes" (the built-in CPU prior of fsd_gs/prior/shapes.py). Which kind it is, is decided by the ordered
detectors of fsd_gs/prior/detectors.py: an MVDream folder (its model_index.json names the MVDream pipeline) or
checkpoint becomes an :class:`~fsd_gs.prior.mvdream.MVDreamPrior`; another folder with vae/ a
:class:`LatentDiffusionPrior`; one without, a :class:`PixelDiffusionPrior`.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.prior.compile import resolve_compile
from fsd_gs.prior.detectors import BUILTIN_SHAPES, BUILTIN_SHAPES_FLOW, BUILTIN_SHAPES_MV, LoadRequest, detect_and_load
from fsd_gs.prior.loading import DEFAULT_MODEL, PriorConfig, resolve_dtype

__all__ = [
    "BUILTIN_SHAPES",
    "BUILTIN_SHAPES_FLOW",
    "BUILTIN_SHAPES_MV",
    "DEFAULT_MODEL",
    "PriorConfig",
    "load_prior",
    "parameter_count",
]


def load_prior(
    model: str,
    config: Optional[PriorConfig] = None,
    device: torch.device | str = "auto",
    steps: Optional[int] = None,
    long_lived: bool = False,
) -> DiffusionPrior:
    """Resolve ``model`` (offline first) and build the prior on ``device``; bad input is a UserError.

    ``steps`` (the run's length) and ``long_lived`` (a batch worker's prior, reused for many assets) feed the
    ``--prior.compile auto`` decision (:func:`~fsd_gs.prior.compile.resolve_compile`), kept as the prior's
    ``compile_decision``; ``load_seconds`` is the wall time of loading.
    """
    started = time.perf_counter()
    prior = _load_prior(model, config or PriorConfig(), device, steps, long_lived)
    prior.load_seconds = time.perf_counter() - started
    return prior


def _load_prior(
    model: str, config: PriorConfig, device: torch.device | str, steps: Optional[int], long_lived: bool
) -> DiffusionPrior:
    from fsd_gs.device import resolve_device

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model = (model or "").strip()
    if not model:
        raise UserError("--model is empty: pass a hub id, a local folder or 'shapes'")
    dtype = resolve_dtype(config.dtype, device)
    decision = resolve_compile(config.compile, device, model, steps, long_lived)
    return detect_and_load(model, LoadRequest(config, device, dtype, decision))


def parameter_count(prior: DiffusionPrior) -> int:
    """Parameters of the prior's networks (UNet, VAE, text encoder), for the CPU-speed check."""
    return sum(p.numel() for net in prior.networks() for p in net.parameters())
