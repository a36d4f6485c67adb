"""The score-distillation loss shared by every method (docs/fsd.md sec. 1, 2 and 5; docs/methods.md).

SDS and FSD differ only in the noise eps and the timestep t the caller passes (fresh noise and random t,
or the world-map noise and an annealed t); the loss is the same:

    z        = encode(images)                                   (differentiable, through the VAE for latent priors)
    z_t      = alpha_t z + sigma_t eps
    eps_hat  = guided noise prediction at z_t                   (no gradient)
    target   = stopgrad(z - w(t) (eps_hat - eps))
    loss     = 0.5 sum((z - target)^2) / B                      so d loss / d z = w(t) (eps_hat - eps) / B

The other methods (NFSD, CSD, VSD; fsd_gs/methods.py) replace the residual eps_hat - eps by their own
direction through a :class:`~fsd_gs.methods.Guidance`; without one, the residual is eps_hat - eps.
:func:`distill_loss_z` is the same loss on a model-space z (the 2D experiments optimise z directly);
:func:`distill_loss` encodes rendered images first and can add HiFA's image-space term.

With w(t) = sigma_t / alpha_t, one gradient-descent step on z of size B (w_t - w_s) / w_t is exactly the
DDIM (eta = 0) step from t to s written for the "clean image" variable z (docs/fsd.md sec. 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.methods import Guidance, ScoreGuidance, predict
from fsd_gs.prior.base import DiffusionPrior, NegativeViews
from fsd_gs.prior.conditioning import Conditioning

Weighting = Literal["sigma_over_alpha", "sigma2", "one"]
WEIGHTINGS: tuple[str, ...] = ("sigma_over_alpha", "sigma2", "one")


@dataclass
class DistillOutput:
    """The loss of one step and what to log or show about it.

    Attributes:
        loss: scalar to call backward on (distillation loss plus the optional HiFA image loss).
        aux: detached tensors: "t" [B] timesteps, "w" [B] weights w(t), "grad_norm" [B] the norm of the
            residual (eps_hat - eps for SDS/FSD) per view, "loss_distill" and "loss_image" scalars, plus what a
            stateful guidance's update logs ("loss_lora" for VSD); with ``return_predictions`` also "eps_hat"
            [B,C,h,w] (eps + residual: the prediction the direction stands for) and "z0_hat" [B,C,h,w]
            (the one-step clean estimate (z_t - sigma_t eps_hat) / alpha_t).
    """

    loss: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


def weight(alpha: torch.Tensor, sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) [B] from alpha_t, sigma_t [B]: sigma/alpha (the exact DDIM step), sigma^2 (DreamFusion) or 1."""
    if weighting == "sigma_over_alpha":
        return sigma / alpha
    if weighting == "sigma2":
        return sigma * sigma
    if weighting == "one":
        return torch.ones_like(alpha)
    raise UserError(f"--guidance.weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")


def distill_loss(
    prior: DiffusionPrior,
    images: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    weighting: Weighting = "sigma_over_alpha",
    hifa_lambda: float = 0.0,
    return_predictions: bool = False,
    cameras: Any = None,
    guidance: Optional[Guidance] = None,
    negatives: Optional[NegativeViews] = None,
) -> DistillOutput:
    """Score-distillation loss of rendered ``images`` under ``prior``.

    Args:
        prior: the diffusion model (any :class:`~fsd_gs.prior.base.DiffusionPrior`).
        images: renders [B,3,H,W] in [0,1], part of the autograd graph.
        eps: the noise [B,C,h,w] in model space (FSD: deterministic per camera; SDS: fresh).
        t: integer timesteps [B].
        conditioning: the views' :class:`~fsd_gs.prior.conditioning.Conditioning` (:meth:`PromptEmbeddings.select`).
        guidance_scale: CFG scale omega.
        weighting: w(t), see :func:`weight`.
        hifa_lambda: weight of HiFA's image-space loss lambda ||x - stopgrad(decode(z0_hat))||^2 / B with z0_hat
            from the conditional-only prediction (docs/fsd.md sec. 5); 0 turns it off (no extra UNet call).
        return_predictions: also put the detached eps_hat and z0_hat in ``aux``.
        cameras: the views' :class:`~fsd_gs.camera.Cameras`, passed on to the prior (multi-view priors read them,
            the others ignore them) and to the guidance.
        guidance: the method's direction (:func:`fsd_gs.methods.make_guidance`); None: eps_hat - eps (SDS/FSD).
            A stateful guidance (VSD) also takes its training step on the detached z here, after the direction.
        negatives: Perp-Neg's negative prompts of the B views (:func:`fsd_gs.perp_neg.select`): every method's
            classifier direction becomes Perp-Neg's, predicted in the same prior call. None: plain CFG.
    Returns:
        :class:`DistillOutput`; d loss / d z = w(t) residual / B (plus the image term).
    """
    z = prior.encode_images(images)
    out, (z_t, alpha, sigma, t, eps_hat) = _distill(
        prior, z, eps, t, conditioning, guidance_scale, weighting, return_predictions, cameras, guidance, negatives
    )
    if hifa_lambda > 0.0:
        with torch.no_grad():
            reuse = guidance_scale == 1.0 and negatives is None and (guidance is None or isinstance(guidance, ScoreGuidance))
            eps_cond = eps_hat if reuse else predict(prior, z_t, t, conditioning, 1.0, cameras).to(z.dtype)
            z0_cond = (z_t - sigma * eps_cond) / alpha
            x_hat = prior.decode(z0_cond).to(images.dtype)
        loss_image = hifa_lambda * ((images - x_hat) ** 2).sum() / images.shape[0]
        out.loss = out.loss + loss_image
        out.aux["loss_image"] = loss_image.detach()
    return out


def distill_loss_z(
    prior: DiffusionPrior,
    z: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    weighting: Weighting = "sigma_over_alpha",
    return_predictions: bool = False,
    cameras: Any = None,
    guidance: Optional[Guidance] = None,
    negatives: Optional[NegativeViews] = None,
) -> DistillOutput:
    """The same loss on model-space images ``z`` [B,C,h,w] (part of the autograd graph), e.g. a 2D experiment's z.

    Arguments as :func:`distill_loss` (no HiFA term: that one needs images). d loss / d z = w(t) residual / B.
    """
    out, _ = _distill(prior, z, eps, t, conditioning, guidance_scale, weighting, return_predictions, cameras, guidance, negatives)
    return out


def _distill(prior, z, eps, t, conditioning, guidance_scale, weighting, return_predictions, cameras, guidance, negatives=None):
    """The shared core: (DistillOutput, (z_t, alpha, sigma, t, eps_hat)) with alpha, sigma [B,1,1,1]."""
    if weighting not in WEIGHTINGS:
        weight(t, t, weighting)  # raises the UserError
    batch = z.shape[0]
    if eps.shape != z.shape:
        raise ValueError(f"eps must have the model-space shape {tuple(z.shape)} of the images, got {tuple(eps.shape)}")
    t = torch.as_tensor(t, device=z.device).long().reshape(-1)
    if t.numel() == 1 and batch > 1:
        t = t.expand(batch)
    alpha, sigma = prior.process.alpha_sigma(t)
    alpha = alpha.to(z.device, z.dtype).view(-1, 1, 1, 1)
    sigma = sigma.to(z.device, z.dtype).view(-1, 1, 1, 1)
    eps = eps.to(z.device, z.dtype)
    w = weight(alpha, sigma, weighting)
    guidance = guidance if guidance is not None else _SCORE

    with torch.no_grad():
        z_detached = z.detach()
        z_t = alpha * z_detached + sigma * eps
        extra = {} if negatives is None else {"negatives": negatives}  # guidances written before Perp-Neg still work
        residual = guidance.direction(prior, z_detached, z_t, eps, t, conditioning, guidance_scale, cameras, **extra)
        target = z_detached - w * residual
    loss_distill = 0.5 * ((z - target) ** 2).sum() / batch
    aux: dict[str, torch.Tensor] = {
        "t": t.detach(),
        "w": w.detach().view(-1),
        "grad_norm": residual.flatten(1).norm(dim=1),
        "loss_distill": loss_distill.detach(),
        "loss_image": torch.zeros((), device=z.device, dtype=z.dtype),
    }
    if guidance.stateful:
        aux.update(guidance.update(prior, z_detached, cameras))
    eps_hat = eps + residual
    if return_predictions:
        aux["eps_hat"] = eps_hat
        aux["z0_hat"] = (z_t - sigma * eps_hat) / alpha
    return DistillOutput(loss=loss_distill, aux=aux), (z_t, alpha, sigma, t, eps_hat)


_SCORE = ScoreGuidance("fsd")
"""The residual eps_hat - eps of SDS and FSD, used when no guidance is given."""
