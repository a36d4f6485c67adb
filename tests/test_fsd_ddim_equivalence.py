"""docs/fsd.md sec. 1, checked numerically: FSD with one FIXED noise and a decreasing t IS DDIM sampling.

A tiny random-weight diffusers UNet with classifier-free guidance (omega = 7.5) is sampled with diffusers'
own DDIMScheduler (eta = 0, set_alpha_to_one, so the last step lands on alpha = 1). Separately, FSD in its
first-order form runs on the clean-image variable x~ from x~_T = (1 - sigma_T) / alpha_T eps with
    x~_s = x~_t - (w_t - w_s) (eps_hat(alpha_t x~_t + sigma_t eps, t) - eps),   w = sigma / alpha,
over the same timesteps with the SAME eps every step; its final x~ must equal DDIM's sample. Redrawing eps
every step (SDS) must not. The last test takes each FSD step as a plain gradient-descent step on the
gradient of the production ``distill_loss``.
"""

from __future__ import annotations

import pytest
import torch

from fsd_gs.distill import distill_loss
from fsd_gs.prior.conditioning import Conditioning
from tests.test_distill import TinyPixelPrior, random_embeddings, tiny_unet

STEPS = 20
OMEGA = 7.5
SIZE = 16
BATCH = 2


def make_scheduler(dtype: torch.dtype):
    """diffusers' DDIM with Stable Diffusion's training schedule, the final step at alphabar = 1."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
        prediction_type="epsilon",
    )
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(dtype)  # keep diffusers' arithmetic in our precision
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(dtype)
    scheduler.set_timesteps(STEPS)
    return scheduler


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def setup(request):
    dtype = request.param
    scheduler = make_scheduler(dtype)
    prior = TinyPixelPrior(tiny_unet(channels=3, size=SIZE, seed=0, dtype=dtype), scheduler.alphas_cumprod.clone())
    cond, uncond = random_embeddings(BATCH, seed=5, dtype=dtype)
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64).to(dtype)
    reference = ddim_sample(scheduler, prior, cond, uncond, eps)
    return dtype, scheduler, prior, cond, uncond, eps, reference


def ddim_sample(scheduler, prior: TinyPixelPrior, cond, uncond, eps) -> torch.Tensor:
    """diffusers' DDIM loop (eta = 0) with CFG computed from the UNet directly, from x_T = eps."""
    x = eps.clone()
    for t in scheduler.timesteps:
        tt = t.reshape(1).expand(x.shape[0])
        with torch.no_grad():
            both = prior.eps(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, uncond]))
        eps_cond, eps_uncond = both.chunk(2)
        x = scheduler.step(eps_uncond + OMEGA * (eps_cond - eps_uncond), t, x, eta=0.0).prev_sample
    return x


def step_pairs(scheduler) -> list[tuple[int, float, float, float]]:
    """(t, alpha_t, sigma_t, w_s) for each DDIM step t -> s; s < 0 is the final alpha = 1, sigma = 0 (w = 0)."""
    abar = scheduler.alphas_cumprod.double()
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    pairs = []
    for t in scheduler.timesteps.tolist():
        s = t - ratio
        abar_s = float(abar[s]) if s >= 0 else 1.0
        pairs.append((t, float(abar[t]) ** 0.5, (1 - float(abar[t])) ** 0.5, ((1 - abar_s) / abar_s) ** 0.5))
    return pairs


def fsd_first_order(scheduler, prior: TinyPixelPrior, cond, uncond, eps, fresh: torch.Generator | None = None):
    """FSD on x~; ``fresh`` redraws eps every step (SDS-style) instead of keeping it fixed."""
    pairs = step_pairs(scheduler)
    _, alpha_T, sigma_T, _ = pairs[0]
    x = (1 - sigma_T) / alpha_T * eps  # x_T = eps  <=>  x~_T = (1 - sigma_T) / alpha_T eps
    for t, alpha, sigma, w_s in pairs:
        noise = eps if fresh is None else torch.randn(eps.shape, generator=fresh, dtype=torch.float64).to(eps.dtype)
        eps_hat = prior.predict_noise(alpha * x + sigma * noise, torch.tensor([t]), cond, uncond, OMEGA)
        x = x - (sigma / alpha - w_s) * (eps_hat - noise)
    return x


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def tolerance(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-4


def test_final_step_lands_on_alpha_one(setup):
    _, scheduler, *_ = setup
    pairs = step_pairs(scheduler)
    assert len(pairs) == STEPS and pairs[-1][3] == 0.0 and float(scheduler.final_alpha_cumprod) == 1.0
    assert all(a[0] > b[0] for a, b in zip(pairs, pairs[1:]))  # t decreases monotonically


def test_fsd_with_fixed_noise_reproduces_ddim(setup):
    dtype, scheduler, prior, cond, uncond, eps, reference = setup
    fsd = fsd_first_order(scheduler, prior, cond, uncond, eps)
    assert reference.abs().max() > 0.1  # a non-trivial sample
    assert relative_error(fsd, reference) <= tolerance(dtype)


def test_fresh_noise_every_step_does_not_reproduce_ddim(setup):
    _, scheduler, prior, cond, uncond, eps, reference = setup
    sds = fsd_first_order(scheduler, prior, cond, uncond, eps, fresh=torch.Generator().manual_seed(11))
    assert relative_error(sds, reference) > 0.1


def test_gradient_descent_on_distill_loss_is_the_ddim_update(setup):
    """Each DDIM step = one plain gradient step on x~ with distill_loss's gradient, step B (w_t - w_s) / w_t."""
    dtype, scheduler, prior, cond, uncond, eps, reference = setup
    pairs = step_pairs(scheduler)
    _, alpha_T, sigma_T, _ = pairs[0]
    z = ((1 - sigma_T) / alpha_T * eps).clone()
    for t, alpha, sigma, w_s in pairs:
        leaf = z.clone().requires_grad_(True)
        images = (leaf + 1) / 2  # the test prior encodes images as 2 x - 1, so encode(images) == leaf
        out = distill_loss(
            prior, images, eps, torch.full((BATCH,), t), Conditioning(cond, uncond), OMEGA, weighting="sigma_over_alpha"
        )
        (grad,) = torch.autograd.grad(out.loss, leaf)
        w_t = float(out.aux["w"][0])
        assert w_t == pytest.approx(sigma / alpha, rel=1e-6)
        with torch.no_grad():
            z = z - BATCH * (w_t - w_s) / w_t * grad
    assert relative_error(z, reference) <= tolerance(dtype)
