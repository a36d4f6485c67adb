"""Which kind of prior a ``--model`` is: one ordered list of detectors, the first that matches loads it.

    request = LoadRequest(config, device, dtype, decision)
    prior = detect_and_load("stabilityai/stable-diffusion-2-1-base", request)

A :class:`PriorDetector` looks either at the ``--model`` string itself (``on_folder=False``: the built-in
shapes prior, an MVDream single-file checkpoint) or at the resolved model folder (``on_folder=True``: an
MVDream folder, a Stable Diffusion 3 folder (its model_index.json names StableDiffusion3Pipeline), a latent
diffusion folder with vae/, and last any other diffusers folder as a pixel-space prior). A new kind of prior is
one detector appended to :data:`PRIOR_DETECTORS` before the catch-all ``pixel_diffusion`` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.prior.compile import CompileDecision, setup_compile_cache
from fsd_gs.prior.loading import MODEL_KINDS, PriorConfig, resolve_model
from fsd_gs.registry import Registry

BUILTIN_SHAPES = "shapes"
BUILTIN_SHAPES_MV = "shapes-mv"
"""The built-in multi-view shapes prior (fsd_gs/assets/shapes_mv, docs/mvdream.md)."""
BUILTIN_SHAPES_FLOW = "shapes-flow"
"""The built-in rectified-flow shapes prior (fsd_gs/assets/shapes_flow, docs/shapes-flow.md)."""
BUILTIN_SHAPES_WORLD = (BUILTIN_SHAPES, BUILTIN_SHAPES_MV, BUILTIN_SHAPES_FLOW)
"""Every built-in prior of the shapes world."""


def is_shapes_world(model: str) -> bool:
    """Whether ``model`` is one of the built-in priors of the shapes world (judged by its judge, not CLIP)."""
    return model in BUILTIN_SHAPES_WORLD


@dataclass(frozen=True)
class LoadRequest:
    """Everything a detector's loader needs besides the model: the options, the device, dtype and compile decision."""

    config: PriorConfig
    device: torch.device
    dtype: torch.dtype
    decision: CompileDecision

    def common(self) -> dict[str, Any]:
        """Keyword arguments every diffusers-backed prior takes (text-encoder offload, channels-last, xformers, compile)."""
        return dict(
            offload_text_encoder=self.config.offload_text_encoder,
            channels_last=self.config.channels_last,
            enable_xformers=self.config.enable_xformers,
            compile=self.decision,
        )

    def hub(self) -> dict[str, Any]:
        """Keyword arguments of hub look-ups (offline first, cache folder, revision)."""
        return dict(local_files_only=self.config.local_files_only, cache_dir=self.config.cache_dir, revision=self.config.revision)


@dataclass(frozen=True)
class PriorDetector:
    """One kind of prior: how to recognise its ``--model`` (or its resolved folder) and how to load it."""

    name: str
    on_folder: bool
    """False: :attr:`matches` reads the --model string; True: the folder :func:`resolve_model` found for it."""
    matches: Callable[[str], bool]
    load: Callable[[str, LoadRequest], DiffusionPrior]
    compiles: bool = True
    """False for priors that never use torch.compile (no compile cache is set up for them)."""


def _load_shapes(model: str, request: LoadRequest) -> DiffusionPrior:
    from fsd_gs.prior.shapes import load_shapes_flow_prior, load_shapes_mv_prior, load_shapes_prior

    load = {BUILTIN_SHAPES_MV: load_shapes_mv_prior, BUILTIN_SHAPES_FLOW: load_shapes_flow_prior}.get(model, load_shapes_prior)
    return load(
        request.device,
        request.dtype,
        offload_text_encoder=request.config.offload_text_encoder,
        channels_last=request.config.channels_last,
        compile=request.decision,
    )


def _is_checkpoint(model: str) -> bool:
    from fsd_gs.prior.mvdream import CHECKPOINT_SUFFIXES

    path = Path(model).expanduser()
    return path.suffix.lower() in CHECKPOINT_SUFFIXES and not path.is_dir()


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
        raise UserError(
            f"the model file {model} is not a {path.suffix} checkpoint (its first bytes are neither "
            f"safetensors nor a torch file): --model takes {MODEL_KINDS}"
        )


def _load_checkpoint(model: str, request: LoadRequest) -> DiffusionPrior:
    """MVDream's original single-file checkpoint: the file is checked first, so errors name it (not a base model)."""
    path = Path(model).expanduser()
    check_checkpoint_file(path, model)
    try:
        return _load_mvdream(str(path), request)
    except UserError as exc:
        raise UserError(
            f"--model {model} is read as an MVDream single-file checkpoint, which could not be loaded ({exc})"
        ) from exc


def _is_mvdream_folder(folder: str) -> bool:
    from fsd_gs.prior.mvdream import is_mvdream_folder

    return is_mvdream_folder(folder)


def _load_mvdream(source: str, request: LoadRequest) -> DiffusionPrior:
    from fsd_gs.prior.mvdream import load_mvdream_prior

    return load_mvdream_prior(
        source, request.device, request.dtype, upcast_vae=request.config.upcast_vae, **request.hub(), **request.common()
    )


def _is_sd3_folder(folder: str) -> bool:
    from fsd_gs.prior.family import is_sd3_folder

    return is_sd3_folder(folder)


def _load_sd3(folder: str, request: LoadRequest) -> DiffusionPrior:
    """Stable Diffusion 3 / 3.5; dtype auto is bf16 on CUDA (the precision its weights are published in)."""
    from fsd_gs.prior.sd3 import StableDiffusion3Prior

    config = request.config
    dtype = torch.bfloat16 if config.dtype == "auto" and request.device.type == "cuda" else request.dtype
    if config.enable_xformers:
        raise UserError(
            "--prior.enable-xformers applies to UNet priors only: Stable Diffusion 3's transformer uses PyTorch's SDPA "
            "attention, so leave it off"
        )
    return StableDiffusion3Prior(
        Path(folder),
        request.device,
        dtype,
        t5=config.t5,
        upcast_vae=config.upcast_vae,
        offload_text_encoder=config.offload_text_encoder,
        compile=request.decision,
    )


def _load_latent(folder: str, request: LoadRequest) -> DiffusionPrior:
    from fsd_gs.prior.diffusers_prior import LatentDiffusionPrior

    return LatentDiffusionPrior(
        Path(folder), request.device, request.dtype, upcast_vae=request.config.upcast_vae, **request.common()
    )


def _load_pixel(folder: str, request: LoadRequest) -> DiffusionPrior:
    from fsd_gs.prior.diffusers_prior import PixelDiffusionPrior

    return PixelDiffusionPrior(Path(folder), request.device, request.dtype, **request.common())


PRIOR_DETECTORS: Registry[PriorDetector] = Registry("prior detector", "--model")
"""The detectors in the order they are tried (the ``--model`` string ones first, then the folder ones)."""
for _detector in (
    PriorDetector("shapes", False, is_shapes_world, _load_shapes, compiles=False),
    PriorDetector("mvdream_checkpoint", False, _is_checkpoint, _load_checkpoint),  # MVDream's original single file
    PriorDetector("mvdream_folder", True, _is_mvdream_folder, _load_mvdream),
    PriorDetector("sd3", True, _is_sd3_folder, _load_sd3),  # before latent_diffusion, which takes any folder with vae/
    PriorDetector("latent_diffusion", True, lambda folder: (Path(folder) / "vae" / "config.json").is_file(), _load_latent),
    PriorDetector("pixel_diffusion", True, lambda folder: True, _load_pixel),
):
    PRIOR_DETECTORS.register(_detector)


def detect_and_load(model: str, request: LoadRequest) -> DiffusionPrior:
    """Load ``model`` with the first detector that matches it (the model string first, then its resolved folder)."""
    detectors = list(PRIOR_DETECTORS.values())
    source = model
    for detector in [d for d in detectors if not d.on_folder] + [None] + [d for d in detectors if d.on_folder]:
        if detector is None:  # the string detectors are done: resolve the model to a folder (offline first)
            source = str(resolve_model(model, **request.hub(), with_t5=request.config.t5 == "on"))
            continue
        if detector.matches(source):
            if detector.compiles and request.decision.compiles:
                setup_compile_cache()
            return detector.load(source, request)
    raise AssertionError("the last prior detector matches every folder")  # pragma: no cover
