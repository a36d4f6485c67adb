"""The training objectives of the shapes priors: epsilon prediction (VP diffusion) and rectified flow.

    loss = epsilon_loss(unet, x0, t, emb, abar, gen, min_snr_gamma, autocast)       # shapes, shapes-mv
    s = sample_flow_times(x0.shape[0], gen, "logit_normal")
    loss = flow_loss(net, x0, s, emb, gen, autocast)                                 # shapes-flow

Images x0 are [B,3,H,W] in [-1,1]; every random draw comes from the CPU generator ``gen`` (same seed, same batch on any
device). scripts/train_shapes_prior.py (``--objective``) and scripts/train_shapes_mv.py train with them.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

FlowTimes = Literal["logit_normal", "uniform"]


def epsilon_loss(
    unet: Any,
    x0: torch.Tensor,
    t: torch.Tensor,
    emb: torch.Tensor,
    abar: torch.Tensor,
    gen: torch.Generator,
    min_snr_gamma: float,
    autocast: Any,
    class_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The denoising loss: mean over images [B,3,H,W] of |eps_hat(x_t, t) - eps|^2, min-SNR weighted (gamma 0: plain).

    ``t`` [B] timesteps, ``emb`` [B,L,D] text states, ``abar`` the schedule's alpha-bar [T], ``class_labels`` [B,K] for
    UNets with a class embedding (shapes-mv's cameras); the noise comes from ``gen`` (CPU).
    """
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with autocast:
        eps = unet(x_t, t, encoder_hidden_states=emb, class_labels=class_labels).sample.float()
    per = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
    if min_snr_gamma > 0:
        snr = abar[t] / (1 - abar[t])
        per = per * (snr.clamp(max=min_snr_gamma) / snr)
    return per.mean()


def sample_flow_times(n: int, gen: torch.Generator, scheme: FlowTimes = "logit_normal") -> torch.Tensor:
    """``n`` flow times s [n] in (0, 1), float32 on the CPU: sigmoid(N(0, 1)) (logit-normal, Stable Diffusion 3's
    choice: most samples at mid noise, few near s = 0 or 1) or uniform."""
    if scheme == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen))
    if scheme == "uniform":
        return torch.rand(n, generator=gen).clamp(1e-5, 1 - 1e-5)
    raise ValueError(f"unknown flow time scheme {scheme!r}: logit_normal or uniform")


def flow_loss(
    net: Any,
    x0: torch.Tensor,
    s: torch.Tensor,
    emb: torch.Tensor,
    gen: torch.Generator,
    autocast: Any,
    num_train_timesteps: int = 1000,
    class_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The rectified-flow loss: mean over images of |v_hat(x_s, s) - (eps - x0)|^2 at x_s = (1 - s) x0 + s eps.

    ``net`` is a velocity network called like a UNet with the model timestep s * T (a
    :class:`~fsd_gs.prior.vp_flow.VPAsFlow`, or a UNet that predicts v itself); ``s`` [B] flow times in (0, 1)
    (:func:`sample_flow_times`), ``emb`` [B,L,D]; the noise comes from ``gen`` (CPU).
    """
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    s = s.to(x0.device, torch.float32)
    x_s = (1 - s).view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * noise
    with autocast:
        v = net(x_s, s * num_train_timesteps, encoder_hidden_states=emb, class_labels=class_labels).sample.float()
    return ((v - (noise - x0)) ** 2).mean()
