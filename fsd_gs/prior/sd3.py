"""Stable Diffusion 3 / 3.5 as a prior: an MMDiT transformer predicting rectified-flow velocities on 16-channel latents.

    prior = StableDiffusion3Prior(folder, device, dtype, t5="auto")   # a diffusers StableDiffusion3Pipeline folder
    emb = prior.encode_prompts("a red mushroom")
    eps_hat = prior.predict_noise(z_t, t, *emb.select(["front"]), guidance_scale=100.0)   # [B,16,h,w]

The folder's transformer/ (SD3Transformer2DModel), vae/ (AutoencoderKL with shift and scaling factors), scheduler/
(FlowMatchEulerDiscreteScheduler: T and the timestep shift) and text encoders (fsd_gs/prior/sd3_text.py) are read with
diffusers' and transformers' ``from_pretrained``. The transformer's velocity becomes the epsilon every method works
with through fsd_gs/prior/sd3_flow.py, so FSD, SDS (RFDS up to its weighting), NFSD and CSD run unchanged; VSD refuses
(its LoRA copy is of a UNet). docs/sd3.md has the details.

Until the prior contract carries pooled text embeddings (``Conditioning``), the pooled vector [P] rides in the prompt
embedding as extra token rows: cond/uncond are [B, L + k, J] with the last k = ceil(P / J) rows holding pooled, zero
padded (:func:`pack_pooled`). Everything that mixes or stacks embeddings (Perp-Neg, CSD, NFSD) mixes pooled the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.perp_neg import classifier_direction, negative_rows
from fsd_gs.prior.base import VIEW_SUFFIXES, DiffusionPrior, NegativeViews, PromptEmbeddings, view_prompt
from fsd_gs.prior.compile import CompileDecision, compile_module, mark_step_begin, resolve_compile
from fsd_gs.prior.diffusers_prior import (
    _load,
    decode_latents,
    encode_latents,
    load_scheduler_config,
    load_vae,
    vae_factors,
)
from fsd_gs.prior.sd3_flow import FlowSchedule
from fsd_gs.prior.sd3_text import SD3TextEncoders

RESOLUTION = 512
"""Default render size (px). SD3.5-medium trains up to 1024 px; 512 px keeps a step ~4x cheaper (docs/sd3.md)."""


def pack_pooled(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """hidden [N,L,J] and pooled [N,P] -> one embedding [N, L + ceil(P/J), J] (pooled zero-padded into the last rows)."""
    n, _, width = hidden.shape
    rows = math.ceil(pooled.shape[-1] / width)
    padded = torch.nn.functional.pad(pooled, (0, rows * width - pooled.shape[-1]))
    return torch.cat([hidden, padded.view(n, rows, width).to(hidden.dtype)], dim=1)


def unpack_pooled(embedding: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_pooled`: (hidden [N,L,J], pooled [N,P]) of an embedding [N, L + k, J]."""
    rows = math.ceil(pooled_dim / embedding.shape[-1])
    hidden, packed = embedding[:, :-rows], embedding[:, -rows:]
    return hidden, packed.reshape(embedding.shape[0], -1)[:, :pooled_dim]


def load_transformer(folder: Path, dtype: torch.dtype) -> Any:
    """The SD3Transformer2DModel of ``folder``/transformer in ``dtype``, eval mode, frozen (on the CPU)."""
    from diffusers import SD3Transformer2DModel

    model = _load(
        "transformer",
        folder,
        lambda: SD3Transformer2DModel.from_pretrained(
            folder / "transformer", torch_dtype=dtype, use_safetensors=True, local_files_only=True
        ),
    )
    return model.eval().requires_grad_(False)


class StableDiffusion3Prior(DiffusionPrior):
    """Stable Diffusion 3 / 3.5 (MMDiT, rectified flow) behind the epsilon interface of :class:`DiffusionPrior`.

    Attributes beyond :class:`DiffusionPrior`:
        transformer, vae, text: the networks (frozen) and the text side (:class:`SD3TextEncoders`).
        flow: the forward process (:class:`FlowSchedule`); scheduler_config: the pipeline's scheduler config.
        pooled_dim: P, the pooled text embedding's width; source: the folder the weights came from.
    """

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
        self.vae = load_vae(self.source, self.vae_dtype).to(self.device)
        compile_module(self.vae.encoder, self.compile_decision.mode)
        self.scaling_factor, self.shift_factor = vae_factors(self.vae)
        self.channels = int(self.vae.config.latent_channels)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        config = self.transformer.config
        if int(config.in_channels) != self.channels:
            raise UserError(
                f"the transformer in {self.source} takes {config.in_channels} channels but the VAE makes {self.channels}: "
                "the folder is not a Stable Diffusion 3 text-to-image pipeline"
            )
        self.resolution = min(RESOLUTION, int(config.sample_size) * self.downsample)
        self.scheduler_config = load_scheduler_config(self.source)
        self.flow = FlowSchedule(self.scheduler_config)
        self.num_train_timesteps = self.flow.num_train_timesteps
        self.alphas_cumprod = self.flow.alphas_cumprod().to(self.device)
        self.pooled_dim = int(config.pooled_projection_dim)
        use_t5 = t5 == "on"  # auto = off: T5-XXL is 4.7B parameters for a small gain in prompt following
        joint = int(config.joint_attention_dim)
        self.text = SD3TextEncoders(self.source, dtype, self.device, joint, use_t5, offload_text_encoder)
        self._prompt_cache: dict[tuple[str, str, bool, tuple[tuple[str, str], ...]], PromptEmbeddings] = {}

    def networks(self) -> list[torch.nn.Module]:
        return [self.transformer, self.vae, *self.text.modules()]

    # -- text -------------------------------------------------------------------------------------
    def encode_prompts(
        self, prompt: str, negative_prompt: str = "", view_dependent: bool = True, suffixes: Optional[Mapping[str, str]] = None
    ) -> PromptEmbeddings:
        """Embeddings [V, L + k, J] of ``prompt`` per view and [1, L + k, J] of the negative prompt, pooled packed in
        (:func:`pack_pooled`); cached per (prompt, negative prompt, view_dependent, wording)."""
        if not prompt or not prompt.strip():
            raise UserError('the prompt is empty: pass a text prompt such as --prompt "a red mushroom"')
        wording = {**dict(self.view_suffixes), **dict(suffixes or {})}
        key = (prompt, negative_prompt, bool(view_dependent), tuple(sorted(wording.items())))
        if key not in self._prompt_cache:
            views = tuple(VIEW_SUFFIXES) if view_dependent else ("none",)
            hidden, pooled = self.text.embed([view_prompt(prompt, v, wording) for v in views] + [negative_prompt])
            packed = pack_pooled(hidden, pooled)
            self._prompt_cache[key] = PromptEmbeddings(cond=packed[:-1], uncond=packed[-1:], views=views)
        return self._prompt_cache[key]

    # -- noise prediction -------------------------------------------------------------------------
    def _eps(self, z_t: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Unguided eps [N,C,h,w] float32 from ONE transformer call on z_t [N,C,h,w], t [N], packed embeddings [N,L+k,J]."""
        hidden, pooled = unpack_pooled(embedding.to(self.device, self.dtype), self.pooled_dim)
        velocity = self.transformer(
            hidden_states=z_t.to(self.dtype),
            timestep=self.flow.model_timestep(t).to(self.dtype),
            encoder_hidden_states=hidden,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return self.flow.eps_from_velocity(velocity, z_t, t)  # float32, a fresh tensor (safe under CUDA graphs)

    @torch.no_grad()
    def predict_noise(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        negatives: Optional[NegativeViews] = None,
    ) -> torch.Tensor:
        """eps_uncond + omega * direction, float32 [B,C,h,w]; cond, uncond (and Perp-Neg's negatives) in ONE call.

        ``t``: integer timesteps [B] (or a scalar); cond/uncond: packed embeddings [B,L+k,J] or [1,L+k,J]. The
        direction is eps_cond - eps_uncond, or :func:`fsd_gs.perp_neg.classifier_direction`'s with ``negatives``. With
        omega == 1 and no negatives only the conditional pass runs. No gradient flows through the transformer.
        """
        if z_t.dim() != 4 or z_t.shape[1] != self.channels:
            raise ValueError(f"z_t must be [B,{self.channels},h,w], got {tuple(z_t.shape)}")
        batch = z_t.shape[0]
        z_t = z_t.to(self.device)
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(batch)
        cond = cond.to(self.device).expand(batch, -1, -1)
        if guidance_scale == 1.0 and negatives is None:
            return self._eps(z_t, t, cond)
        rows = [cond, uncond.to(self.device).expand(batch, -1, -1), *(e.to(self.device) for e in negative_rows(negatives))]
        k = len(rows)
        eps_cond, eps_uncond, *eps_negatives = self._eps(torch.cat([z_t] * k), torch.cat([t] * k), torch.cat(rows)).chunk(k)
        weights = None if negatives is None else negatives.weights
        return eps_uncond + guidance_scale * classifier_direction(eps_cond, eps_uncond, eps_negatives, weights)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) = (1 - s_t, s_t) of the rectified flow for integer t [B], each [B]."""
        return self.flow.alpha_sigma(t)

    # -- images -----------------------------------------------------------------------------------
    def check_image_size(self, height: int, width: int) -> None:
        """UserError unless ``height`` x ``width`` are positive multiples of 8 x the transformer's patch size (16 px)."""
        multiple = self.downsample * int(self.transformer.config.patch_size)
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise UserError(
                f"image size {height}x{width} does not suit Stable Diffusion 3: height and width must be positive "
                f"multiples of {multiple} (e.g. {self.resolution}x{self.resolution})"
            )

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> latents [B,16,H/8,W/8] float32: (posterior mean - shift) * scale; differentiable."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W] in [0,1], got {tuple(images.shape)}")
        self.check_image_size(int(images.shape[2]), int(images.shape[3]))
        mark_step_begin(self.compile_decision.mode)  # one encode per training step: a new CUDA-graph generation
        x = images.to(self.device, self.vae_dtype, memory_format=torch.contiguous_format)
        return encode_latents(self.vae, x, self.shift_factor, self.scaling_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B,16,h,w] -> images [B,3,8h,8w] float32 in [0,1] (autograd follows the caller)."""
        return decode_latents(self.vae, z.to(self.device, self.vae_dtype), self.shift_factor, self.scaling_factor)
