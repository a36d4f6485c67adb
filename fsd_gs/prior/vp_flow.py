"""An epsilon-prediction diffusion (VP) network read as a rectified-flow velocity network, exactly.

Rectified flow: x_f = (1 - s) z0 + s eps, velocity v = eps - z0. VP diffusion: x = alpha z0 + sigma eps with
alpha^2 + sigma^2 = 1. Dividing each by its clean coefficient gives the same family of "clean + r noise" points,

    x_f / (1 - s) = z0 + s / (1 - s) eps          x / alpha = z0 + sigma / alpha eps,

so the flow point x_f at time s IS the VP point x = x_f / n(s), n(s) = sqrt((1 - s)^2 + s^2), at the VP time whose
ratio sigma/alpha equals r = s / (1 - s) (then alpha = (1 - s) / n, sigma = s / n). The VP network's noise estimate
eps_hat there is the flow's noise estimate, and

    x0_hat = (x_f - s eps_hat) / (1 - s),      v_hat = eps_hat - x0_hat = (eps_hat - x_f) / (1 - s) = (x_f - x0_hat) / s.

The VP time is fractional: t_vp interpolates t linearly in log(sigma/alpha) between the integer steps of the VP
schedule (a sinusoidal time embedding takes any real t). Outside the schedule's range of r (r < sigma/alpha at t=0,
or beyond t = T-1: s > 0.9937 for the shapes prior's linear betas) t_vp is clamped, and the estimate the network is
best at there is kept: eps_hat for small s (the first form of v_hat), x0_hat from the clamped VP step's
(alpha_c, sigma_c) for large s (the second form, which is finite at s = 1). Inside the range both forms are the same
number; :class:`VPAsFlow` takes the first for s <= 1/2 and the second above.

:class:`VPAsFlow` wraps the UNet so it is called like a diffusers UNet (``net(x, timestep, encoder_hidden_states=...)
.sample``) with the flow's inputs (x_f and the model timestep s * T) and returns v_hat: the built-in shapes-flow
prior is this module over a UNet fine-tuned under it with the flow loss (docs/shapes-flow.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

CONVERSION_FILE = "vp_flow.json"
"""The file of a flow prior folder that says its UNet is an epsilon VP network read through :class:`VPAsFlow`."""


@dataclass
class FlowOutput:
    """What :meth:`VPAsFlow.forward` returns, like diffusers' ``UNet2DConditionOutput``: ``sample`` = v_hat [B,C,h,w]."""

    sample: torch.Tensor


def vp_log_ratios(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log(sigma_t / alpha_t) = 0.5 log((1 - abar_t) / abar_t) for t = 0..T-1, float64 [T], increasing."""
    abar = alphas_cumprod.to(torch.float64)
    return 0.5 * (torch.log1p(-abar) - torch.log(abar))


def vp_time(log_ratio: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The fractional VP timestep [B] whose log(sigma/alpha) is ``log_ratio`` [B] (linear between the integer steps
    of ``table`` [T] = :func:`vp_log_ratios`), clamped to [0, T-1]; same dtype as ``log_ratio``."""
    table = table.to(log_ratio.device, log_ratio.dtype)
    x = log_ratio.clamp(table[0], table[-1])
    hi = torch.searchsorted(table, x.contiguous()).clamp(1, table.numel() - 1)
    lo = hi - 1
    frac = (x - table[lo]) / (table[hi] - table[lo])
    return lo.to(x.dtype) + frac


class VPAsFlow(torch.nn.Module):
    """A flow velocity network v(x_f, s) made of an epsilon VP network (module docstring).

    Args:
        unet: a diffusers-style epsilon network: ``unet(x, t, encoder_hidden_states=..., class_labels=...).sample``.
        alphas_cumprod: abar_t of the VP schedule the network was trained with, [T_vp].
        num_train_timesteps: T of the flow process: the model timestep is s * T.
        clip_x0: clamp x0_hat of the high-noise form (s > 1/2) to [-clip_x0, clip_x0], as a DDIM sampler with
            ``clip_sample`` does (the data lie in [-1, 1], so does their posterior mean); None: exact, no clamp.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        alphas_cumprod: torch.Tensor,
        num_train_timesteps: int = 1000,
        clip_x0: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.num_train_timesteps = int(num_train_timesteps)
        self.clip_x0 = clip_x0
        self.log_ratios = vp_log_ratios(alphas_cumprod).cpu()
        """log(sigma/alpha) of the VP steps, float64 [T_vp] (a plain tensor: ``module.to(dtype)`` must not round it)."""
        self.log_ratio_range = (float(self.log_ratios[0]), float(self.log_ratios[-1]))
        self._tables: dict[torch.device, torch.Tensor] = {}
        """``log_ratios`` copied to each device it was used on: the first (eager) call copies it, later calls only read
        it, so a CUDA-graph capture of the call (``--prior.compile graphs``) copies nothing from the host."""

    def log_ratios_on(self, device: torch.device) -> torch.Tensor:
        """:attr:`log_ratios` [T_vp] float64 on ``device`` (copied once per device)."""
        if device not in self._tables:
            self._tables[device] = self.log_ratios.to(device)
        return self._tables[device]

    @property
    def config(self) -> Any:
        """The wrapped UNet's config (in_channels, sample_size, ...), so priors read it as they read a UNet's."""
        return self.unet.config

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> FlowOutput:
        """v_hat [B,C,h,w] at flow points x_f = ``sample`` [B,C,h,w] and model timesteps s * T ``timestep`` [B] (or
        one); the text states [B,L,D] (and class labels [B,K]) go to the UNet unchanged."""
        x_f = sample
        dt = torch.promote_types(x_f.dtype, torch.float32)  # float32, or float64 for float64 inputs
        s = torch.as_tensor(timestep, device=x_f.device).to(dt).reshape(-1).expand(x_f.shape[0])
        s = s / self.num_train_timesteps
        lo, hi = self.log_ratio_range
        log_r = (torch.log(s) - torch.log1p(-s)).clamp(lo, hi)  # s = 0 and s = 1 give -inf / inf: clamped
        t_vp = vp_time(log_r.double(), self.log_ratios_on(x_f.device)).to(dt)
        view = (-1,) + (1,) * (x_f.dim() - 1)
        s, log_r = s.view(view), log_r.view(view)
        norm = torch.sqrt((1 - s) ** 2 + s**2)
        x_f = x_f.to(dt)
        out = self.unet(
            (x_f / norm).to(sample.dtype), t_vp, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels, **kwargs
        )
        eps_hat = out.sample.to(dt)
        alpha_c = torch.rsqrt(1 + torch.exp(2 * log_r))  # the (clamped) VP step's alpha and sigma
        sigma_c = alpha_c * torch.exp(log_r)
        low, one = s <= 0.5, torch.ones_like(s)
        from_eps = (eps_hat - x_f) / torch.where(low, 1 - s, one)  # safe denominators: no NaN gradients
        x0_hat = (x_f / norm - sigma_c * eps_hat) / alpha_c
        if self.clip_x0 is not None:
            x0_hat = x0_hat.clamp(-self.clip_x0, self.clip_x0)
        from_x0 = (x_f - x0_hat) / torch.where(low, one, s)
        return FlowOutput(torch.where(low, from_eps, from_x0))


def conversion_config(vp_scheduler: Mapping[str, Any], clip_x0: Optional[float] = None) -> dict[str, Any]:
    """The content of :data:`CONVERSION_FILE`: what the network is, the VP scheduler config it was trained with and
    the x0 clamp of :class:`VPAsFlow` (None: none)."""
    return {
        "network": "epsilon VP UNet read as a flow velocity (fsd_gs/prior/vp_flow.py)",
        "vp_scheduler": dict(vp_scheduler),
        "clip_x0": clip_x0,
    }


def write_conversion(folder: Path | str, vp_scheduler: Mapping[str, Any], clip_x0: Optional[float] = None) -> None:
    """Write :data:`CONVERSION_FILE` into ``folder``."""
    (Path(folder) / CONVERSION_FILE).write_text(json.dumps(conversion_config(vp_scheduler, clip_x0), indent=2) + "\n")


def read_conversion(folder: Path | str) -> Optional[dict[str, Any]]:
    """The :data:`CONVERSION_FILE` of ``folder``, or None when the folder has none (its UNet predicts v directly)."""
    path = Path(folder) / CONVERSION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def wrap_vp_unet(
    unet: torch.nn.Module, vp_scheduler: Mapping[str, Any], num_train_timesteps: int = 1000, clip_x0: Optional[float] = None
) -> VPAsFlow:
    """:class:`VPAsFlow` over ``unet`` for the VP schedule of the diffusers config ``vp_scheduler``."""
    from fsd_gs.prior.process import VPProcess

    return VPAsFlow(unet, VPProcess.from_config(vp_scheduler).alphas_cumprod, num_train_timesteps, clip_x0)
