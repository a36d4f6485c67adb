"""Stable Diffusion 3 / 3.5 as a prior: an MMDiT transformer predicting rectified-flow velocities on 16-channel latents.

    prior = StableDiffusion3Prior(folder, device, dtype, t5="auto")   # a diffusers StableDiffusion3Pipeline folder
    conditioning = prior.encode_prompts("a red mushroom").select(["front"])     # text [B,333,J] and pooled [B,P]
    v_hat = prior.predict_raw(z_t, t, conditioning, guidance_scale=100.0)       # guided velocity [B,16,h,w]
    eps_hat = prior.predict(z_t, t, conditioning, guidance_scale=100.0)         # process.eps_from(v_hat, z_t, t)

The folder's transformer/ (SD3Transformer2DModel), vae/ (AutoencoderKL with shift and scaling factors), scheduler/
(FlowMatchEulerDiscreteScheduler: T and the timestep shift) and text encoders (fsd_gs/prior/sd3_text.py) are read with
diffusers' and transformers' ``from_pretrained``. The prior's :attr:`process` is the scheduler's
:class:`~fsd_gs.prior.process.FlowProcess`: :meth:`predict_raw` guides the transformer's velocity, ``predict`` turns it
into the epsilon every method works with (``process.eps_from``), so FSD, SDS (RFDS up to its weighting), NFSD and CSD
run unchanged and the sampler is the flow's Euler sampler (fsd_gs/sampling.py); VSD refuses (its LoRA copy is of a
UNet). The pooled text embedding travels in the :class:`~fsd_gs.prior.conditioning.Conditioning`'s pooled fields and
reaches the transformer as ``pooled_projections``. docs/sd3.md has the details.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior, NegativeViews, PromptEmbeddings
from fsd_gs.prior.compile import CompileDecision, compile_module, mark_step_begin, resolve_compile
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.diffusers_prior import (
    decode_latents,
    encode_latents,
    load_frozen,
    load_latent_vae,
    load_scheduler_config,
)
from fsd_gs.prior.guided import guided_raw, network_inputs
from fsd_gs.prior.process import FLOW_SCHEDULER, FlowProcess
from fsd_gs.prior.prompt_cache import PromptCache
from fsd_gs.prior.sd3_text import SD3TextEncoders

if TYPE_CHECKING:
    from fsd_gs.camera import Cameras

RESOLUTION = 512
"""Default render size (px). SD3.5-medium trains up to 1024 px; 512 px keeps a step ~4x cheaper (docs/sd3.md)."""


def load_transformer(folder: Path, dtype: torch.dtype) -> Any:
    """The SD3Transformer2DModel of ``folder``/transformer in ``dtype``, eval mode, frozen (on the CPU)."""
    from diffusers import SD3Transformer2DModel

    return load_frozen("transformer", folder, SD3Transformer2DModel, dtype)


def flow_process(scheduler_config: Mapping[str, Any], folder: Path) -> FlowProcess:
    """The :class:`FlowProcess` of a Stable Diffusion 3 scheduler config; a one-sentence UserError for any other
    scheduler or a flow option fsd_gs does not model."""
    name = scheduler_config.get("_class_name")
    if name != FLOW_SCHEDULER:
        raise UserError(
            f"the Stable Diffusion 3 pipeline in {folder} has a {name} scheduler, not the {FLOW_SCHEDULER} its "
            "transformer was trained with: check scheduler/scheduler_config.json"
        )
    try:
        return FlowProcess.from_config(scheduler_config)
    except UserError as exc:
        raise UserError(f"the Stable Diffusion 3 prior in {folder} cannot be used: {exc}") from exc


class StableDiffusion3Prior(DiffusionPrior):
    """Stable Diffusion 3 / 3.5 (MMDiT, rectified flow) behind the contract of :class:`DiffusionPrior`.

    Attributes beyond :class:`DiffusionPrior`:
        transformer, vae, text: the networks (frozen) and the text side (:class:`SD3TextEncoders`).
        process: the scheduler's :class:`FlowProcess`; scheduler_config: the pipeline's scheduler config.
        pooled_dim: P, the pooled text embedding's width; source: the folder the weights came from.
    """

    process: FlowProcess

    space = "latent"
    preset_family = "sd35"
    """The presets this prior runs with by default (fsd-sd35, sds-sd35)."""
    default_negative_prompt = ""

    def __init__(
        self,
        folder: Path,
        device: torch.device,
        dtype: torch.dtype,
        t5: str = "auto",
        upcast_vae: bool = False,
        offload_text_encoder: bool = True,
        compile: CompileDecision | str = "off",
    ) -> None:
        self.source = Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype
        self.transformer = load_transformer(self.source, dtype).to(self.device)
        self.compile_decision = compile if isinstance(compile, CompileDecision) else resolve_compile(compile, self.device)
        compile_module(self.transformer, self.compile_decision.mode)
        self.vae_dtype = torch.float32 if upcast_vae else dtype
        vae = load_latent_vae(self.source, self.vae_dtype, self.device, self.compile_decision.mode)
        self.vae, self.scaling_factor, self.shift_factor, self.channels, self.downsample = vae
        config = self.transformer.config
        if int(config.in_channels) != self.channels:
            raise UserError(
                f"the transformer in {self.source} takes {config.in_channels} channels but the VAE makes {self.channels}: "
                "the folder is not a Stable Diffusion 3 text-to-image pipeline"
            )
        self.resolution = min(RESOLUTION, int(config.sample_size) * self.downsample)
        self.scheduler_config = load_scheduler_config(self.source)
        self.process = flow_process(self.scheduler_config, self.source)
        self.num_train_timesteps = self.process.num_train_timesteps
        self.pooled_dim = int(config.pooled_projection_dim)
        use_t5 = t5 == "on"  # auto = off: T5-XXL is 4.7B parameters for a small gain in prompt following
        joint = int(config.joint_attention_dim)
        self.text = SD3TextEncoders(self.source, dtype, self.device, joint, use_t5, offload_text_encoder)
        self._prompts = PromptCache(self.text.embed)

    def networks(self) -> list[torch.nn.Module]:
        return [self.transformer, self.vae, *self.text.modules()]

    # -- text -------------------------------------------------------------------------------------
    def encode_prompts(
        self, prompt: str, negative_prompt: str = "", view_dependent: bool = True, suffixes: Optional[Mapping[str, str]] = None
    ) -> PromptEmbeddings:
        """Embeddings of ``prompt`` per view, text [V,L,J] and pooled [V,P], and of the negative prompt ([1,L,J], [1,P]);
        cached per (prompt, negative prompt, view_dependent, wording)."""
        return self._prompts.get(prompt, negative_prompt, view_dependent, {**self.view_suffixes, **dict(suffixes or {})})

    # -- prediction -------------------------------------------------------------------------------
    def _velocity(self, z: torch.Tensor, t: torch.Tensor, rows: Conditioning) -> torch.Tensor:
        """The transformer's velocity [N,C,h,w] float32 from ONE call on z [N,C,h,w], integer t [N] and the N rows'
        conditional text [N,L,J] and pooled [N,P] embeddings (fed ``process.model_timestep(t)`` = s_t T in float32)."""
        hidden, pooled = rows.conditional_rows()
        if pooled is None:
            raise ValueError(
                "Stable Diffusion 3 needs pooled text embeddings: pass the Conditioning of its encode_prompts(...).select(...)"
            )
        velocity = self.transformer(
            hidden_states=z.to(self.dtype),
            timestep=self.process.model_timestep(t),
            encoder_hidden_states=hidden.to(self.device, self.dtype),
            pooled_projections=pooled.to(self.device, self.dtype),
            return_dict=False,
        )[0]
        return velocity.to(torch.float32, copy=True)  # a copy: a CUDA-graph output is overwritten by the next replay

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
        """The guided velocity v_u + omega (v_c - v_u), float32 [B,C,h,w]; cond, uncond (and Perp-Neg's negatives, their
        direction :func:`fsd_gs.perp_neg.classifier_direction`'s) in ONE transformer call.

        Arguments as :meth:`DiffusionPrior.predict_raw`: ``t`` integer timesteps [B] (or one), ``conditioning`` with
        pooled embeddings ([B,...] or [1,...] rows). With omega == 1 and no negatives only the conditional pass runs.
        ``cameras`` are ignored. ``predict`` turns the velocity into eps with ``process.eps_from``.
        """
        z_t, t = network_inputs(z_t, t, self.channels, self.device)
        return guided_raw(self._velocity, z_t, t, conditioning.to(self.device), guidance_scale, negatives)

    # -- images -----------------------------------------------------------------------------------
    def check_image_size(self, height: int, width: int) -> None:
        """UserError unless ``height`` x ``width`` are positive multiples of 8 x the transformer's patch size (16 px) and
        within its positional table (pos_embed_max_size patches a side: 6144 px for SD3.5-medium)."""
        config = self.transformer.config
        multiple = self.downsample * int(config.patch_size)
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise UserError(
                f"image size {height}x{width} does not suit Stable Diffusion 3: height and width must be positive "
                f"multiples of {multiple} (e.g. {self.resolution}x{self.resolution})"
            )
        largest = multiple * int(getattr(config, "pos_embed_max_size", None) or 0)
        if largest and max(height, width) > largest:
            raise UserError(
                f"image size {height}x{width} is larger than this Stable Diffusion 3 transformer's positional table "
                f"allows ({largest}x{largest} px): render smaller images, e.g. {self.resolution}x{self.resolution}"
            )

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> latents [B,16,H/8,W/8] float32: (posterior mean - shift) * scale; differentiable."""
        self.check_images(images)
        mark_step_begin(self.compile_decision.mode)  # one encode per training step: a new CUDA-graph generation
        x = images.to(self.device, self.vae_dtype, memory_format=torch.contiguous_format)
        return encode_latents(self.vae, x, self.shift_factor, self.scaling_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B,16,h,w] -> images [B,3,8h,8w] float32 in [0,1] (autograd follows the caller)."""
        return decode_latents(self.vae, z.to(self.device, self.vae_dtype), self.shift_factor, self.scaling_factor)
