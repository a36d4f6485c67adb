"""The one interface every diffusion prior offers to the distillation loss and the training loop.

A prior works in its own "model space": latents (Stable Diffusion: C=4, h=H/8) or pixels
(C=3, h=H). Images enter as [B,3,H,W] in [0,1]; everything else is [B,C,h,w] in model space.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Sequence

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.compile import NOT_COMPILED, CompileDecision

VIEW_SUFFIXES: dict[str, str] = {
    "none": "",
    "front": ", front view",
    "side": ", side view",
    "back": ", back view",
    "overhead": ", overhead view",
}
"""DreamFusion-style view-dependent prompt suffixes, keyed by :func:`fsd_gs.camera.view_direction`: every prior's
default wording, and the wording the built-in shapes prior's captions were trained with (fsd_gs/shapes/captions.py)."""


def view_prompt(prompt: str, view: str, suffixes: Mapping[str, str] = VIEW_SUFFIXES) -> str:
    """``prompt`` with the suffix of ``view`` ("none", "front", "side", "back" or "overhead") in ``suffixes``' wording."""
    return prompt + suffixes[view]


@dataclass
class PromptEmbeddings:
    """Text embeddings of one prompt, per view, and of the negative prompt.

    Attributes:
        cond: conditional embeddings, one row per entry of ``views``, [V,L,D].
        uncond: negative-prompt (or empty-prompt) embeddings, [1,L,D].
        views: the view name of each row of ``cond`` (keys of :data:`VIEW_SUFFIXES`).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    views: tuple[str, ...]

    def select(self, views: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-view (cond [B,L,D], uncond [B,L,D]) for a batch of view names.

        A view missing from ``views`` (view-independent prompting) falls back to "none".
        """
        rows = [self.views.index(v) if v in self.views else self.views.index("none") for v in views]
        index = torch.tensor(rows, device=self.cond.device)
        return self.cond[index], self.uncond.expand(len(rows), -1, -1)


@dataclass
class NegativeViews:
    """Perp-Neg's negative prompts of a batch of B views (fsd_gs/perp_neg.py), predicted in the same prior call.

    Attributes:
        embeddings: the negative prompts' text embeddings, N per view, [N,B,L,D].
        weights: their signed weights w_i in e_pos + sum_i w_i perp(e_i, e_pos), [B,N] (negative: a push away).
    """

    embeddings: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @staticmethod
    def cat(parts: Sequence[NegativeViews]) -> NegativeViews:
        """One batch of the views of ``parts`` (same N), in order."""
        return NegativeViews(torch.cat([p.embeddings for p in parts], dim=1), torch.cat([p.weights for p in parts]))


class DiffusionPrior(ABC):
    """An epsilon-prediction diffusion model with classifier-free guidance.

    Attributes (set by subclasses):
        space: "latent" (VAE between image and model space) or "pixel".
        channels: C of model space.
        downsample: image pixels per model-space pixel (8 for SD, 1 for pixel models).
        resolution: the image size (pixels) the model was trained at.
        num_train_timesteps: T, the number of discrete training timesteps.
        alphas_cumprod: alphabar_t for t = 0..T-1, float32 [T], on ``device``.
        device, dtype: where and in which precision the networks run.
        camera_conditioned: True for multi-view priors whose ``predict_noise`` takes a ``cameras``
            keyword (the views' :class:`~fsd_gs.camera.Cameras`); the loss passes it only to those.
    """

    camera_conditioned: bool = False
    views_per_group: int = 1
    """Views the model denoises together (MVDream: 4); the step samples cameras and timesteps per group."""
    scheduler_config: Optional[dict] = None
    """The model's diffusers scheduler config, for DDIM sampling (fsd_gs.sampling); None: SD's betas."""
    compile_decision: CompileDecision = NOT_COMPILED
    """Whether and how the networks are torch.compiled, and why (fsd_gs/prior/compile.py; set when loaded)."""
    load_seconds: float = 0.0
    """Wall time :func:`fsd_gs.prior.factory.load_prior` took (0 when built directly)."""
    view_suffixes: Mapping[str, str] = VIEW_SUFFIXES
    """The prior's own wording of the view suffixes (what :meth:`encode_prompts` appends unless given others)."""

    space: Literal["latent", "pixel"]
    channels: int
    downsample: int
    resolution: int
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def encode_prompts(
        self, prompt: str, negative_prompt: str = "", view_dependent: bool = True, suffixes: Optional[Mapping[str, str]] = None
    ) -> PromptEmbeddings:
        """Embed ``prompt`` (with every view suffix when ``view_dependent``) and the negative prompt.

        ``suffixes``: the wording of each view's suffix (keys of :data:`VIEW_SUFFIXES`); None: :attr:`view_suffixes`.
        """

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] -> model space [B,C,H/downsample,W/downsample], differentiable.

        Latent priors use the VAE posterior mean times the scaling factor (deterministic);
        pixel priors map to [-1,1].
        """

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space [B,C,h,w] -> images [B,3,h*downsample,w*downsample] in [0,1]."""

    @abstractmethod
    def predict_noise(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        negatives: Optional[NegativeViews] = None,
    ) -> torch.Tensor:
        """Guided noise prediction eps_uncond + omega * (eps_cond - eps_uncond).

        Args:
            z_t: noisy model-space input [B,C,h,w].
            t: integer timesteps [B] in [0, T).
            cond, uncond: text embeddings [B,L,D] (from :meth:`PromptEmbeddings.select`).
            guidance_scale: omega; 1.0 skips the unconditional pass (unless there are negatives).
            negatives: Perp-Neg's negative prompts, predicted in the same network call; the direction
                eps_cond - eps_uncond becomes :func:`fsd_gs.perp_neg.classifier_direction`'s. None: plain CFG.
        Returns:
            eps_hat [B,C,h,w] in float32.
        """

    def networks(self) -> list[torch.nn.Module]:
        """The prior's networks (for parameter counts); priors without modules return an empty list."""
        return []

    def check_image_size(self, height: int, width: int) -> None:
        """UserError unless ``height`` x ``width`` is positive and divisible by ``downsample``."""
        if height <= 0 or width <= 0 or height % self.downsample or width % self.downsample:
            raise UserError(
                f"image size {height}x{width} does not suit this {self.space} prior: height and width must be positive "
                f"multiples of {self.downsample} (e.g. {self.resolution}x{self.resolution})"
            )

    def model_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of model space for an image of ``height`` x ``width`` pixels."""
        return self.channels, height // self.downsample, width // self.downsample

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) = (sqrt(alphabar_t), sqrt(1 - alphabar_t)) for integer t [B], each [B]."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar.sqrt(), (1.0 - abar).sqrt()
