"""The method registry and its guidances (fsd_gs/methods.py): each direction against a direct computation.

The tiny float64 prior of tests/test_distill.py is used; references call its UNet (``prior.eps``) directly,
not the code path under test. VSD is also checked on the built-in shapes prior (CPU, small LoRA).
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from fsd_gs.distill import distill_loss, distill_loss_z
from fsd_gs.errors import UserError
from fsd_gs.methods import (
    METHODS,
    NFSD_NEGATIVE_PROMPT,
    ClassifierGuidance,
    MethodOptions,
    NoiseFreeGuidance,
    ScoreGuidance,
    VSDConfig,
    default_negative_prompt,
    make_guidance,
    method_spec,
)
from fsd_gs.prior.base import PromptEmbeddings
from fsd_gs.prior.conditioning import Conditioning
from tests.test_distill import TinyPixelPrior, make_inputs, random_embeddings, sd_alphas_cumprod, tiny_unet

OMEGA = 7.5


@pytest.fixture(scope="module")
def prior() -> TinyPixelPrior:
    return TinyPixelPrior(tiny_unet(dtype=torch.float64), sd_alphas_cumprod().double())


def embeddings(prior) -> PromptEmbeddings:
    return prior.encode_prompts("a red mushroom")


def setup_step(prior, batch: int = 2):
    """images (leaf), eps, t, cond, uncond and alpha, sigma [B,1,1,1], z_t, for the tiny prior (z = 2 x - 1)."""
    images, eps, t = make_inputs(batch)
    emb = embeddings(prior)
    _conditioning = emb.select(["none"] * batch)
    cond, uncond = _conditioning.cond, _conditioning.uncond
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    z_t = alpha * (images.detach() * 2 - 1) + sigma * eps
    return images, eps, t, cond, uncond, alpha, sigma, z_t


def unet_eps(prior, z_t, t, emb) -> torch.Tensor:
    """The raw UNet prediction, one embedding for the whole batch, straight from the network."""
    with torch.no_grad():
        return prior.eps(z_t, t, emb.expand(z_t.shape[0], -1, -1))


def image_grad(prior, method_or_guidance, images, eps, t, cond, uncond, **kwargs) -> torch.Tensor:
    guidance = method_or_guidance
    if isinstance(guidance, str):
        guidance = make_guidance(guidance, prior, embeddings(prior), **kwargs)
    out = distill_loss(prior, images, eps, t, Conditioning(cond, uncond), OMEGA, guidance=guidance)
    (grad,) = torch.autograd.grad(out.loss, images)
    return grad


# -- the registry ---------------------------------------------------------------------------------
def test_registry_defaults_and_unknown_method(prior):
    assert set(METHODS) == {"fsd", "sds", "nfsd", "csd", "vsd"}
    assert (METHODS["fsd"].noise.kind, METHODS["fsd"].schedule.kind) == ("worldmap", "sqrt")
    for name in ("sds", "nfsd", "csd", "vsd"):
        spec = METHODS[name]
        assert (spec.noise.kind, spec.schedule.kind, spec.schedule.t_min, spec.schedule.t_max) == ("random", "random", 0.02, 0.98)
    assert [n for n, s in METHODS.items() if s.stateful] == ["vsd"]
    with pytest.raises(UserError, match="--method must be one of"):
        method_spec("dds")
    with pytest.raises(UserError, match="--method"):
        make_guidance("dds", prior, embeddings(prior))
    with pytest.raises(UserError, match="vsd.rank"):
        make_guidance("vsd", prior, embeddings(prior), MethodOptions(vsd=VSDConfig(rank=0)))


def test_default_negative_prompts_per_prior(prior):
    assert default_negative_prompt(prior) == NFSD_NEGATIVE_PROMPT
    from fsd_gs.prior.shapes import unknown_words

    assert unknown_words(NFSD_NEGATIVE_PROMPT)  # why the shapes prior cannot take it (it gets "")


# -- each direction against its formula -----------------------------------------------------------
@pytest.mark.parametrize("method", ["fsd", "sds"])
def test_sds_and_fsd_guidance_equal_the_default_loss(prior, method):
    images, eps, t, cond, uncond, alpha, sigma, z_t = setup_step(prior)
    e_c, e_u = unet_eps(prior, z_t, t, cond[:1]), unet_eps(prior, z_t, t, uncond[:1])
    expected = 2 * (sigma / alpha) * (e_u + OMEGA * (e_c - e_u) - eps) / 2
    torch.testing.assert_close(image_grad(prior, method, images, eps, t, cond, uncond), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(image_grad(prior, None, images, eps, t, cond, uncond), expected, rtol=1e-9, atol=1e-12)


def test_csd_gradient_is_the_classifier_direction(prior):
    images, eps, t, cond, uncond, alpha, sigma, z_t = setup_step(prior)
    e_c, e_u = unet_eps(prior, z_t, t, cond[:1]), unet_eps(prior, z_t, t, uncond[:1])
    expected = 2 * (sigma / alpha) * OMEGA * (e_c - e_u) / 2  # d/dx through z = 2 x - 1; / B = 2
    torch.testing.assert_close(image_grad(prior, "csd", images, eps, t, cond, uncond), expected, rtol=1e-9, atol=1e-12)


def test_nfsd_gradient_adds_the_negative_prompt_term(prior):
    images, eps, t, cond, uncond, alpha, sigma, z_t = setup_step(prior)
    negative = prior.encode_prompts(NFSD_NEGATIVE_PROMPT).cond[:1]  # what make_guidance embeds for this prior
    e_c, e_u, e_n = (unet_eps(prior, z_t, t, e) for e in (cond[:1], uncond[:1], negative))
    expected = 2 * (sigma / alpha) * (OMEGA * (e_c - e_u) + (e_u - e_n)) / 2
    grad = image_grad(prior, "nfsd", images, eps, t, cond, uncond)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)
    assert (grad - image_grad(prior, "csd", images, eps, t, cond, uncond)).abs().max() > 1e-6  # delta_D matters


def test_csd_with_the_empty_prompt_as_condition_gives_zero_gradient(prior):
    images, eps, t, _, uncond, *_ = setup_step(prior)
    grad = image_grad(prior, "csd", images, eps, t, uncond, uncond)
    assert grad.abs().max() <= 1e-12


def test_nfsd_with_an_empty_negative_is_csd(prior):
    images, eps, t, cond, uncond, *_ = setup_step(prior)
    csd = image_grad(prior, ClassifierGuidance(), images, eps, t, cond, uncond)
    negative = Conditioning(uncond[:1], uncond[:1])  # neg = u, computed
    same_negative = image_grad(prior, NoiseFreeGuidance(negative), images, eps, t, cond, uncond)
    torch.testing.assert_close(same_negative, csd, rtol=1e-9, atol=1e-12)
    empty = make_guidance("nfsd", prior, embeddings(prior), MethodOptions(nfsd_negative_prompt=""))
    assert isinstance(empty, NoiseFreeGuidance) and empty.negative is None
    torch.testing.assert_close(image_grad(prior, empty, images, eps, t, cond, uncond), csd, rtol=0, atol=0)


def test_vsd_first_gradient_is_the_formula_with_an_identity_lora(prior):
    """eps_lora starts as the prior itself: VSD's first residual is SDS's with eps replaced by eps(x_t; y)."""
    images, eps, t, cond, uncond, alpha, sigma, z_t = setup_step(prior)
    e_c, e_u = unet_eps(prior, z_t, t, cond[:1]), unet_eps(prior, z_t, t, uncond[:1])
    eps_hat = e_u + OMEGA * (e_c - e_u)
    guidance = make_guidance("vsd", prior, embeddings(prior), seed=3)
    out = distill_loss(prior, images, eps, t, Conditioning(cond, uncond), OMEGA, guidance=guidance)
    (grad,) = torch.autograd.grad(out.loss, images)
    torch.testing.assert_close(grad, 2 * (sigma / alpha) * (eps_hat - e_c) / 2, rtol=1e-7, atol=1e-9)
    sds = image_grad(prior, "sds", images, eps, t, cond, uncond)  # the same noise: differs by w (eps - eps(x_t; y))
    torch.testing.assert_close(grad - sds, 2 * (sigma / alpha) * (eps - e_c) / 2, rtol=1e-7, atol=1e-9)
    assert out.aux["loss_lora"].dim() == 0 and out.aux["loss_lora"] > 0  # distill_loss trained the LoRA once


# -- VSD's LoRA -----------------------------------------------------------------------------------
def vsd_run(prior, guidance, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """``steps`` distillation steps of fixed inputs on z (updates the LoRA each time); the residuals."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    cond, uncond = random_embeddings(2, dtype=torch.float64)
    residuals = []
    for _ in range(steps):
        eps = torch.randn(z.shape, generator=g, dtype=torch.float64)
        out = distill_loss_z(
            prior,
            z.clone().requires_grad_(True),
            eps,
            torch.tensor([600, 300]),
            Conditioning(cond, uncond),
            OMEGA,
            guidance=guidance,
            return_predictions=True,
        )
        residuals.append(out.aux["eps_hat"] - eps)
    return residuals


def test_vsd_lora_trains_and_its_state_round_trips(prior):
    first = make_guidance("vsd", prior, embeddings(prior), seed=1)
    before = [p.detach().clone() for p in first.parameters()]
    assert len(before) > 0 and all(p.requires_grad for p in first.parameters())
    vsd_run(prior, first, steps=3)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, first.parameters()))
    assert all(p.grad is None for p in prior.unet.parameters())  # the prior itself is untouched
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = make_guidance("vsd", prior, embeddings(prior), seed=99)  # another seed: everything must come from state
    second.load_state_dict(state)
    next_first = vsd_run(prior, first, steps=2, seed=5)
    next_second = vsd_run(prior, second, steps=2, seed=5)
    for a, b in zip(next_first, next_second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # identical directions, also after one more LoRA update
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="LoRA"):
        make_guidance("vsd", prior, embeddings(prior), MethodOptions(vsd=VSDConfig(rank=2))).load_state_dict(state)


def test_stateless_guidances_have_empty_state(prior):
    for method in [name for name, spec in METHODS.items() if not spec.stateful]:  # every stateless method
        guidance = make_guidance(method, prior, embeddings(prior))
        assert not guidance.stateful and guidance.parameters() == [] and guidance.state_dict() == {}
        guidance.load_state_dict({})
    with pytest.raises(ValueError):
        ScoreGuidance().load_state_dict({"x": 1})


def test_vsd_needs_a_diffusers_unet(prior):
    class NoUnet(TinyPixelPrior):
        pass

    bare = NoUnet.__new__(NoUnet)
    bare.__dict__.update({k: v for k, v in prior.__dict__.items() if k != "unet"})
    with pytest.raises(UserError, match="UNet2DConditionModel"):
        make_guidance("vsd", bare, embeddings(prior))


def test_vsd_on_the_shapes_prior_with_cameras():
    from fsd_gs.camera import CameraConfig, OrbitSampler
    from fsd_gs.prior.factory import load_prior

    shapes = load_prior("shapes", device="cpu")
    emb = shapes.encode_prompts("a red mushroom")
    cams = OrbitSampler(dataclasses.replace(CameraConfig(), batch_size=2, width=64, height=64), device="cpu").sample(
        torch.Generator().manual_seed(0)
    )
    _conditioning = emb.select(["none", "none"])
    cond, uncond = _conditioning.cond, _conditioning.uncond
    g = torch.Generator().manual_seed(2)
    z = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    eps = torch.randn(z.shape, generator=g)
    guidance = make_guidance("vsd", shapes, emb, seed=0)
    t = torch.tensor([500, 500])
    out = distill_loss_z(
        shapes,
        z.requires_grad_(True),
        eps,
        t,
        Conditioning(cond, uncond),
        OMEGA,
        cameras=cams,
        guidance=guidance,
        return_predictions=True,
    )
    abar = shapes.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z.detach() + (1 - abar).sqrt() * eps
    e_c = shapes.predict_noise(z_t, t, cond, uncond, 1.0)
    torch.testing.assert_close(
        out.aux["eps_hat"] - eps, shapes.predict_noise(z_t, t, cond, uncond, OMEGA) - e_c, rtol=1e-4, atol=1e-4
    )  # the first direction: an identity LoRA, whatever the camera
    camera_before = [p.detach().clone() for p in guidance.camera.parameters()]
    distill_loss_z(shapes, z, eps, t, Conditioning(cond, uncond), OMEGA, cameras=cams, guidance=guidance)
    assert any(not torch.equal(a, b) for a, b in zip(camera_before, guidance.camera.parameters()))
    nfsd = make_guidance("nfsd", shapes, emb)  # the shapes vocabulary has no "bad image" words: NFSD = CSD
    assert isinstance(nfsd, NoiseFreeGuidance) and nfsd.negative is None
