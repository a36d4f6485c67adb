"""The score-distillation loss shared by SDS and FSD (docs/fsd.md sec. 1, 2 and 5).

SDS and FSD differ only in the noise eps and the timestep t the caller passes (fresh noise and random t,
or the world-map noise and an annealed t); the loss is the same:

    z        = encode(images)                                   (differentiable, through the VAE for latent priors)
    z_t      = alpha_t z + sigma_t eps
    eps_hat  = guided noise prediction at z_t                   (no gradient)
    target   = stopgrad(z - w(t) (eps_hat - eps))
    loss     = 0.5 sum((z - target)^2) / B                      so d loss / d z = w(t) (eps_hat - eps) / B

With w(t) = sigma_t / alpha_t, one gradient-descent step on z of size B (w_t - w_s) / w_t is exactly the
DDIM (eta = 0) step from t to s written for the "clean image" variable z (docs/fsd.md sec. 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior

Weighting = Literal["sigma_over_alpha", "sigma2", "one"]
WEIGHTINGS: tuple[str, ...] = ("sigma_over_alpha", "sigma2", "one")


@dataclass
class DistillOutput:
    """The loss of one step and what to log or show about it.

    Attributes:
        loss: scalar to call backward on (distillation loss plus the optional HiFA image loss).
        aux: detached tensors: "t" [B] timesteps, "w" [B] weights w(t), "grad_norm" [B] the norm of
            (eps_hat - eps) per view, "loss_distill" and "loss_image" scalars; with ``return_predictions``
            also "eps_hat" [B,C,h,w] and "z0_hat" [B,C,h,w] (the one-step clean estimate).
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
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    weighting: Weighting = "sigma_over_alpha",
    hifa_lambda: float = 0.0,
    return_predictions: bool = False,
    cameras: Any = None,
) -> DistillOutput:
    """SDS / FSD loss of rendered ``images`` under ``prior``.

    Args:
        prior: the diffusion model (any :class:`~fsd_gs.prior.base.DiffusionPrior`).
        images: renders [B,3,H,W] in [0,1], part of the autograd graph.
        eps: the noise [B,C,h,w] in model space (FSD: deterministic per camera; SDS: fresh).
        t: integer timesteps [B].
        cond, uncond: text embeddings [B,L,D] (or [1,L,D]).
        guidance_scale: CFG scale omega.
        weighting: w(t), see :func:`weight`.
        hifa_lambda: weight of HiFA's image-space loss lambda ||x - stopgrad(decode(z0_hat))||^2 / B with z0_hat
            from the conditional-only prediction (docs/fsd.md sec. 5); 0 turns it off (no extra UNet call).
        return_predictions: also put the detached eps_hat and z0_hat in ``aux``.
        cameras: the views' :class:`~fsd_gs.camera.Cameras`, passed on to priors whose
            ``camera_conditioned`` is True (multi-view priors); ignored by the others.
    Returns:
        :class:`DistillOutput`; d loss / d z = w(t) (eps_hat - eps) / B (plus the image term).
    """
    if weighting not in WEIGHTINGS:
        weight(t, t, weighting)  # raises the UserError
    batch = images.shape[0]
    z = prior.encode_images(images)
    if eps.shape != z.shape:
        raise ValueError(f"eps must have the model-space shape {tuple(z.shape)} of the images, got {tuple(eps.shape)}")
    t = torch.as_tensor(t, device=z.device).long().reshape(-1)
    if t.numel() == 1 and batch > 1:
        t = t.expand(batch)
    alpha, sigma = prior.alpha_sigma(t)
    alpha = alpha.to(z.device, z.dtype).view(-1, 1, 1, 1)
    sigma = sigma.to(z.device, z.dtype).view(-1, 1, 1, 1)
    eps = eps.to(z.device, z.dtype)
    w = weight(alpha, sigma, weighting)

    with torch.no_grad():
        z_t = alpha * z.detach() + sigma * eps
        eps_hat = _predict(prior, z_t, t, cond, uncond, guidance_scale, cameras).to(z.dtype)
        residual = eps_hat - eps
        target = z.detach() - w * residual
    loss_distill = 0.5 * ((z - target) ** 2).sum() / batch
    loss = loss_distill

    aux: dict[str, torch.Tensor] = {
        "t": t.detach(),
        "w": w.detach().view(-1),
        "grad_norm": residual.flatten(1).norm(dim=1),
        "loss_distill": loss_distill.detach(),
    }
    if hifa_lambda > 0.0:
        with torch.no_grad():
            eps_cond = eps_hat if guidance_scale == 1.0 else _predict(prior, z_t, t, cond, uncond, 1.0, cameras).to(z.dtype)
            z0_cond = (z_t - sigma * eps_cond) / alpha
            x_hat = prior.decode(z0_cond).to(images.dtype)
        loss_image = hifa_lambda * ((images - x_hat) ** 2).sum() / batch
        loss = loss + loss_image
        aux["loss_image"] = loss_image.detach()
    else:
        aux["loss_image"] = torch.zeros((), device=z.device, dtype=z.dtype)
    if return_predictions:
        aux["eps_hat"] = eps_hat
        aux["z0_hat"] = (z_t - sigma * eps_hat) / alpha
    return DistillOutput(loss=loss, aux=aux)


def _predict(prior: DiffusionPrior, z_t, t, cond, uncond, guidance_scale: float, cameras: Any) -> torch.Tensor:
    """prior.predict_noise, with ``cameras`` for camera-conditioned priors only."""
    if prior.camera_conditioned:
        return prior.predict_noise(z_t, t, cond, uncond, guidance_scale, cameras=cameras)
    return prior.predict_noise(z_t, t, cond, uncond, guidance_scale)
