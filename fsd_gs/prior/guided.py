"""Classifier-free guidance of a network's raw output with every row in ONE network call, for any prior.

    raw = guided_raw(network, z_t, t, conditioning, guidance_scale, negatives)
        = raw_u + omega * classifier_direction(raw_c, raw_u, raw_negatives, weights)       [B,C,h,w]

``network(z [kB,C,h,w], t [kB], rows: Conditioning of kB views) -> raw [kB,C,h,w]`` evaluates the network once on k
stacked copies of the batch: the conditional rows, the unconditional rows and Perp-Neg's N negatives (k = 2 + N). The
UNet priors (fsd_gs/prior/diffusers_prior.py) and the Stable Diffusion 3 transformer (fsd_gs/prior/sd3.py) differ only
in ``network``. Guidance is linear in the raw output, so guiding eps, v or the flow velocity is the same guidance.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from fsd_gs.perp_neg import classifier_direction
from fsd_gs.prior.base import NegativeViews
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.process import batch_timesteps

Network = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
"""One network call: (z [N,C,h,w], integer t [N], the N rows' Conditioning) -> raw output [N,C,h,w] float32."""


def guided_raw(
    network: Network,
    z_t: torch.Tensor,
    t: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    negatives: Optional[NegativeViews] = None,
) -> torch.Tensor:
    """raw_u + omega (raw_c - raw_u) [B,C,h,w] (Perp-Neg's direction with ``negatives``) from ONE ``network`` call.

    Args:
        network: the prior's network call (:data:`Network`).
        z_t: noisy inputs [B,C,h,w], on the network's device.
        t: integer timesteps [B], on the same device.
        conditioning: the B views' :class:`Conditioning` ([B,...] or [1,...] rows), on the same device.
        guidance_scale: omega; 1.0 without negatives runs the conditional rows alone (B rows, not 2B).
        negatives: Perp-Neg's negative prompts of the B views, or None for plain CFG.
    """
    batch = int(z_t.shape[0])
    if guidance_scale == 1.0 and negatives is None:  # the unconditional rows are not used (nor checked)
        return network(z_t, t, conditioning.conditional().expand(batch))
    conditioning = conditioning.expand(batch)
    parts = [conditioning, conditioning.unconditional(), *([] if negatives is None else negatives.parts())]
    k = len(parts)
    rows = Conditioning.cat([p.to(z_t.device) for p in parts])
    raw_cond, raw_uncond, *raw_negatives = network(torch.cat([z_t] * k), torch.cat([t] * k), rows).chunk(k)
    weights = None if negatives is None else negatives.weights
    return raw_uncond + guidance_scale * classifier_direction(raw_cond, raw_uncond, raw_negatives, weights)


def network_inputs(
    z_t: torch.Tensor, t: torch.Tensor | int, channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t [B,C,h,w], integer t [B]) on ``device``: one timestep is broadcast to the B views; ValueError unless z_t is
    [B,``channels``,h,w]."""
    if z_t.dim() != 4 or z_t.shape[1] != channels:
        raise ValueError(f"z_t must be [B,{channels},h,w], got {tuple(z_t.shape)}")
    batch = int(z_t.shape[0])
    return z_t.to(device), batch_timesteps(t, batch, device)
