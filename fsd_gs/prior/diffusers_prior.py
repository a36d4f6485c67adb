"""Diffusion priors read from a diffusers pipeline folder: latent (Stable Diffusion 1.x/2.x) and pixel space.

Both share the text side (CLIP tokenizer + text encoder, prompt embeddings cached per prompt and view)
and the guided noise prediction (cond and uncond in one UNet call). They differ in the image <-> model
space maps: :class:`LatentDiffusionPrior` goes through the VAE (posterior mean times the scaling
factor, so encoding is deterministic and differentiable); :class:`PixelDiffusionPrior` maps [0,1] to [-1,1].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, NamedTuple, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior, NegativeViews, PromptEmbeddings
from fsd_gs.prior.compile import CompileDecision, compile_module, mark_step_begin, resolve_compile
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.graphs import UNetCall, unet_call
from fsd_gs.prior.guided import guided_raw, network_inputs
from fsd_gs.prior.loading import quiet_hf
from fsd_gs.prior.process import ForwardProcess, VPProcess, process_from_config
from fsd_gs.prior.prompt_cache import PromptCache
from fsd_gs.prior.text_cache import cached_rows, visiting

if TYPE_CHECKING:
    from fsd_gs.camera import Cameras


# -- loading helpers ------------------------------------------------------------------------------
def _transformers_dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """``dtype=`` for transformers >= 5, ``torch_dtype=`` before (the argument was renamed)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _load(component: str, folder: Path, loader: Any) -> Any:
    """Run ``loader()``; a missing or broken component becomes a one-sentence UserError."""
    try:
        with quiet_hf():
            return loader()
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not load the {component} of the pipeline in {folder} ({first[:200]}): "
            "check that the folder is a complete diffusers pipeline with safetensors weights"
        ) from exc


def load_frozen(
    component: str,
    folder: Path,
    model_class: Any,
    dtype: torch.dtype,
    library: Literal["diffusers", "transformers"] = "diffusers",
) -> Any:
    """``model_class.from_pretrained(folder / component)`` (safetensors, local files only) in ``dtype``, eval mode,
    frozen, on the CPU; ``library`` is the class's ("diffusers" or "transformers": how the dtype is passed)."""

    def dtype_kwarg() -> dict[str, Any]:
        return _transformers_dtype_kwarg(dtype) if library == "transformers" else {"torch_dtype": dtype}

    model = _load(
        component,
        folder,
        lambda: model_class.from_pretrained(folder / component, use_safetensors=True, local_files_only=True, **dtype_kwarg()),
    )
    return model.eval().requires_grad_(False)


def load_text_side(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """(CLIPTokenizer, CLIPTextModel in ``dtype``, eval mode, frozen) from ``folder``/tokenizer and /text_encoder."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = _load("tokenizer", folder, lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer"))
    return tokenizer, load_frozen("text_encoder", folder, CLIPTextModel, dtype, library="transformers")


def load_unet(folder: Path, dtype: torch.dtype) -> Any:
    """The UNet2DConditionModel in ``dtype``, eval mode, frozen."""
    from diffusers import UNet2DConditionModel

    return load_frozen("unet", folder, UNet2DConditionModel, dtype)


def load_scheduler_config(folder: Path) -> dict[str, Any]:
    """The scheduler config (any diffusers scheduler class; only the training noise schedule is used)."""
    from diffusers import DDIMScheduler

    return dict(_load("scheduler", folder, lambda: DDIMScheduler.load_config(folder / "scheduler")))


def load_vae(folder: Path, dtype: torch.dtype) -> Any:
    """The AutoencoderKL of ``folder``/vae in ``dtype``, eval mode, frozen (on the CPU)."""
    from diffusers import AutoencoderKL

    return load_frozen("vae", folder, AutoencoderKL, dtype)


def vae_factors(vae: Any) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE's config; the shift is 0 where the config has none (SD 1/2)."""
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


def encode_latents(vae: Any, images: torch.Tensor, shift: float, scale: float) -> torch.Tensor:
    """Images [B,3,H,W] in [0,1] (in the VAE's dtype and device) -> latents [B,C,H/f,W/f] float32:
    (posterior mean - shift) * scale. Deterministic and differentiable."""
    mean = vae.encode(images * 2.0 - 1.0).latent_dist.mean
    return ((mean - shift) * scale).float()


def decode_latents(vae: Any, z: torch.Tensor, shift: float, scale: float) -> torch.Tensor:
    """Latents [B,C,h,w] (in the VAE's dtype and device) -> images [B,3,h*f,w*f] float32 in [0,1]: the inverse of
    :func:`encode_latents` followed by the decoder (autograd follows the caller)."""
    x = vae.decode(z / scale + shift).sample.float()
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class LatentVAE(NamedTuple):
    """A latent prior's VAE side, as :func:`load_latent_vae` loads it."""

    vae: Any
    """The AutoencoderKL, frozen, on the prior's device (its encoder compiled in the prior's compile mode)."""
    scaling_factor: float
    shift_factor: float
    channels: int
    """C, the latent channels."""
    downsample: int
    """f: an image of H x W px has latents of H/f x W/f."""


def load_latent_vae(folder: Path, dtype: torch.dtype, device: torch.device, compile_mode: str) -> LatentVAE:
    """The VAE of ``folder``/vae in ``dtype`` on ``device`` (:func:`load_vae`), its encoder compiled in ``compile_mode``
    (:func:`~fsd_gs.prior.compile.compile_module`), with its factors and latent shape."""
    vae = load_vae(folder, dtype).to(device)
    compile_module(vae.encoder, compile_mode)
    scaling_factor, shift_factor = vae_factors(vae)
    downsample = 2 ** (len(vae.config.block_out_channels) - 1)
    return LatentVAE(vae, scaling_factor, shift_factor, int(vae.config.latent_channels), downsample)


# -- shared base ----------------------------------------------------------------------------------
class DiffusersPrior(DiffusionPrior):
    """Text encoding, CFG noise prediction and schedule bookkeeping shared by the diffusers priors.

    Attributes beyond :class:`DiffusionPrior`:
        unet, text_encoder, tokenizer: the networks (frozen, eval mode).
        scheduler_config: the pipeline's scheduler config (its noise schedule became :attr:`process`).
        process: a :class:`~fsd_gs.prior.process.VPProcess` (epsilon or v_prediction UNets), or a
            :class:`~fsd_gs.prior.process.FlowProcess` for a FlowMatchEulerDiscreteScheduler folder (shapes-flow).
        source: the folder the weights came from.
    """

    process: ForwardProcess
    unet_call: UNetCall
    """The UNet as (z, t, emb, labels) -> output; recorded as CUDA graphs under --prior.compile graphs (graphs.py)."""

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: "epsilon" or "v_prediction" (``process.prediction``)."""
        return self.process.prediction

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0..T-1, float32 [T] on ``device`` (``process.alphas_cumprod``; VP priors only)."""
        if not isinstance(self.process, VPProcess):
            raise AttributeError(f"a {self.process.kind} prior has no alphas_cumprod: use process.alpha_sigma(t)")
        return self.process.alphas_cumprod

    def __init__(
        self,
        folder: Path,
        device: torch.device,
        dtype: torch.dtype,
        offload_text_encoder: bool = True,
        channels_last: bool = False,
        enable_xformers: bool = False,
        compile: CompileDecision | str = "off",
    ) -> None:
        self.source = Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer, self.text_encoder = load_text_side(self.source, dtype)
        self.offload_text_encoder = offload_text_encoder and self.device.type != "cpu"
        self.text_device = torch.device("cpu") if self.offload_text_encoder else self.device
        self.text_encoder.to(self.text_device)
        self.unet = self.load_unet().to(self.device)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.compile_decision = compile if isinstance(compile, CompileDecision) else resolve_compile(compile, self.device)
        compile_module(self.unet, self.compile_decision.mode)
        self.unet_call = unet_call(self.unet, self.compile_decision.mode)
        if enable_xformers:
            try:
                self.unet.enable_xformers_memory_efficient_attention()
            except (ImportError, ModuleNotFoundError, ValueError, NotImplementedError) as exc:
                raise UserError(
                    f"xformers attention was asked for but cannot be used ({str(exc).splitlines()[0][:120]}): "
                    "install xformers or leave enable_xformers off (PyTorch's SDPA attention is used then)"
                ) from exc
        self.scheduler_config = load_scheduler_config(self.source)
        try:
            self.process = process_from_config(self.scheduler_config, self.device)
        except UserError as exc:
            raise UserError(f"the UNet prior in {self.source} cannot be used: {exc}") from exc
        self.num_train_timesteps = self.process.num_train_timesteps
        self._text_cache: dict[str, torch.Tensor] = {}
        self._prompts = PromptCache(lambda texts: (self.embed_texts(texts), None))

    def load_unet(self) -> Any:
        """The frozen UNet of ``source`` in ``dtype`` (on the CPU); priors with another UNet layout override it."""
        return load_unet(self.source, self.dtype)

    # -- text -------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states [N,L,D] (on ``device``, in ``dtype``) for ``texts``, cached per text."""
        return torch.stack(cached_rows(self._text_cache, texts, self._encode_texts))

    def _encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """One [L,D] row per text (on ``device``, in ``dtype``): the text encoder's last hidden states, no cache."""
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with visiting(self.text_encoder, self.device, self.text_device, self.offload_text_encoder) as where:
            hidden = self.text_encoder(tokens.input_ids.to(where))[0]  # last_hidden_state (final layer norm applied)
        return [row.to(self.device, self.dtype) for row in hidden]

    def encode_prompts(
        self, prompt: str, negative_prompt: str = "", view_dependent: bool = True, suffixes: Optional[Mapping[str, str]] = None
    ) -> PromptEmbeddings:
        """Embeddings of ``prompt`` per view ("none", "front", "side", "back", "overhead") and of the negative prompt.

        ``suffixes``: each view's wording (default :attr:`view_suffixes`). Computed once per (prompt,
        negative_prompt, view_dependent, suffixes) and cached.
        """
        return self._prompts.get(prompt, negative_prompt, view_dependent, {**self.view_suffixes, **dict(suffixes or {})})

    # -- noise prediction -------------------------------------------------------------------------
    def _unet_raw(
        self, z: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, class_labels: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The UNet's raw output [N,C,h,w] float32 from one call (fed ``process.model_timestep(t)``; a learned
        variance's second half dropped)."""
        if class_labels is not None:
            class_labels = class_labels.to(self.device, self.dtype)
        timestep = self.process.model_timestep(t)
        out = self.unet_call(z.to(self.dtype), timestep, emb.to(self.dtype), class_labels)
        out = out.to(torch.float32, copy=True)  # a copy: a CUDA-graph output is overwritten by the next replay
        if out.shape[1] == 2 * self.channels:  # learned variance (e.g. DeepFloyd IF): keep the mean part
            out = out[:, : self.channels]
        return out

    @torch.no_grad()
    def predict_raw(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
        negatives: Optional[NegativeViews] = None,
        cameras: Optional[Cameras] = None,
    ) -> torch.Tensor:
        """raw_u + omega (raw_c - raw_u), float32 [B,C,h,w]; cond, uncond (and Perp-Neg's negatives) in ONE UNet call.

        Arguments as :meth:`DiffusionPrior.predict_raw`; ``t`` is [B] or one timestep; the conditioning's rows are
        [B,...] or [1,...] (broadcast). With omega == 1 and no negatives only the conditional pass runs. Text-only
        UNets ignore ``cameras``; multi-view priors turn them into class labels (:meth:`class_labels`).
        """
        return self._guided(z_t, t, conditioning, guidance_scale, negatives, self.class_labels(cameras, int(z_t.shape[0])))

    def class_labels(self, cameras: Optional[Cameras], batch: int) -> Optional[torch.Tensor]:
        """Per-view class labels [B,K] of the UNet (MVDream's camera vectors), or None for text-only UNets."""
        return None

    def _guided(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
        negatives: Optional[NegativeViews],
        class_labels: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """The guided raw output of :meth:`predict_raw` with the UNet's per-view ``class_labels`` [B,K] (or None)."""
        z_t, t = network_inputs(z_t, t, self.channels, self.device)
        batch = int(z_t.shape[0])

        def unet(z: torch.Tensor, times: torch.Tensor, rows: Conditioning) -> torch.Tensor:
            labels = None if class_labels is None else torch.cat([class_labels] * (int(z.shape[0]) // batch))
            return self._unet_raw(z, times, rows.cond, labels)

        return guided_raw(unet, z_t, t, conditioning.to(self.device), guidance_scale, negatives)

    # -- images -----------------------------------------------------------------------------------


# -- latent (Stable Diffusion) --------------------------------------------------------------------
class LatentDiffusionPrior(DiffusersPrior):
    """Stable Diffusion 1.x / 2.x layout: CLIP text encoder, UNet on VAE latents (C=4, 8x downsampling)."""

    space = "latent"

    def networks(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, self.text_encoder]

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, upcast_vae: bool = False, **kwargs: Any):
        super().__init__(folder, device, dtype, **kwargs)
        self.vae_dtype = torch.float32 if upcast_vae else dtype
        vae = load_latent_vae(self.source, self.vae_dtype, self.device, self.compile_decision.mode)
        self.vae, self.scaling_factor, self.shift_factor, self.channels, self.downsample = vae
        if int(self.unet.config.in_channels) != self.channels:
            raise UserError(
                f"the UNet in {self.source} takes {self.unet.config.in_channels} channels but the VAE makes "
                f"{self.channels}: only plain text-to-image pipelines (SD 1.x/2.x layout) are supported"
            )
        sample = self.unet.config.sample_size
        self.resolution = int(sample if isinstance(sample, int) else sample[0]) * self.downsample

    vae_input_format: Optional[torch.memory_format] = torch.contiguous_format
    """Memory format the VAE encoder's input is copied into (None: keep the caller's strides). Renders arrive as a
    permuted [B,H,W,3] tensor (channels-last strides); one layout for every call keeps a compiled encoder on one
    graph, the same one the benchmark's floor measures (scripts/bench_step.py --keep-vae-input-layout)."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> latents [B,4,H/8,W/8] float32: (posterior mean - shift) * scaling; differentiable."""
        self.check_images(images)
        mark_step_begin(self.compile_decision.mode)  # one encode per training step: a new CUDA-graph generation
        layout: dict[str, Any] = {} if self.vae_input_format is None else {"memory_format": self.vae_input_format}
        x = images.to(self.device, self.vae_dtype, **layout)
        return encode_latents(self.vae, x, self.shift_factor, self.scaling_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B,4,h,w] -> images [B,3,8h,8w] float32 in [0,1] (autograd follows the caller)."""
        return decode_latents(self.vae, z.to(self.device, self.vae_dtype), self.shift_factor, self.scaling_factor)


# -- pixel space ----------------------------------------------------------------------------------
class PixelDiffusionPrior(DiffusersPrior):
    """A text-conditioned UNet directly on images (C=3, no VAE); model space is the image in [-1,1]."""

    space = "pixel"
    downsample = 1

    def networks(self) -> list[torch.nn.Module]:
        return [self.unet, self.text_encoder]

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, **kwargs: Any):
        super().__init__(folder, device, dtype, **kwargs)
        self.channels = int(self.unet.config.in_channels)
        if self.channels != 3:
            raise UserError(
                f"the pipeline in {self.source} has no vae/ and its UNet takes {self.channels} channels: a pixel-space "
                "prior needs an RGB (3-channel) UNet"
            )
        sample = self.unet.config.sample_size
        self.resolution = int(sample if isinstance(sample, int) else sample[0])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> [B,3,H,W] in [-1,1] float32 (differentiable)."""
        self.check_images(images)
        return images.to(self.device, torch.float32) * 2.0 - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B,3,h,w] in [-1,1] -> [B,3,h,w] in [0,1]."""
        return ((z.to(self.device, torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0)
