"""The prior contract (fsd_gs/prior/process.py, conditioning.py, base.py): forward processes, conditioning, one predict.

* VPProcess reproduces the old alpha_sigma exactly; FlowProcess's sigmas and model timesteps are diffusers'
  FlowMatchEulerDiscreteScheduler's for the same config; eps_from / x0_from / velocity_from / raw_target agree.
* Conditioning: cat, expand, index, select with and without pooled embeddings.
* Every shipped prior answers the same predict(z_t, t, conditioning, guidance_scale, negatives, cameras) call.
"""

from __future__ import annotations

import pytest
import torch

from fsd_gs.camera import turntable
from fsd_gs.errors import UserError
from fsd_gs.prior.base import NFSD_NEGATIVE_PROMPT, NegativeViews, PromptEmbeddings
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.process import FlowProcess, VPProcess, process_from_config
from tests.test_distill import sd_alphas_cumprod

SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
"""Stable Diffusion 3's scheduler config (scheduler/scheduler_config.json of stabilityai/stable-diffusion-3-medium)."""


def _t(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# -- forward processes ----------------------------------------------------------------------------
def test_vp_process_reproduces_the_old_alpha_sigma_bitwise():
    abar = sd_alphas_cumprod()
    process = VPProcess(abar)
    t = _t(0, 10, 500, 999)
    alpha, sigma = process.alpha_sigma(t)
    assert torch.equal(alpha, abar[t].sqrt()) and torch.equal(sigma, (1.0 - abar[t]).sqrt())  # the old formula
    assert torch.equal(process.model_timestep(t), t) and process.kind == "vp" and process.num_train_timesteps == 1000


def test_vp_process_from_a_scheduler_config_is_stable_diffusions_schedule():
    config = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    process = process_from_config(config)
    assert isinstance(process, VPProcess) and process.prediction == "epsilon"
    torch.testing.assert_close(process.alphas_cumprod, sd_alphas_cumprod(), rtol=1e-6, atol=1e-7)
    with pytest.raises(UserError, match="sample"):
        process_from_config({**config, "prediction_type": "sample"})


def test_flow_sigmas_and_model_timesteps_are_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for shift in (1.0, 3.0):
        config = {**SD3_SCHEDULER, "shift": shift}
        process = process_from_config(config)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        assert isinstance(process, FlowProcess) and process.kind == "flow" and process.prediction == "flow"
        # diffusers keeps the training grid in decreasing order: index i is our t = T - 1 - i
        assert torch.equal(process.sigmas, scheduler.sigmas.flip(0))
        t = torch.arange(1000)
        assert torch.equal(process.model_timestep(t), scheduler.timesteps.flip(0))
    process = FlowProcess.from_config(SD3_SCHEDULER)
    assert float(process.sigma(_t(999))) == 1.0 and float(process.sigma(_t(0))) == pytest.approx(3.0 / 1002.0)
    with pytest.raises(UserError, match="use_dynamic_shifting"):
        FlowProcess.from_config({**SD3_SCHEDULER, "use_dynamic_shifting": True})


@pytest.mark.cuda
def test_flow_sigmas_move_to_the_device_of_the_timesteps_once():
    """Read with CUDA timesteps, the flow table goes to the GPU once (not a host copy per step) with the same values."""
    process = FlowProcess(3.0)
    t = _t(0, 500, 999)
    cpu = process.sigma(t)
    on_gpu = process.sigma(t.cuda())
    assert process.sigmas.is_cuda and on_gpu.is_cuda and torch.equal(on_gpu.cpu(), cpu)
    table = process.sigmas
    process.sigma(t.cuda())
    assert process.sigmas is table


@pytest.mark.parametrize(
    "process",
    [VPProcess(sd_alphas_cumprod().double()), VPProcess(sd_alphas_cumprod().double(), "v_prediction"), FlowProcess(3.0)],
    ids=["epsilon", "v_prediction", "flow"],
)
def test_the_raw_output_conversions_round_trip(process):
    """With the exact raw output (raw_target), eps_from / x0_from / velocity_from give back eps, x0 and eps - x0."""
    g = torch.Generator().manual_seed(0)
    z0, eps = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    t = _t(20, 500, 990)
    z_t = process.add_noise(z0, eps, t)
    alpha, sigma = (x.view(-1, 1, 1, 1).double() for x in process.alpha_sigma(t))
    torch.testing.assert_close(z_t, alpha * z0 + sigma * eps)
    raw = process.raw_target(z0, eps, t)
    tol = dict(rtol=1e-5, atol=1e-5)  # the flow's sigmas are float32
    torch.testing.assert_close(process.eps_from(raw, z_t, t), eps, **tol)
    torch.testing.assert_close(process.x0_from(raw, z_t, t), z0, **tol)
    torch.testing.assert_close(process.velocity_from(raw, z_t, t), eps - z0, **tol)


def test_flow_eps_and_x0_are_the_rectified_flow_formulas():
    process = FlowProcess(3.0)
    g = torch.Generator().manual_seed(1)
    v, z_t = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(2))
    t = _t(100, 800)
    s = process.sigma(t).view(-1, 1, 1, 1)
    assert torch.equal(process.eps_from(v, z_t, t), z_t + (1 - s) * v)
    assert torch.equal(process.x0_from(v, z_t, t), z_t - s * v)
    assert torch.equal(process.velocity_from(v, z_t, t), v)


# -- conditioning ---------------------------------------------------------------------------------
def _embeddings(pooled: bool) -> PromptEmbeddings:
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(5, 3, 4, generator=g), torch.randn(1, 3, 4, generator=g)
    extra = dict(pooled_cond=torch.randn(5, 6, generator=g), pooled_uncond=torch.randn(1, 6, generator=g)) if pooled else {}
    return PromptEmbeddings(cond, uncond, ("none", "front", "side", "back", "overhead"), **extra)


@pytest.mark.parametrize("pooled", [False, True], ids=["text", "pooled"])
def test_select_cat_expand_and_index(pooled):
    emb = _embeddings(pooled)
    c = emb.select(["front", "back", "unknown"])  # an unknown view falls back to "none"
    assert len(c) == 3 and torch.equal(c.cond, emb.cond[torch.tensor([1, 3, 0])])
    assert torch.equal(c.uncond, emb.uncond.expand(3, -1, -1))
    if pooled:
        assert emb.pooled_cond is not None and emb.pooled_uncond is not None
        assert torch.equal(c.pooled_cond, emb.pooled_cond[torch.tensor([1, 3, 0])])
        assert torch.equal(c.pooled_uncond, emb.pooled_uncond.expand(3, -1))
    else:
        assert c.pooled_cond is None and c.pooled_uncond is None
    joined = Conditioning.cat([c, emb.select(["side"])])
    assert len(joined) == 4 and torch.equal(joined.cond[3], emb.cond[2]) and torch.equal(joined.uncond[3], emb.uncond[0])
    assert torch.equal(joined.index(torch.tensor([3])).cond, emb.select(["side"]).cond)
    assert torch.equal(c.repeat(2).cond, torch.cat([c.cond, c.cond]))
    single = emb.select(["side"]).expand(4)
    assert single.cond.shape == (4, 3, 4) and torch.equal(single.unconditional().cond, single.uncond)
    if pooled:
        assert single.pooled_cond is not None and single.pooled_cond.shape == (4, 6)


def test_cat_refuses_mixing_pooled_and_text_only_parts():
    with pytest.raises(ValueError, match="pooled"):
        Conditioning.cat([_embeddings(True).select(["none"]), _embeddings(False).select(["none"])])


def test_negative_views_parts_and_cat_keep_pooled_rows():
    g = torch.Generator().manual_seed(3)
    negatives = NegativeViews(
        torch.randn(2, 3, 5, 4, generator=g), torch.randn(3, 2, generator=g), torch.randn(2, 3, 6, generator=g)
    )
    parts = negatives.parts()
    assert len(parts) == 2 and torch.equal(parts[1].cond, negatives.embeddings[1])
    assert parts[1].pooled_cond is not None and torch.equal(parts[1].pooled_cond, negatives.pooled[1])  # type: ignore[index]
    both = NegativeViews.cat([negatives, negatives])
    assert both.embeddings.shape == (2, 6, 5, 4) and both.pooled is not None and both.pooled.shape == (2, 6, 6)


# -- one predict signature across the shipped priors ---------------------------------------------
@pytest.fixture(scope="module")
def shapes_mv_prior():
    from fsd_gs.prior.factory import load_prior

    return load_prior("shapes-mv", device="cpu")


EXPECTED = {
    "shapes_prior": ("vp", "", "shapes"),
    "shapes_mv_prior": ("vp", "", "shapes-mv"),
    "tiny_sd_prior": ("vp", NFSD_NEGATIVE_PROMPT, "sd21"),
    "tiny_sd3_prior": ("flow", "", "sd35"),
}
"""Per shipped prior: (process.kind, default_negative_prompt, preset_family)."""


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_shipped_prior_answers_the_one_predict_call(name, request):
    prior = request.getfixturevalue(name)
    batch = max(4, prior.views_per_group)
    emb = prior.encode_prompts("a red chair")
    conditioning = emb.select(["front", "side", "back", "side"][:batch])
    c, h, w = prior.model_shape(prior.resolution, prior.resolution)
    z = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), 500)
    cams = turntable(batch, elevation=15.0, width=prior.resolution, height=prior.resolution)
    eps = prior.predict(z, t, conditioning, 7.5, None, cams)
    assert eps.shape == z.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    raw = prior.predict_raw(z, t, conditioning, 7.5, cameras=cams)
    assert torch.equal(prior.process.eps_from(raw, z, t), eps)  # predict = eps_from(predict_raw)
    if conditioning.pooled_cond is None:  # the text-only shorthand
        assert torch.equal(prior.predict_noise(z, t, conditioning.cond, conditioning.uncond, 7.5, cameras=cams), eps)
    assert prior.num_train_timesteps == prior.process.num_train_timesteps
    assert (prior.process.kind, prior.default_negative_prompt, prior.preset_family) == EXPECTED[name]
    if not prior.camera_conditioned:  # text-only priors ignore the cameras
        assert torch.equal(prior.predict(z, t, conditioning, 7.5), eps)
