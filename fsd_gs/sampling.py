"""The one DDIM sampler (eta = 0) of the project: the "DDIM images" that FSD distils towards.

    z0 = ddim_sample(prior, noise, cond, uncond, guidance_scale=7.5, steps=50)   # model space [S,C,h,w]
    images = prior.decode(z0)                                                       # [S,3,H,W] in [0,1]

docs/fsd.md sec. 1 proves that FSD with a fixed noise and a decreasing t is this sampler run on the
optimised variable; tests/test_fsd_ddim_equivalence.py checks it numerically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, cast

import torch

from fsd_gs.prior.base import DiffusionPrior

if TYPE_CHECKING:
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput


def ddim_scheduler(prior: DiffusionPrior, steps: int) -> DDIMScheduler:
    """diffusers' DDIMScheduler for ``prior``'s noise schedule, set to ``steps`` inference steps.

    The prior's own scheduler config is used where it has one (``prior.scheduler_config``); the
    prediction type is always epsilon, since :meth:`DiffusionPrior.predict_noise` returns eps.
    """
    from diffusers import DDIMScheduler

    from fsd_gs.prior.loading import quiet_hf

    config = dict(prior.scheduler_config or {})
    config.update(num_train_timesteps=prior.num_train_timesteps, prediction_type="epsilon")
    config.setdefault("beta_schedule", "scaled_linear")
    config.setdefault("beta_start", 0.00085)
    config.setdefault("beta_end", 0.012)
    with quiet_hf():  # a PNDM config (Stable Diffusion's) has keys DDIM ignores
        scheduler = cast(DDIMScheduler, DDIMScheduler.from_config(config))  # from_config is typed as a union
    scheduler.set_timesteps(steps, device=prior.device)
    return scheduler


@torch.no_grad()
def ddim_sample(
    prior: DiffusionPrior,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    steps: int = 50,
    on_step: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """DDIM (eta 0) from x_T = ``noise``.

    Args:
        prior: any :class:`DiffusionPrior`.
        noise: x_T [S,C,h,w] in model space (S samples).
        cond, uncond: text embeddings [S,L,D] (from :meth:`PromptEmbeddings.select`).
        guidance_scale: CFG scale omega.
        steps: DDIM steps.
        on_step: called with the step index after each step (progress bars).
    Returns:
        the model-space samples [S,C,h,w] (decode them with ``prior.decode``).
    """
    scheduler = ddim_scheduler(prior, steps)
    z = noise.to(prior.device, torch.float32) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        t_batch = t.reshape(1).expand(z.shape[0]).to(prior.device)
        eps_hat = prior.predict_noise(z, t_batch, cond, uncond, guidance_scale)
        # diffusers types timestep as int and the result as a union with its tuple form; it takes a 0-d tensor (as its
        # own pipelines pass) and returns DDIMSchedulerOutput unless return_dict=False
        out = scheduler.step(eps_hat, t, z)  # pyright: ignore[reportArgumentType]
        z = cast("DDIMSchedulerOutput", out).prev_sample
        if on_step is not None:
            on_step(i)
    return z
