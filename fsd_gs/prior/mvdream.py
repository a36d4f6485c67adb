"""MVDream (Shi et al. 2023) as a diffusion prior: Stable Diffusion 2.1-base's pipeline with the multi-view UNet.

    prior = load_mvdream_prior("ashawkey/mvdream-sd2.1-diffusers", device, torch.float16)
    eps_hat = prior.predict(z_t, t, conditioning, 50.0, cameras=cams)     # B views, B % 4 == 0

Two sources:

* a diffusers-format folder or hub id in the layout of ``ashawkey/mvdream-sd2.1-diffusers``
  (model_index.json ``_class_name: MVDreamPipeline``; vae/, text_encoder/, tokenizer/, scheduler/ as in SD 2.1;
  unet/config.json in the original parameter names and unet weights under the original LDM names). Its custom
  UNet code (trust_remote_code, xformers) is never run: the UNet is rebuilt as a diffusers
  ``UNet2DConditionModel`` (fsd_gs/prior/mvdream_unet.py) and the weights are renamed on load.
* the original single-file checkpoint (``sd-v2.1-base-4view.pt``, or a .safetensors of it): its UNet is read
  (``model.diffusion_model.*``; .pt files through ``torch.load(weights_only=True)``), and the VAE, text encoder,
  tokenizer and noise schedule come from a Stable Diffusion 2.1-base folder (MVDream trained only the UNet).

The views' cameras (fsd_gs.camera.Cameras) become MVDream's 16-d camera vectors (fsd_gs/prior/mvdream_cameras.py);
every ``views_per_group`` consecutive views form one group that attends to itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.diffusers_prior import LatentDiffusionPrior, PixelDiffusionPrior
from fsd_gs.prior.loading import DEFAULT_MODEL
from fsd_gs.prior.mvdream_cameras import DEFAULT_ELEVATION, mvdream_camera_vectors, reference_group
from fsd_gs.prior.mvdream_unet import LDM_PREFIX, MVDREAM_SD21_CONFIG, UNET_CLASS, MVDreamUNetSpec, load_unet, parse_config

DEFAULT_MVDREAM_MODEL = "ashawkey/mvdream-sd2.1-diffusers"
"""The public diffusers-format MVDream weights (SD 2.1-base, 4 views, 256 px)."""

DEFAULT_BASE_MODEL = DEFAULT_MODEL
"""Where the VAE, text encoder and tokenizer come from when the source is a single-file UNet checkpoint."""

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
"""File endings read as single-file checkpoints."""

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"

_MVDREAM_PIPELINES = {"MVDreamPipeline"}
_MVDREAM_UNETS = {UNET_CLASS}


def is_mvdream_folder(path: str | Path) -> bool:
    """True when ``path`` holds a model_index.json naming an MVDream pipeline or multi-view UNet."""
    index_file = Path(path) / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict):
        return False
    unet = index.get("unet")
    unet_class = unet[1] if isinstance(unet, (list, tuple)) and len(unet) == 2 else None
    return index.get("_class_name") in _MVDREAM_PIPELINES or unet_class in _MVDREAM_UNETS


# -- reading weights ------------------------------------------------------------------------------
def _unet_part(state: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet's entries of a whole-model state dict (``model.diffusion_model.`` stripped), or all of a bare one."""
    if any(k.startswith(LDM_PREFIX) for k in state):
        return {k[len(LDM_PREFIX) :]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
    return dict(state)


def read_unet_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The UNet weights (LDM names, no prefix) of a single-file checkpoint: .safetensors, or a pickle-free
    ``torch.load(weights_only=True)`` of .pt/.pth/.ckpt/.bin (a top-level "state_dict" is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the MVDream checkpoint {path} does not exist: pass an existing .safetensors or .pt file")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"{path} is not a checkpoint file this loader reads: use {', '.join(CHECKPOINT_SUFFIXES)}")
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                names = list(f.keys())
                wanted = [k for k in names if k.startswith(LDM_PREFIX)] or names
                state = {k: f.get_tensor(k) for k in wanted}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except UserError:
        raise
    except Exception as exc:  # unpickling refusals, truncated files, wrong formats: one sentence
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"could not read the checkpoint {path} ({first}): pass an MVDream .safetensors file or a .pt holding only tensors"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors: pass the MVDream checkpoint (e.g. sd-v2.1-base-4view.pt)")
    return _unet_part(state)


def _read_folder_unet(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(unet/config.json, LDM-named weights) of an MVDream diffusers-format folder."""
    config_file, weights = folder / "unet" / "config.json", folder / "unet" / UNET_WEIGHTS
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"could not read {config_file} ({type(exc).__name__}): the MVDream folder is incomplete") from exc
    if not weights.is_file():
        raise UserError(f"{folder} has no unet/{UNET_WEIGHTS}: download the full MVDream folder (safetensors weights)")
    from safetensors.torch import load_file

    return config, _unet_part(load_file(str(weights)))


# -- the prior ------------------------------------------------------------------------------------
def _is_diffusers_unet(folder: Path) -> bool:
    """True when ``folder``/unet was written by diffusers (``UNet2DConditionModel`` config and names), as the
    shapes-mv prior is, rather than in MVDream's original names."""
    try:
        return json.loads((folder / "unet" / "config.json").read_text()).get("_class_name") == "UNet2DConditionModel"
    except (OSError, ValueError, AttributeError):
        return False


def load_diffusers_multiview_unet(folder: Path, dtype: torch.dtype, views_per_group: int) -> Any:
    """A diffusers-format multi-view UNet (``class_embed_type="projection"`` over the 16-d camera) from
    ``folder``/unet, with cross-view self-attention over ``views_per_group`` views; UserError without the camera."""
    from fsd_gs.prior.diffusers_prior import load_unet as load_diffusers_unet
    from fsd_gs.prior.mvdream_unet import CAMERA_DIM, set_views_per_group

    unet = load_diffusers_unet(folder, dtype)
    config = unet.config
    if config.class_embed_type != "projection" or config.projection_class_embeddings_input_dim != CAMERA_DIM:
        raise UserError(
            f"the UNet of {folder / 'unet'} has no {CAMERA_DIM}-d camera embedding "
            "(class_embed_type projection): it is not a multi-view model"
        )
    set_views_per_group(unet, views_per_group)
    return unet


class MultiViewPriorMixin:
    """MVDream's multi-view part of a diffusers prior: the UNet (camera embedding + cross-view attention),
    the camera vectors and the grouped noise prediction. Mixed into a latent or a pixel-space prior.

    Attributes:
        views_per_group: F, the views that attend to each other (4); batches must be multiples of F.
        spec: the UNet architecture (:class:`~fsd_gs.prior.mvdream_unet.MVDreamUNetSpec`) for UNets in MVDream's
            original names; None for a diffusers-format UNet (shapes-mv).
        unet_source: the folder or file the UNet weights came from.
        default_elevation: elevation (degrees) of the reference views used when no cameras are given.
    """

    camera_conditioned = True
    preset_family = "mvdream"
    source: Path
    dtype: torch.dtype
    device: torch.device

    def __init__(
        self,
        folder: Path,
        device: torch.device,
        dtype: torch.dtype,
        views_per_group: int = 4,
        unet_checkpoint: Optional[Path] = None,
        unet_config: Optional[Mapping[str, Any]] = None,
        default_elevation: float = DEFAULT_ELEVATION,
        **kwargs: Any,
    ) -> None:
        """Args:
        folder: the pipeline folder (MVDream layout), or with ``unet_checkpoint`` an SD 2.1-base folder that
            supplies the VAE, text encoder, tokenizer and scheduler.
        views_per_group: F (MVDream was trained with 4).
        unet_checkpoint: a single-file checkpoint to take the UNet from instead of ``folder``/unet.
        unet_config: the UNet's LDM-style config for ``unet_checkpoint`` (default: MVDream SD 2.1-base's).
        kwargs: the base prior's options (offload_text_encoder, compile, ...).
        """
        if kwargs.pop("enable_xformers", False):
            raise UserError("MVDream runs its cross-view attention with PyTorch's SDPA: leave enable_xformers off")
        if views_per_group < 1:
            raise UserError(f"views_per_group must be at least 1, got {views_per_group}")
        self.views_per_group = int(views_per_group)
        self.default_elevation = float(default_elevation)
        self._unet_checkpoint = None if unet_checkpoint is None else Path(unet_checkpoint)
        self._unet_config = dict(unet_config) if unet_config is not None else None
        self.spec: Optional[MVDreamUNetSpec] = None
        super().__init__(folder, device, dtype, **kwargs)  # type: ignore[call-arg]

    def load_unet(self) -> Any:
        """MVDream's UNet as a diffusers ``UNet2DConditionModel`` (camera embedding + cross-view attention)."""
        if self._unet_checkpoint is None and _is_diffusers_unet(self.source):
            self.unet_source = str(self.source / "unet")
            return load_diffusers_multiview_unet(self.source, self.dtype, self.views_per_group)
        if self._unet_checkpoint is not None:
            config = self._unet_config if self._unet_config is not None else MVDREAM_SD21_CONFIG
            state, where = read_unet_checkpoint(self._unet_checkpoint), str(self._unet_checkpoint)
        else:
            config, state = _read_folder_unet(self.source)
            where = str(self.source / "unet")
        self.unet_source = where
        self.spec = parse_config(config, source=f"the UNet config of {where}")
        if self.spec.camera_dim is None:
            raise UserError(f"the UNet of {where} has no camera embedding (camera_dim): it is not an MVDream model")
        return load_unet(self.spec, state, self.dtype, where, num_frames=self.views_per_group)

    def camera_vectors(self, cameras: Any, batch: int) -> torch.Tensor:
        """MVDream's camera input [batch,16] for the views' :class:`~fsd_gs.camera.Cameras`; None gives MVDream's
        reference views (azimuths 0, 90, 180, 270 at ``default_elevation``) for every group."""
        if cameras is None:
            cameras = reference_group(self.views_per_group, batch // self.views_per_group, self.default_elevation)
        if len(cameras) != batch:
            raise ValueError(f"got {len(cameras)} cameras for a batch of {batch} views")
        return mvdream_camera_vectors(cameras).to(self.device)

    def class_labels(self, cameras: Any, batch: int) -> torch.Tensor:
        """MVDream's camera vectors [B,16] as the UNet's class labels, for B views in groups of ``views_per_group``
        consecutive views (Perp-Neg's negatives of a group are denoised as a group of their own, with its cameras).

        ``cameras``: the views' :class:`~fsd_gs.camera.Cameras` (B of them), or None for MVDream's reference views.
        Raises UserError when B is not a multiple of ``views_per_group``.
        """
        if batch % self.views_per_group:
            raise UserError(
                f"MVDream denoises views in groups of {self.views_per_group}, but got a batch of {batch}: set "
                f"camera.batch_size to a multiple of {self.views_per_group}"
            )
        return self.camera_vectors(cameras, batch)


class MVDreamPrior(MultiViewPriorMixin, LatentDiffusionPrior):
    """Stable Diffusion 2.1-base's latent prior with MVDream's camera-conditioned multi-view UNet
    (attributes: :class:`MultiViewPriorMixin` and :class:`LatentDiffusionPrior`)."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, **kwargs: Any) -> None:
        """Args: as :class:`MultiViewPriorMixin` plus :class:`LatentDiffusionPrior`'s (upcast_vae, ...)."""
        super().__init__(folder, device, dtype, **kwargs)
        if self.process.prediction != "epsilon":  # an SD 2.1 (768, v-prediction) base folder: MVDream predicts eps
            self.process = self.process.with_prediction("epsilon")
            self.scheduler_config = dict(self.process.config)


class PixelMVDreamPrior(MultiViewPriorMixin, PixelDiffusionPrior):
    """A pixel-space multi-view prior (no VAE; e.g. the built-in shapes-mv): an RGB UNet with MVDream's camera
    embedding and cross-view self-attention (attributes: :class:`MultiViewPriorMixin`, :class:`PixelDiffusionPrior`)."""


def load_mvdream_prior(
    source: str | Path,
    device: torch.device | str,
    dtype: torch.dtype,
    base_model: str = DEFAULT_BASE_MODEL,
    local_files_only: bool = False,
    cache_dir: Optional[Path] = None,
    revision: Optional[str] = None,
    **kwargs: Any,
) -> MVDreamPrior | PixelMVDreamPrior:
    """An :class:`MVDreamPrior` from a hub id / folder (MVDream diffusers layout) or a single-file checkpoint; a
    folder without vae/ (pixel space, shapes-mv) gives a :class:`PixelMVDreamPrior`.

    Args:
        source: hub id or folder (e.g. ashawkey/mvdream-sd2.1-diffusers), or a .safetensors/.pt checkpoint.
        device, dtype: where and in which precision the networks run.
        base_model: for a single-file source, the SD 2.1-base hub id or folder with vae/, text_encoder/,
            tokenizer/ and scheduler/.
        local_files_only, cache_dir, revision: hub resolution (fsd_gs.prior.loading.resolve_model).
        kwargs: :class:`MVDreamPrior` options (views_per_group, unet_config, guidance_scale, ...).
    Raises UserError (one sentence) for a missing source, a non-MVDream folder, or weights that do not fit.
    """
    from fsd_gs.prior.loading import resolve_model

    hub: dict[str, Any] = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision)
    path = Path(str(source)).expanduser()
    device = torch.device(device)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES and not path.is_dir():
        if not path.is_file():
            raise UserError(f"the MVDream checkpoint {path} does not exist: pass an existing .safetensors or .pt file")
        base = resolve_model(str(base_model), **hub)
        return MVDreamPrior(base, device, dtype, unet_checkpoint=path, **kwargs)
    folder = resolve_model(str(source), **hub)
    if not is_mvdream_folder(folder):
        raise UserError(
            f"{source!s} is not an MVDream pipeline (its model_index.json names no MVDreamPipeline): pass "
            f"{DEFAULT_MVDREAM_MODEL}, a folder in its layout, or the original .pt/.safetensors checkpoint"
        )
    if not (folder / "vae").is_dir():  # pixel space (shapes-mv): no VAE to upcast
        kwargs.pop("upcast_vae", None)
        return PixelMVDreamPrior(folder, device, dtype, **kwargs)
    return MVDreamPrior(folder, device, dtype, **kwargs)
