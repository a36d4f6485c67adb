"""Choosing and loading the diffusion prior once, at start-up: ``load_prior(model, PriorConfig(...), device)``.

``model`` is a hub id, a local diffusers folder, an MVDream single-file checkpoint (.pt/.safetensors),
or "shapes" (the built-in CPU prior of fsd_gs/prior/shapes.py). An MVDream folder (its model_index.json
names the MVDream pipeline) or checkpoint becomes an :class:`~fsd_gs.prior.mvdream.MVDreamPrior`;
another folder with vae/ a :class:`LatentDiffusionPrior`; one without, a :class:`PixelDiffusionPrior`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.prior.compile import resolve_compile, setup_compile_cache
from fsd_gs.prior.loading import DEFAULT_MODEL, MODEL_KINDS, PriorConfig, resolve_dtype, resolve_model

BUILTIN_SHAPES = "shapes"

__all__ = ["BUILTIN_SHAPES", "DEFAULT_MODEL", "PriorConfig", "load_prior", "parameter_count"]


def load_prior(model: str, config: Optional[PriorConfig] = None, device: torch.device | str = "auto",
               steps: Optional[int] = None, long_lived: bool = False) -> DiffusionPrior:
    """Resolve ``model`` (offline first) and build the prior on ``device``; bad input is a UserError.

    ``steps`` (the run's length) and ``long_lived`` (a batch worker's prior, reused for many assets) feed the
    ``--prior.compile auto`` decision (:func:`~fsd_gs.prior.compile.resolve_compile`), kept as the prior's
    ``compile_decision``; ``load_seconds`` is the wall time of loading.
    """
    started = time.perf_counter()
    prior = _load_prior(model, config or PriorConfig(), device, steps, long_lived)
    prior.load_seconds = time.perf_counter() - started
    return prior


def _load_prior(model: str, config: PriorConfig, device: torch.device | str, steps: Optional[int],
                long_lived: bool) -> DiffusionPrior:
    from fsd_gs.device import resolve_device

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model = (model or "").strip()
    if not model:
        raise UserError("--model is empty: pass a hub id, a local folder or 'shapes'")
    dtype = resolve_dtype(config.dtype, device)
    decision = resolve_compile(config.compile, device, model, steps, long_lived)
    common = dict(offload_text_encoder=config.offload_text_encoder, channels_last=config.channels_last)
    if model == BUILTIN_SHAPES:
        from fsd_gs.prior.shapes import load_shapes_prior

        prior = load_shapes_prior(device, dtype, **common)
        prior.compile_decision = decision
        return prior
    if decision.enabled:
        setup_compile_cache()

    from fsd_gs.prior.diffusers_prior import LatentDiffusionPrior, PixelDiffusionPrior
    from fsd_gs.prior.mvdream import CHECKPOINT_SUFFIXES, is_mvdream_folder, load_mvdream_prior

    hub = dict(local_files_only=config.local_files_only, cache_dir=config.cache_dir, revision=config.revision)
    common.update(enable_xformers=config.enable_xformers, compile=decision)
    path = Path(model).expanduser()
    if path.suffix.lower() in CHECKPOINT_SUFFIXES and not path.is_dir():  # MVDream's original single-file checkpoint
        check_checkpoint_file(path, model)
        try:
            return load_mvdream_prior(path, device, dtype, upcast_vae=config.upcast_vae, **hub, **common)
        except UserError as exc:
            raise UserError(f"--model {model} is read as an MVDream single-file checkpoint, which could not be loaded "
                            f"({exc})") from exc
    folder = resolve_model(model, **hub)
    if is_mvdream_folder(folder):
        return load_mvdream_prior(folder, device, dtype, upcast_vae=config.upcast_vae, **hub, **common)
    if (folder / "vae" / "config.json").is_file():
        return LatentDiffusionPrior(folder, device, dtype, upcast_vae=config.upcast_vae, **common)
    return PixelDiffusionPrior(folder, device, dtype, **common)


def check_checkpoint_file(path: Path, model: str) -> None:
    """UserError unless ``path`` is an existing file that starts like a safetensors or torch checkpoint.

    Checked before anything else is loaded, so the message names the file the user gave (not a base model).
    """
    if not path.is_file():
        raise UserError(f"the model file {model} does not exist: --model takes {MODEL_KINDS}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise UserError(f"cannot read the model file {model} ({exc.strerror or exc}): check its permissions") from exc
    if path.suffix.lower() == ".safetensors":  # 8-byte little-endian header length, then a JSON object
        ok = len(head) > 8 and 0 < int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{"
    else:  # torch.save: a zip archive, or a legacy pickle (protocol opcode 0x80)
        ok = head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"
    if not ok:
        raise UserError(f"the model file {model} is not a {path.suffix} checkpoint (its first bytes are neither "
                        f"safetensors nor a torch file): --model takes {MODEL_KINDS}")


def parameter_count(prior: DiffusionPrior) -> int:
    """Parameters of the prior's networks (UNet, VAE, text encoder), for the CPU-speed check."""
    return sum(p.numel() for net in prior.networks() for p in net.parameters())
