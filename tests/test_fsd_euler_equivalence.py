"""docs/fsd.md sec. 11, checked numerically: for a flow prior, FSD with one FIXED noise and a decreasing t IS the Euler
sampler of the flow.

A tiny random-weight diffusers UNet is read as a rectified-flow velocity model (a :class:`FlowProcess` with Stable
Diffusion 3's shift 3, fed s * T as its timestep) with classifier-free guidance (omega = 7.5). It is sampled with the
production Euler sampler (fsd_gs.sampling.euler_sample, diffusers' FlowMatchEulerDiscreteScheduler) from x = eps at
t = 980 (FSD's t_max 0.98) down to s = 0. Separately, FSD in its first-order form runs on the clean-image variable
x~ = (x_t - s eps) / (1 - s), from x~ = eps, with the DDIM identity of sec. 1 and alpha = 1 - s, sigma = s:

    x~_next = x~ - (w_t - w_next) (eps_hat((1 - s) x~ + s eps, t) - eps),     w = s / (1 - s),

over the same timesteps with the SAME eps every step; its final x~ must equal the Euler sample. Redrawing eps every
step (SDS) must not. The last test takes each FSD step as a plain gradient-descent step on the production
``distill_loss``'s gradient, as tests/test_fsd_ddim_equivalence.py does for DDIM.
"""

from __future__ import annotations

import pytest
import torch

from fsd_gs.distill import distill_loss
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.process import FlowProcess
from fsd_gs.sampling import euler_sample, flow_timesteps, sample
from tests.test_distill import TinyPixelPrior, random_embeddings, tiny_unet

STEPS = 20
OMEGA = 7.5
SIZE = 16
BATCH = 2
T_START = 980
SHIFT = 3.0


def build(dtype: torch.dtype):
    """(dtype, the tiny flow prior, its conditioning, the fixed eps, the timesteps) in ``dtype``."""
    prior = TinyPixelPrior(tiny_unet(channels=3, size=SIZE, seed=0, dtype=dtype), process=FlowProcess(SHIFT))
    cond, uncond = random_embeddings(BATCH, seed=5, dtype=dtype)
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64).to(dtype)
    timesteps = torch.linspace(T_START, 0, STEPS).round().long()
    return dtype, prior, Conditioning(cond, uncond), eps, timesteps


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def setup(request):
    return build(request.param)


def sigmas(prior: TinyPixelPrior, timesteps: torch.Tensor) -> list[tuple[int, float, float]]:
    """(t, s_t, s_next) for each step; the last step goes to s = 0 (the sample)."""
    s = [float(x) for x in prior.process.alpha_sigma(timesteps)[1]] + [0.0]
    return [(int(t), s[i], s[i + 1]) for i, t in enumerate(timesteps.tolist())]


def hand_euler(prior: TinyPixelPrior, conditioning, eps, timesteps) -> torch.Tensor:
    """x_next = x + (s_next - s) v_hat in the prior's precision (no library: float64 stays float64)."""
    x = eps.clone()
    for t, s, s_next in sigmas(prior, timesteps):
        v = prior.predict_raw(x, torch.full((BATCH,), t), conditioning, OMEGA)
        x = x + (s_next - s) * v
    return x


def fsd_first_order(prior: TinyPixelPrior, conditioning, eps, timesteps, fresh: torch.Generator | None = None):
    """FSD on x~ from x~ = eps (x_t = eps at the first t); ``fresh`` redraws eps every step (SDS-style)."""
    x = eps.clone()
    for t, s, s_next in sigmas(prior, timesteps):
        noise = eps if fresh is None else torch.randn(eps.shape, generator=fresh, dtype=torch.float64).to(eps.dtype)
        eps_hat = prior.predict((1 - s) * x + s * noise, torch.full((BATCH,), t), conditioning, OMEGA)
        x = x - (s / (1 - s) - s_next / (1 - s_next)) * (eps_hat - noise)
    return x


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def tolerance(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


def test_the_production_sampler_is_diffusers_euler_on_the_process_sigmas():
    """diffusers' FlowMatchEulerDiscreteScheduler (float32 inside) and the hand-written Euler step agree."""
    dtype, prior, conditioning, eps, timesteps = build(torch.float32)
    reference = euler_sample(prior, eps, conditioning, OMEGA, timesteps)
    assert reference.abs().max() > 0.1  # a non-trivial sample
    assert relative_error(hand_euler(prior, conditioning, eps, timesteps), reference) <= tolerance(dtype)


def test_fsd_with_fixed_noise_is_the_euler_sampler(setup):
    dtype, prior, conditioning, eps, timesteps = setup
    reference = hand_euler(prior, conditioning, eps, timesteps)
    if dtype == torch.float32:
        reference = euler_sample(prior, eps, conditioning, OMEGA, timesteps)
    fsd = fsd_first_order(prior, conditioning, eps, timesteps)
    assert relative_error(fsd, reference) <= tolerance(dtype)


def test_fresh_noise_every_step_is_not_the_euler_sampler(setup):
    _, prior, conditioning, eps, timesteps = setup
    sds = fsd_first_order(prior, conditioning, eps, timesteps, fresh=torch.Generator().manual_seed(11))
    assert relative_error(sds, hand_euler(prior, conditioning, eps, timesteps)) > 0.1


def test_gradient_descent_on_distill_loss_is_the_euler_update(setup):
    """Each Euler step = one plain gradient step on x~ with distill_loss's gradient, step B (w_t - w_s) / w_t."""
    dtype, prior, conditioning, eps, timesteps = setup
    z = eps.clone()
    for t, s, s_next in sigmas(prior, timesteps):
        leaf = z.clone().requires_grad_(True)
        images = (leaf + 1) / 2  # the test prior encodes images as 2 x - 1, so encode(images) == leaf
        out = distill_loss(prior, images, eps, torch.full((BATCH,), t), conditioning, OMEGA, weighting="sigma_over_alpha")
        (grad,) = torch.autograd.grad(out.loss, leaf)
        w_t, w_s = float(out.aux["w"][0]), s_next / (1 - s_next)
        assert w_t == pytest.approx(s / (1 - s), rel=1e-6)
        with torch.no_grad():
            z = z - BATCH * (w_t - w_s) / w_t * grad
    assert relative_error(z, hand_euler(prior, conditioning, eps, timesteps)) <= tolerance(dtype)


def test_sample_dispatches_flow_priors_to_euler_from_pure_noise(setup):
    """The default grid starts at s = 1 (x = eps exactly), where FSD's x~ is undefined but the Euler step is not."""
    dtype, prior, conditioning, eps, _ = setup
    grid = flow_timesteps(prior.process, 8)
    assert grid.tolist()[0] == 999 and grid.tolist()[-1] == 0 and float(prior.process.alpha_sigma(grid[:1])[1]) == 1.0
    out = sample(prior, eps, conditioning, OMEGA, steps=8)
    assert out.shape == eps.shape and torch.isfinite(out).all()
    assert torch.equal(out, euler_sample(prior, eps, conditioning, OMEGA, grid))
