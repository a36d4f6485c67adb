"""The rectified-flow forward process of Stable Diffusion 3, in the prior's integer timesteps.

    x_t = (1 - s_t) z0 + s_t eps          velocity v = eps - z0 (what the transformer predicts)
    eps = x_t + (1 - s_t) v               z0 = x_t - s_t v

s_t is the training sigma of diffusers' ``FlowMatchEulerDiscreteScheduler`` (its timestep shift included): integer
t in [0, T) is the scheduler's table read from the clean end, s_t = shift u / (1 + (shift - 1) u) with u = (t + 1) / T,
and the transformer is fed the scheduler's timestep s_t T. So (alpha_t, sigma_t) = (1 - s_t, s_t): the distillation
loss (fsd_gs/distill.py) sees the same x_t = alpha z + sigma eps it sees for Stable Diffusion 1/2, and w = sigma/alpha
is again the exact DDIM (= Euler) step in z0 (docs/sd3.md).

The project's prior contract is getting a ``ForwardProcess`` of its own (``fsd_gs/prior/process.py``, kind "flow"); this
module is what the Stable Diffusion 3 prior uses until then.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from fsd_gs.prior.loading import quiet_hf


class FlowSchedule:
    """s_t for t = 0..T-1 from a FlowMatchEulerDiscreteScheduler config, and the conversions the prior needs.

    Attributes:
        num_train_timesteps: T.
        sigmas: s_t, float32 [T], increasing from ~1/T (shifted) to 1.
    """

    def __init__(self, scheduler_config: dict[str, Any]) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        with quiet_hf():  # from_config is typed as a union with its (model, unused kwargs) form
            scheduler = cast(FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler.from_config(scheduler_config))
        self.num_train_timesteps = int(scheduler.config["num_train_timesteps"])
        table = torch.as_tensor(scheduler.sigmas, dtype=torch.float32)  # descending: the scheduler's sampling order
        self.sigmas = table[: self.num_train_timesteps].flip(0).contiguous()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """s_t [B] (float32, on ``t``'s device) for integer timesteps ``t`` [B]."""
        return self.sigmas.to(t.device)[t.long()]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) = (1 - s_t, s_t), each [B]."""
        s = self.sigma(t)
        return 1.0 - s, s

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """What the transformer is fed for integer ``t`` [B]: the scheduler's timestep s_t T, float32 [B]."""
        return self.sigma(t) * self.num_train_timesteps

    def eps_from_velocity(self, velocity: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps [B,C,h,w] = x_t + (1 - s_t) v from the velocity and x_t [B,C,h,w] (float32)."""
        alpha = (1.0 - self.sigma(t)).to(z_t.device).view(-1, 1, 1, 1)
        return z_t.float() + alpha * velocity.float()

    def alphas_cumprod(self) -> torch.Tensor:
        """The variance-preserving process this flow rescales: alphabar_t = a^2 / (a^2 + s^2) [T] (same signal-to-noise)."""
        a, s = 1.0 - self.sigmas, self.sigmas
        return a * a / (a * a + s * s)
