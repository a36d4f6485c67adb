"""The prior's own sampler: the "DDIM images" (diffusion priors) or Euler samples (flow priors) that FSD distils towards.

    z0 = sample(prior, noise, conditioning, guidance_scale=7.5, steps=50)     # model space [S,C,h,w]
    images = prior.decode(z0)                                                    # [S,3,H,W] in [0,1]

:func:`sample` dispatches on ``prior.process.kind``: DDIM (eta = 0) for variance-preserving priors, the Euler
sampler of the rectified flow for flow priors (Stable Diffusion 3). docs/fsd.md sec. 1 and 11 prove that FSD with a
fixed noise and a decreasing t is this sampler run on the optimised variable; tests/test_fsd_ddim_equivalence.py and
tests/test_fsd_euler_equivalence.py check it numerically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, cast

import torch

from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.process import FlowProcess, VPProcess

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler


def sample(
    prior: DiffusionPrior,
    noise: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    steps: int = 50,
    on_step: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """The prior's sampler from x_T = ``noise`` [S,C,h,w]: DDIM for diffusion priors, Euler for flow priors.

    Args:
        prior: any :class:`DiffusionPrior`.
        noise: x_T [S,C,h,w] in model space (S samples).
        conditioning: the samples' :class:`Conditioning` (from :meth:`PromptEmbeddings.select`).
        guidance_scale: CFG scale omega.
        steps: sampler steps (network evaluations).
        on_step: called with the step index after each step (progress bars).
    Returns:
        the model-space samples [S,C,h,w] (decode them with ``prior.decode``).
    """
    if isinstance(prior.process, FlowProcess):
        timesteps = flow_timesteps(prior.process, steps)
        return euler_sample(prior, noise, conditioning, guidance_scale, timesteps, on_step)
    return ddim_sample(prior, noise, conditioning, guidance_scale, steps, on_step)


# -- DDIM (variance-preserving priors) --------------------------------------------------------------
def ddim_scheduler(prior: DiffusionPrior, steps: int) -> DDIMScheduler:
    """diffusers' DDIMScheduler for ``prior``'s noise schedule (its process's config), set to ``steps`` inference steps,
    stepping on eps (what :meth:`DiffusionPrior.predict` returns)."""
    from diffusers import DDIMScheduler

    from fsd_gs.prior.loading import quiet_hf

    if not isinstance(prior.process, VPProcess):
        raise ValueError(f"DDIM samples variance-preserving priors; this prior's process is {prior.process.kind!r}")
    with quiet_hf():  # a PNDM config (Stable Diffusion's) has keys DDIM ignores
        scheduler = cast(DDIMScheduler, DDIMScheduler.from_config(prior.process.ddim_config()))  # from_config is typed as a union
    scheduler.set_timesteps(steps, device=prior.device)
    return scheduler


@torch.no_grad()
def ddim_sample(
    prior: DiffusionPrior,
    noise: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    steps: int = 50,
    on_step: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """DDIM (eta 0) from x_T = ``noise`` [S,C,h,w]; arguments and result as :func:`sample`."""
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

    scheduler = ddim_scheduler(prior, steps)
    z = noise.to(prior.device, torch.float32) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        t_batch = t.reshape(1).expand(z.shape[0]).to(prior.device)
        eps_hat = prior.predict(z, t_batch, conditioning, guidance_scale)
        # diffusers types timestep as int and the result as a union with its tuple form; it takes a 0-d tensor (as its
        # own pipelines pass) and returns DDIMSchedulerOutput unless return_dict=False
        out = scheduler.step(eps_hat, t, z)  # pyright: ignore[reportArgumentType]
        z = cast(DDIMSchedulerOutput, out).prev_sample
        if on_step is not None:
            on_step(i)
    return z


# -- Euler (flow priors) ----------------------------------------------------------------------------
def flow_timesteps(process: FlowProcess, steps: int) -> torch.Tensor:
    """``steps`` integer timesteps [steps] from T - 1 (s = 1, pure noise) down to 0, evenly spaced, decreasing."""
    grid = torch.linspace(process.num_train_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    return torch.unique_consecutive(grid)


def euler_scheduler(process: FlowProcess, timesteps: torch.Tensor, device: torch.device) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' FlowMatchEulerDiscreteScheduler of ``process``'s config, set to the sigmas of integer ``timesteps``
    [N] (decreasing) plus the final sigma 0.

    The prior is evaluated at integer timesteps only (the contract), so the sampler is handed the unshifted grid
    values u = (t + 1) / T and applies the shift itself: its sigmas are then the process's s_t.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fsd_gs.prior.loading import quiet_hf

    with quiet_hf():
        scheduler = cast(FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler.from_config(process.config))
    scheduler.set_timesteps(sigmas=process.unshifted(timesteps).tolist(), device=device)
    return scheduler


@torch.no_grad()
def euler_sample(
    prior: DiffusionPrior,
    noise: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    timesteps: torch.Tensor,
    on_step: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """The flow's Euler sampler x_s = x_t + (s - t) v_hat from x = ``noise`` [S,C,h,w] at ``timesteps[0]``.

    Args:
        prior: a flow prior (``prior.process`` a :class:`FlowProcess`).
        noise, conditioning, guidance_scale, on_step: as :func:`sample`.
        timesteps: decreasing integer timesteps [N]; the last step goes from timesteps[-1] to s = 0 (the sample).
    Returns:
        the model-space samples [S,C,h,w] float32.
    """
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

    process = prior.process
    if not isinstance(process, FlowProcess):
        raise ValueError(f"the Euler sampler samples flow priors; this prior's process is {process.kind!r}")
    scheduler = euler_scheduler(process, timesteps, prior.device)
    model_times = cast(torch.Tensor, scheduler.timesteps)  # s_t * T, set by set_timesteps
    z = noise.to(prior.device, torch.float32)
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((z.shape[0],), t, device=prior.device, dtype=torch.long)
        raw = prior.predict_raw(z, t_batch, conditioning, guidance_scale)  # guided on the raw output: s = 1 is fine
        velocity = process.velocity_from(raw, z, t_batch)
        out = scheduler.step(velocity, model_times[i], z)  # pyright: ignore[reportArgumentType]
        z = cast(FlowMatchEulerDiscreteSchedulerOutput, out).prev_sample
        if on_step is not None:
            on_step(i)
    return z
