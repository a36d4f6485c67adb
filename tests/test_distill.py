"""The SDS / FSD loss: its gradient, weightings, stop-gradients, HiFA term and the real latent prior.

Also home of :class:`TinyPixelPrior`, a test-only pixel-space prior around a tiny random diffusers UNet
(used by tests/test_fsd_ddim_equivalence.py as well).
"""

from __future__ import annotations

import pytest
import torch

from fsd_gs.distill import DistillOutput, distill_loss, weight
from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior, PromptEmbeddings
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.process import ForwardProcess, VPProcess

EMBED_DIM = 32
EMBED_LEN = 4


def tiny_unet(channels: int = 3, size: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A seeded random-weight UNet2DConditionModel (~0.5M parameters) in eval mode, frozen."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            cross_attention_dim=EMBED_DIM,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=32,
        )
    return unet.to(dtype).eval().requires_grad_(False)


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's training schedule alphabar_t, t = 0..999 (scaled_linear betas 0.00085..0.012), float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def random_embeddings(batch: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, EMBED_LEN, EMBED_DIM, generator=g, dtype=torch.float64).to(dtype)
    uncond = torch.randn(1, EMBED_LEN, EMBED_DIM, generator=g, dtype=torch.float64).to(dtype).expand(batch, -1, -1)
    return cond, uncond


class TinyPixelPrior(DiffusionPrior):
    """Pixel-space prior for tests: model space is the image in [-1, 1]; works in the UNet's dtype (float64 ok).

    Counts its predictions per guidance scale in ``calls``. ``process`` replaces the VP schedule of
    ``alphas_cumprod`` by another forward process (a flow: tests/test_fsd_euler_equivalence.py).
    """

    space = "pixel"
    downsample = 1

    def __init__(self, unet, alphas_cumprod: torch.Tensor | None = None, process: ForwardProcess | None = None) -> None:
        self.unet = unet
        self.dtype = next(unet.parameters()).dtype
        self.device = torch.device("cpu")
        self.channels = int(unet.config.in_channels)
        self.resolution = int(unet.config.sample_size)
        if process is None:
            assert alphas_cumprod is not None
            self.alphas_cumprod = alphas_cumprod.to(self.dtype)
            process = VPProcess(self.alphas_cumprod)
        self.process = process
        self.num_train_timesteps = process.num_train_timesteps
        self.calls: list[float] = []

    def encode_prompts(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeddings:
        cond, uncond = random_embeddings(1, seed=len(prompt), dtype=self.dtype)
        return PromptEmbeddings(cond=cond, uncond=uncond[:1], views=("none",))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.dtype) * 2.0 - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    def eps(self, z: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.unet(z.to(self.dtype), t, encoder_hidden_states=emb.to(self.dtype)).sample

    @torch.no_grad()
    def predict_raw(self, z_t, t, conditioning, guidance_scale, negatives=None, cameras=None):
        self.calls.append(float(guidance_scale))
        batch = z_t.shape[0]
        t = self.process.model_timestep(torch.as_tensor(t).long().reshape(-1).expand(batch))
        cond = conditioning.cond.expand(batch, -1, -1)
        if guidance_scale == 1.0:
            return self.eps(z_t, t, cond)
        uncond = conditioning.uncond.expand(batch, -1, -1)
        both = self.eps(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
        eps_cond, eps_uncond = both.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


@pytest.fixture(scope="module")
def prior() -> TinyPixelPrior:
    return TinyPixelPrior(tiny_unet(dtype=torch.float64), sd_alphas_cumprod().double())


def make_inputs(batch: int = 2, seed: int = 0, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g, dtype=torch.float64).requires_grad_(True)
    eps = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)
    t = torch.tensor([700, 250][:batch] + [500] * max(0, batch - 2))
    return images, eps, t


def reference_residual(prior: TinyPixelPrior, images, eps, t, cond, uncond, scale):
    """eps_hat - eps recomputed by hand, and alpha, sigma [B,1,1,1]."""
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    z = images.detach() * 2 - 1
    return prior.predict_noise(alpha * z + sigma * eps, t, cond, uncond, scale) - eps, alpha, sigma


@pytest.mark.parametrize("weighting", ["sigma_over_alpha", "sigma2", "one"])
def test_gradient_is_weighted_residual_through_the_encoder(prior, weighting):
    images, eps, t = make_inputs()
    cond, uncond = random_embeddings(2, dtype=torch.float64)
    out = distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5, weighting=weighting)
    assert isinstance(out, DistillOutput) and out.loss.dim() == 0
    out.loss.backward()
    residual, alpha, sigma = reference_residual(prior, images, eps, t, cond, uncond, 7.5)
    w = {"sigma_over_alpha": sigma / alpha, "sigma2": sigma**2, "one": torch.ones_like(alpha)}[weighting]
    # d loss / d z = w (eps_hat - eps) / B and z = 2 x - 1  =>  d loss / d x = 2 w (eps_hat - eps) / B
    torch.testing.assert_close(images.grad, 2 * w * residual / 2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.loss, 0.5 * ((w * residual) ** 2).sum() / 2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.aux["w"], w.view(-1))
    torch.testing.assert_close(out.aux["grad_norm"], residual.flatten(1).norm(dim=1))
    assert out.aux["t"].tolist() == t.tolist()


def test_weightings_differ_and_bad_weighting_is_a_user_error(prior):
    alpha, sigma = torch.tensor([0.8]), torch.tensor([0.6])
    assert weight(alpha, sigma, "sigma_over_alpha").item() == pytest.approx(0.75)
    assert weight(alpha, sigma, "sigma2").item() == pytest.approx(0.36)
    assert weight(alpha, sigma, "one").item() == 1.0
    images, eps, t = make_inputs()
    cond, uncond = random_embeddings(2, dtype=torch.float64)
    with pytest.raises(UserError, match="weighting"):
        distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5, weighting="sigma")


def test_no_gradient_reaches_the_unet_or_the_noise(prior):
    images, eps, t = make_inputs()
    eps.requires_grad_(True)
    cond, uncond = random_embeddings(2, dtype=torch.float64)
    distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5).loss.backward()
    assert eps.grad is None
    assert all(p.grad is None for p in prior.unet.parameters())
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_wrong_noise_shape_is_rejected(prior):
    images, eps, t = make_inputs()
    cond, uncond = random_embeddings(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="model-space shape"):
        distill_loss(prior, images, eps[:, :, :8], t, Conditioning(cond, uncond), 7.5)


def test_hifa_image_loss_uses_the_conditional_prediction(prior):
    images, eps, t = make_inputs()
    cond, uncond = random_embeddings(2, dtype=torch.float64)
    lam = 0.01
    plain = distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5)
    (g_plain,) = torch.autograd.grad(plain.loss, images)
    prior.calls.clear()
    hifa = distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5, hifa_lambda=lam, return_predictions=True)
    assert prior.calls == [7.5, 1.0]  # guided for the distillation term, conditional only for the image term
    (g_hifa,) = torch.autograd.grad(hifa.loss, images)
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    z_t = alpha * (images.detach() * 2 - 1) + sigma * eps
    x_hat = prior.decode((z_t - sigma * prior.predict_noise(z_t, t, cond, uncond, 1.0)) / alpha)
    torch.testing.assert_close(g_hifa - g_plain, 2 * lam * (images.detach() - x_hat) / 2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hifa.aux["loss_image"], lam * ((images.detach() - x_hat) ** 2).sum() / 2)
    # z0_hat in aux is the guided one-step estimate, detached
    guided = prior.predict_noise(z_t, t, cond, uncond, 7.5)
    torch.testing.assert_close(hifa.aux["z0_hat"], (z_t - sigma * guided) / alpha)
    assert not hifa.aux["z0_hat"].requires_grad and not hifa.aux["eps_hat"].requires_grad
    # off by default: no extra UNet call
    prior.calls.clear()
    distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5)
    assert prior.calls == [7.5]


def test_real_latent_prior_gradient_flows_through_the_vae_encoder(tiny_sd_prior):
    prior = tiny_sd_prior
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 64, 64, generator=g).requires_grad_(True)
    c, h, w = prior.model_shape(64, 64)
    eps = torch.randn(2, c, h, w, generator=g)
    t = torch.tensor([600, 300])
    emb = prior.encode_prompts("a red mushroom")
    _conditioning = emb.select(["front", "side"])
    cond, uncond = _conditioning.cond, _conditioning.uncond
    out = distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5)
    out.loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    # the image gradient is the VAE encoder's vector-Jacobian product of w (eps_hat - eps) / B
    alpha, sigma = prior.alpha_sigma(t)
    x = images.detach().requires_grad_(True)
    z = prior.encode_images(x)
    z_t = alpha.view(-1, 1, 1, 1) * z.detach() + sigma.view(-1, 1, 1, 1) * eps
    g_z = (sigma / alpha).view(-1, 1, 1, 1) * (prior.predict_noise(z_t, t, cond, uncond, 7.5) - eps) / 2
    (expected,) = torch.autograd.grad(z, x, grad_outputs=g_z)
    torch.testing.assert_close(images.grad, expected, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in prior.vae.parameters())
