"""What a distillation method is: a :class:`MethodSpec` (its 3D defaults, 2D settings and how to build its
:class:`Guidance`), the guidance's interface, and the two noise predictions every direction is made of.

A method is one module of this package holding its ``Guidance`` subclass and its spec; fsd_gs/methods/registry.py
registers the built-in ones, third-party packages add theirs through the ``fsd_gs.methods`` entry point group
(docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from fsd_gs.noise import NoiseConfig
from fsd_gs.prior.base import DiffusionPrior, NegativeViews, PromptEmbeddings
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.schedule import ScheduleConfig


@dataclass(frozen=True)
class Image2DSettings:
    """One column of the paper's Tab. 3 (App. 0.D.2): the 2D experiment of a method (Adam, linear t)."""

    steps: int
    guidance_scale: float
    lr: Optional[float]
    fresh_noise: bool
    """True: fresh N(0, I) noise every step (SDS and its variants); False: the seed's one fixed noise (FSD)."""


@dataclass(frozen=True)
class MethodSpec:
    """What one method is: its 3D defaults (noise, schedule), its 2D settings and its direction."""

    name: str
    noise: NoiseConfig
    """Default noise of a 3D run (copy with dataclasses.replace before changing it)."""
    schedule: ScheduleConfig
    """Default timestep schedule of a 3D run."""
    image2d: Image2DSettings
    direction: str
    """The residual multiplied by w(t) in the target, as a formula."""
    make: Callable[[DiffusionPrior, PromptEmbeddings, Any, int], Guidance]
    """Builds the run's guidance from (prior, prompt embeddings, :class:`~fsd_gs.methods.options.MethodOptions`, seed)."""
    stateful: bool = False
    """True when the guidance trains something during the run (VSD's LoRA): its state goes into checkpoints."""

    def build(self, prior: DiffusionPrior, embeddings: PromptEmbeddings, options: Any, seed: int = 0) -> Guidance:
        """The :class:`Guidance` of this method for one run (once, at start-up; it may embed prompts).

        Args:
            prior: the diffusion prior.
            embeddings: the run's prompt embeddings (VSD conditions its LoRA on the view-independent row).
            options: the run's validated :class:`~fsd_gs.methods.options.MethodOptions`.
            seed: the run's seed (VSD's generator and LoRA initialisation).
        """
        return self.make(prior, embeddings, options, seed)


# -- noise predictions ----------------------------------------------------------------------------
def predict(
    prior: DiffusionPrior,
    z_t: torch.Tensor,
    t: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    cameras: Any = None,
    negatives: Optional[NegativeViews] = None,
) -> torch.Tensor:
    """The guided eps_hat [B,C,h,w] of :meth:`DiffusionPrior.predict` (priors that do not use ``cameras`` ignore them)."""
    return prior.predict(z_t, t, conditioning, guidance_scale, negatives=negatives, cameras=cameras)


def raw_predictions(
    prior: DiffusionPrior, z_t: torch.Tensor, t: torch.Tensor, parts: Sequence[Conditioning], cameras: Any = None
) -> list[torch.Tensor]:
    """Unguided eps(z_t; c) [B,C,h,w] for the conditional inputs c of each part (B or 1 views), in ONE call.

    For eps(z_t; u) pass ``conditioning.unconditional()``; for Perp-Neg's negatives ``negatives.parts()``.
    """
    batch, k = z_t.shape[0], len(parts)
    joined = Conditioning.cat([p.to(z_t.device).expand(batch) for p in parts])
    if cameras is not None:
        from fsd_gs.camera import Cameras

        cameras = Cameras.cat([cameras] * k)
    eps = predict(prior, z_t.repeat(k, 1, 1, 1), t.repeat(k), joined, 1.0, cameras)
    return list(eps.chunk(k))


# -- the guidances --------------------------------------------------------------------------------
class Guidance:
    """The direction a method distils with; stateless unless :attr:`stateful`.

    Attributes:
        name: the method's name.
        stateful: True when :meth:`update` trains parameters (these go into :meth:`state_dict`).
    """

    name: str = ""
    stateful: bool = False

    def direction(
        self,
        prior: DiffusionPrior,
        z: torch.Tensor,
        z_t: torch.Tensor,
        eps: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
        cameras: Any = None,
        negatives: Optional[NegativeViews] = None,
    ) -> torch.Tensor:
        """The residual [B,C,h,w] multiplied by w(t) in the target (called without gradient).

        Args:
            prior: the diffusion prior.
            z: the clean model-space images [B,C,h,w], detached.
            z_t: alpha_t z + sigma_t eps [B,C,h,w].
            eps: the noise [B,C,h,w].
            t: integer timesteps [B].
            conditioning: the B views' :class:`~fsd_gs.prior.conditioning.Conditioning` (opaque: pass it to
                :func:`predict`, or its parts to :func:`raw_predictions`).
            guidance_scale: omega.
            cameras: the views' cameras (camera-conditioned priors and VSD), or None (2D).
            negatives: Perp-Neg's negative prompts (fsd_gs/perp_neg.py), predicted in the same prior call; they
                change the classifier direction eps(x_t; y) - eps(x_t; u) of every method. None: plain CFG.
        """
        raise NotImplementedError

    def update(self, prior: DiffusionPrior, z: torch.Tensor, cameras: Any = None) -> dict[str, torch.Tensor]:
        """Train on the current clean images z [B,C,h,w] (detached); returns detached scalars to log. No-op here."""
        return {}

    def parameters(self) -> list[torch.Tensor]:
        """The trained parameters (empty for stateless methods)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`update` changes (tensors on the CPU and plain values); {} when stateless."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a stateless guidance accepts only {}."""
        if state:
            raise ValueError(f"the {self.name} guidance has no state, got keys {sorted(state)}")
