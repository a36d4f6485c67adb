"""The forward process of a diffusion prior: how clean z0 and noise eps make x_t, and what the network outputs.

Diffusers keeps this knowledge in the scheduler alone; so do we. Every :class:`~fsd_gs.prior.base.DiffusionPrior`
has one ``process``, and nothing outside fsd_gs/prior/ reads alphas_cumprod, sigmas or the prediction type::

    x_t = alpha_t z0 + sigma_t eps                                   alpha_sigma(t), add_noise(z0, eps, t)
    raw = network(x_t, model_timestep(t), ...)                       what the network is fed and returns
    eps_hat, x0_hat, v_hat = eps_from(raw, ...), x0_from(raw, ...), velocity_from(raw, ...)

Two families, both with integer timesteps t [B] in [0, T) (FSD's schedules and the training step produce them):

* :class:`VPProcess` (Stable Diffusion 1/2, MVDream, the shapes priors): variance preserving, alpha_t =
  sqrt(abar_t), sigma_t = sqrt(1 - abar_t); the network predicts eps ("epsilon") or v = alpha eps - sigma z0
  ("v_prediction"); it is fed t itself.
* :class:`FlowProcess` (Stable Diffusion 3): rectified flow, x_t = (1 - s_t) z0 + s_t eps; the network predicts the
  velocity v = eps - z0 ("flow") and is fed s_t * T. s_t follows diffusers' FlowMatchEulerDiscreteScheduler for the
  same config (docs/fsd.md sec. 11): the training grid has the T values u = (t + 1) / T, t = 0..T-1 (diffusers'
  ``timesteps`` 1..T divided by T), shifted as s = shift u / (1 + (shift - 1) u). So t = T - 1 is pure noise (s = 1)
  and t = 0 is s = shift / (T + shift - 1) (0.003 for SD3's shift 3).

"velocity" means the rectified-flow velocity eps - x0 for both families (for VP priors it is computed from the
eps and x0 estimates); diffusers' v of v_prediction models is a different quantity and stays inside VPProcess.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal, Mapping, cast

import torch

from fsd_gs.errors import UserError

Kind = Literal["vp", "flow"]
Prediction = Literal["epsilon", "v_prediction", "flow"]

FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
"""``_class_name`` of a scheduler config that makes a :class:`FlowProcess` (:func:`process_from_config`)."""


def _per_sample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Coefficients [B] viewed as [B,1,...,1] on ``like``'s device, to broadcast over ``like`` [B,...] (floating
    coefficients wider than ``like`` are rounded to its dtype, so results keep the input's precision)."""
    x = x.to(like.device)
    if x.is_floating_point() and like.is_floating_point() and x.dtype.itemsize > like.dtype.itemsize:
        x = x.to(like.dtype)
    return x.view(-1, *([1] * (like.dim() - 1)))


def batch_timesteps(t: torch.Tensor | int, batch: int, device: torch.device | str) -> torch.Tensor:
    """Integer timesteps [batch] (long) on ``device`` from [batch] or one timestep (broadcast to the batch)."""
    return torch.as_tensor(t, device=device).long().reshape(-1).expand(batch)


class ForwardProcess(ABC):
    """x_t = alpha_t z0 + sigma_t eps and the conversions of the network's raw output.

    Attributes:
        num_train_timesteps: T; timesteps t are integers in [0, T).
        kind: "vp" (variance preserving diffusion) or "flow" (rectified flow).
        prediction: what the network outputs: "epsilon", "v_prediction" (alpha eps - sigma z0) or "flow" (eps - z0).
        config: the diffusers scheduler config the process was built from ({} when built from a table alone).
    """

    num_train_timesteps: int
    kind: Kind
    prediction: Prediction
    config: dict[str, Any]

    @abstractmethod
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t [B], sigma_t [B]) for integer timesteps t [B], on t's device."""

    @abstractmethod
    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is fed for integer timesteps t [B]: t itself (VP) or s_t * T as floats (flow)."""

    @abstractmethod
    def eps_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise estimate eps_hat [B,C,h,w] from the network's raw output [B,C,h,w] at z_t [B,C,h,w], t [B]."""

    @abstractmethod
    def x0_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean estimate x0_hat [B,C,h,w] from the raw output at z_t, t."""

    @abstractmethod
    def raw_target(self, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output [B,C,h,w] for x_t = add_noise(z0, eps, t) (a LoRA's loss target)."""

    def velocity_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The rectified-flow velocity eps_hat - x0_hat [B,C,h,w] from the raw output at z_t, t."""
        return self.eps_from(raw, z_t, t) - self.x0_from(raw, z_t, t)

    def add_noise(self, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t z0 + sigma_t eps [B,C,h,w] for z0, eps [B,C,h,w] and integer t [B]."""
        alpha, sigma = self.alpha_sigma(t)
        return _per_sample(alpha, z0) * z0 + _per_sample(sigma, z0) * eps


class VPProcess(ForwardProcess):
    """Variance-preserving diffusion: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t).

    Args:
        alphas_cumprod: abar_t for t = 0..T-1 [T] (its dtype and device are kept: the arithmetic follows them).
        prediction: "epsilon" or "v_prediction".
        config: the scheduler config it came from (DDIM sampling reads its betas; {}: Stable Diffusion's).
    """

    kind: Kind = "vp"

    def __init__(
        self, alphas_cumprod: torch.Tensor, prediction: str = "epsilon", config: Mapping[str, Any] | None = None
    ) -> None:
        if prediction not in ("epsilon", "v_prediction"):
            raise UserError(
                f"the model predicts {prediction!r}; only epsilon and v_prediction diffusion models (or flow models "
                "with a FlowMatchEulerDiscreteScheduler) can be used as priors"
            )
        self.alphas_cumprod = alphas_cumprod
        self.prediction = cast(Prediction, prediction)
        self.num_train_timesteps = int(alphas_cumprod.numel())
        self.config = dict(config or {})

    @classmethod
    def from_config(cls, config: Mapping[str, Any], device: torch.device | str = "cpu") -> VPProcess:
        """The process of a diffusers scheduler config (any VP scheduler class: only the training schedule is read)."""
        from diffusers import DDIMScheduler

        from fsd_gs.prior.loading import quiet_hf

        with quiet_hf():  # from_config's stubs return a union; a PNDM config has keys DDIM ignores
            scheduler = cast(DDIMScheduler, DDIMScheduler.from_config(dict(config)))
        abar = scheduler.alphas_cumprod.to(torch.float32).to(device)
        return cls(abar, str(config.get("prediction_type", "epsilon")), config)

    def with_prediction(self, prediction: str) -> VPProcess:
        """The same schedule with another prediction type (MVDream's UNet predicts eps over an SD 2.1 v folder)."""
        return VPProcess(self.alphas_cumprod, prediction, {**self.config, "prediction_type": prediction})

    def ddim_config(self) -> dict[str, Any]:
        """The config of a DDIMScheduler for this schedule, set to epsilon: samplers step on eps_hat (predict's output)."""
        config = dict(self.config)
        config.update(num_train_timesteps=self.num_train_timesteps, prediction_type="epsilon")
        config.setdefault("beta_schedule", "scaled_linear")
        config.setdefault("beta_start", 0.00085)
        config.setdefault("beta_end", 0.012)
        return config

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar.sqrt(), (1.0 - abar).sqrt()

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def eps_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return raw
        alpha, sigma = self.alpha_sigma(t)
        return _per_sample(alpha, raw) * raw + _per_sample(sigma, raw) * z_t.to(raw.dtype)

    def x0_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (_per_sample(c, raw) for c in self.alpha_sigma(t))
        z_t = z_t.to(raw.dtype)
        if self.prediction == "epsilon":
            return (z_t - sigma * raw) / alpha
        return alpha * z_t - sigma * raw

    def raw_target(self, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return eps
        alpha, sigma = self.alpha_sigma(t)
        return _per_sample(alpha, z0) * eps - _per_sample(sigma, z0) * z0


class FlowProcess(ForwardProcess):
    """Rectified flow: x_t = (1 - s_t) z0 + s_t eps, the network predicts v = eps - z0 and is fed s_t * T.

    Args:
        shift: diffusers' timestep shift (SD3: 3.0); s = shift u / (1 + (shift - 1) u) with u = (t + 1) / T.
        num_train_timesteps: T.
        config: the FlowMatchEulerDiscreteScheduler config it came from (the Euler sampler rebuilds it).
    """

    kind: Kind = "flow"
    prediction: Prediction = "flow"

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000, config: Mapping[str, Any] | None = None) -> None:
        if not shift > 0:
            raise UserError(f"the flow scheduler's shift must be positive, got {shift}")
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.config = {"shift": self.shift, "num_train_timesteps": self.num_train_timesteps, **dict(config or {})}
        self.sigmas = self.shifted(torch.arange(1, self.num_train_timesteps + 1, dtype=torch.float32) / self.num_train_timesteps)
        """s_t for t = 0..T-1, float32 [T], increasing (diffusers' training ``sigmas`` in reverse order); it moves to the
        device of the timesteps it is read with (once: a copy per step would wait for the GPU's queue)."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FlowProcess:
        """The process of a FlowMatchEulerDiscreteScheduler config; UserError for options it does not model."""
        unsupported = [
            key
            for key in ("use_dynamic_shifting", "invert_sigmas", "shift_terminal", "use_karras_sigmas", "use_exponential_sigmas")
            + ("use_beta_sigmas", "stochastic_sampling")
            if config.get(key)
        ]
        if unsupported:
            raise UserError(
                f"the flow scheduler config sets {', '.join(unsupported)}, which fsd_gs does not model: only a fixed "
                "shift (as Stable Diffusion 3's FlowMatchEulerDiscreteScheduler) is supported"
            )
        return cls(float(config.get("shift", 1.0)), int(config.get("num_train_timesteps", 1000)), config)

    def shifted(self, u: torch.Tensor) -> torch.Tensor:
        """shift u / (1 + (shift - 1) u), elementwise (diffusers' order of operations, so float32 values match)."""
        return self.shift * u / (1 + (self.shift - 1) * u)

    def unshifted(self, t: torch.Tensor) -> torch.Tensor:
        """u = (t + 1) / T [B] float32 for integer t [B]: the grid value the shift is applied to."""
        return (t.long() + 1).to(torch.float32) / self.num_train_timesteps

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """s_t [B] float32 for integer t [B], on t's device."""
        if self.sigmas.device != t.device:
            self.sigmas = self.sigmas.to(t.device)
        return self.sigmas[t.long()]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - s_t, s_t) [B] in float64: s_t is diffusers' float32 value, 1 - s_t is then exact (callers round)."""
        s = self.sigma(t).double()
        return 1.0 - s, s

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) * self.num_train_timesteps

    def eps_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, _ = self.alpha_sigma(t)
        return z_t.to(raw.dtype) + _per_sample(alpha, raw) * raw

    def x0_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return z_t.to(raw.dtype) - _per_sample(self.sigma(t), raw) * raw

    def velocity_from(self, raw: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return raw

    def raw_target(self, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps - z0


def process_from_config(config: Mapping[str, Any], device: torch.device | str = "cpu") -> ForwardProcess:
    """The forward process a diffusers scheduler config describes: a :class:`FlowProcess` for a
    FlowMatchEulerDiscreteScheduler, a :class:`VPProcess` for every other (DDIM, PNDM, Euler, ...) scheduler."""
    if config.get("_class_name") == FLOW_SCHEDULER:
        return FlowProcess.from_config(config)
    return VPProcess.from_config(config, device)
