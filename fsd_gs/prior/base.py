"""The one interface every diffusion prior offers to the distillation loss and the training loop.

A prior works in its own "model space": latents (Stable Diffusion: C=4, h=H/8) or pixels
(C=3, h=H). Images enter as [B,3,H,W] in [0,1]; everything else is [B,C,h,w] in model space.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, Optional, Sequence

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.compile import NOT_COMPILED, CompileDecision
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.process import ForwardProcess, batch_timesteps

if TYPE_CHECKING:
    from fsd_gs.camera import Cameras

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
        pooled_cond: pooled conditional embeddings [V,P] for priors that have them (SD3), else None.
        pooled_uncond: pooled negative-prompt embeddings [1,P], else None.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    views: tuple[str, ...]
    pooled_cond: Optional[torch.Tensor] = None
    pooled_uncond: Optional[torch.Tensor] = None

    def rows(self, views: Sequence[str]) -> torch.Tensor:
        """The rows [B] (long) of ``cond`` for a batch of view names; a view missing from ``views`` (view-independent
        prompting) falls back to "none"."""
        rows = [self.views.index(v) if v in self.views else self.views.index("none") for v in views]
        return torch.tensor(rows).to(self.cond.device, non_blocking=True)  # a list straight to CUDA would wait for the queue

    def table(self) -> Conditioning:
        """Every view's row as one :class:`Conditioning` of V views (the unconditional row shared)."""
        return Conditioning(self.cond, self.uncond, self.pooled_cond, self.pooled_uncond)

    def select(self, views: Sequence[str]) -> Conditioning:
        """The :class:`Conditioning` of a batch of B view names: cond [B,L,D], uncond [B,L,D] (and pooled [B,P])."""
        return self.table().index(self.rows(views))


@dataclass
class NegativeViews:
    """Perp-Neg's negative prompts of a batch of B views (fsd_gs/perp_neg.py), predicted in the same prior call.

    Attributes:
        embeddings: the negative prompts' text embeddings, N per view, [N,B,L,D].
        weights: their signed weights w_i in e_pos + sum_i w_i perp(e_i, e_pos), [B,N] (negative: a push away).
        pooled: their pooled embeddings [N,B,P] for priors that have them (SD3), else None.
    """

    embeddings: torch.Tensor
    weights: torch.Tensor
    pooled: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def parts(self) -> list[Conditioning]:
        """The N negatives, each as a :class:`Conditioning` of the B views whose conditional inputs are the negative
        prompt (for unguided predictions eps(x_t; neg_i) in one batched call with others)."""
        pooled = [None] * len(self) if self.pooled is None else list(self.pooled.unbind(0))
        return [Conditioning(e, e, p, p) for e, p in zip(self.embeddings.unbind(0), pooled)]

    @staticmethod
    def cat(parts: Sequence[NegativeViews]) -> NegativeViews:
        """One batch of the views of ``parts`` (same N), in order."""
        pooled = [p.pooled for p in parts if p.pooled is not None]
        pooled = torch.cat(pooled, dim=1) if len(pooled) == len(parts) else None
        return NegativeViews(torch.cat([p.embeddings for p in parts], dim=1), torch.cat([p.weights for p in parts]), pooled)


NFSD_NEGATIVE_PROMPT = "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
"""NFSD's negative prompt for Stable Diffusion (Katzir et al., "Noise-Free Score Distillation", sec. 4): the
default :attr:`DiffusionPrior.default_negative_prompt` of open-vocabulary priors."""


class DiffusionPrior(ABC):
    """A text-conditioned diffusion (or flow) model with classifier-free guidance, behind one contract.

    The prior owns its forward process (:attr:`process`: alpha_t, sigma_t, what the network predicts and is fed),
    its conditioning (:meth:`encode_prompts` -> :class:`PromptEmbeddings` -> :class:`Conditioning`) and its sampler
    (fsd_gs/sampling.py dispatches on ``process.kind``). Callers never branch on the kind of prior.

    Attributes (set by subclasses):
        space: "latent" (VAE between image and model space) or "pixel".
        channels: C of model space.
        downsample: image pixels per model-space pixel (8 for SD, 1 for pixel models).
        resolution: the image size (pixels) the model was trained at.
        num_train_timesteps: T, the number of discrete training timesteps (= ``process.num_train_timesteps``).
        process: the :class:`~fsd_gs.prior.process.ForwardProcess` (VP diffusion or rectified flow).
        device, dtype: where and in which precision the networks run.
    """

    views_per_group: int = 1
    """Views the model denoises together (MVDream: 4); the step samples cameras and timesteps per group."""
    camera_conditioned: bool = False
    """True for multi-view priors that read the ``cameras`` of :meth:`predict` (the others ignore them). Nobody needs
    it to call the prior; VSD reads it to refuse priors whose UNet already takes its class labels."""
    default_negative_prompt: str = NFSD_NEGATIVE_PROMPT
    """NFSD's negative prompt for this model (fsd_gs/methods/noise_free.py): "" for the shapes world's priors."""
    preset_family: str = "sd21"
    """The family of the model's shipped presets (config.default_preset): "sd21", "shapes", "shapes-mv", "mvdream", ..."""
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
    process: ForwardProcess
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
    def predict_raw(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
        negatives: Optional[NegativeViews] = None,
        cameras: Optional[Cameras] = None,
    ) -> torch.Tensor:
        """The guided raw network output raw_u + omega (raw_c - raw_u), float32 [B,C,h,w], no gradient.

        "Raw" is what the network predicts (``process.prediction``: eps, v or the flow velocity); guidance is linear
        in it, so :meth:`predict` converts after guiding. Samplers that step on the raw output (the flow's Euler
        sampler) use it directly: at s = 1 a flow's eps estimate carries no information about the velocity.

        Args:
            z_t: noisy model-space input [B,C,h,w].
            t: integer timesteps [B] (or one) in [0, T); the network is fed ``process.model_timestep(t)``.
            conditioning: the B views' :class:`Conditioning` (from :meth:`PromptEmbeddings.select`).
            guidance_scale: omega; 1.0 skips the unconditional pass (unless there are negatives).
            negatives: Perp-Neg's negative prompts, predicted in the same network call; the direction
                raw_c - raw_u becomes :func:`fsd_gs.perp_neg.classifier_direction`'s. None: plain CFG.
            cameras: the views' cameras; read by camera-conditioned (multi-view) priors, ignored by the others.
        """

    def predict(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
        negatives: Optional[NegativeViews] = None,
        cameras: Optional[Cameras] = None,
    ) -> torch.Tensor:
        """Guided noise prediction eps_hat = eps_u + omega (eps_c - eps_u), float32 [B,C,h,w] (no gradient).

        The one prediction every method distils with; arguments as :meth:`predict_raw`, whose output
        ``process.eps_from`` turns into eps (the identity for epsilon models).
        """
        raw = self.predict_raw(z_t, t, conditioning, guidance_scale, negatives, cameras)
        return self.process.eps_from(raw, z_t.to(raw.device), batch_timesteps(t, int(raw.shape[0]), raw.device))

    def predict_noise(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        negatives: Optional[NegativeViews] = None,
        cameras: Optional[Cameras] = None,
    ) -> torch.Tensor:
        """:meth:`predict` with the conditioning given as text embeddings cond, uncond [B,L,D] (or [1,L,D]): a
        shorthand for scripts and tests of priors without pooled embeddings."""
        return self.predict(z_t, t, Conditioning(cond, uncond), guidance_scale, negatives, cameras)

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

    def check_images(self, images: torch.Tensor) -> None:
        """ValueError unless ``images`` is [B,3,H,W]; then :meth:`check_image_size` of its H x W."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W] in [0,1], got {tuple(images.shape)}")
        self.check_image_size(int(images.shape[2]), int(images.shape[3]))

    def model_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of model space for an image of ``height`` x ``width`` pixels."""
        return self.channels, height // self.downsample, width // self.downsample

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t [B], sigma_t [B]) of x_t = alpha_t z0 + sigma_t eps for integer t [B]: ``process.alpha_sigma``."""
        return self.process.alpha_sigma(t)
