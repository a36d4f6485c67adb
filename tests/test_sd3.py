"""Stable Diffusion 3 / 3.5 as a prior, on tiny random-weight SD3 pipelines built offline (fsd_gs/prior/random_sd3.py):
detection from model_index.json, the text embedding against diffusers' own encode_prompt, T5 on and off, the VAE maps,
the flow -> epsilon conversion, the methods, presets, a short training run and one-sentence errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.factory import PriorConfig, load_prior
from fsd_gs.prior.sd3 import StableDiffusion3Prior, unpack_pooled
from fsd_gs.prior.sd3_text import T5_TOKENS


@pytest.fixture(scope="module")
def sd3_prior(tiny_sd3_dir: Path) -> StableDiffusion3Prior:
    """The tiny SD3 pipeline with T5 on, fp32 on the CPU. Shared: do not modify it."""
    prior = load_prior(str(tiny_sd3_dir), PriorConfig(t5="on"), device="cpu")
    assert isinstance(prior, StableDiffusion3Prior)
    return prior


def test_detected_from_model_index_before_latent_diffusion(tiny_sd3_dir, tiny_sd_dir):
    from fsd_gs.config import default_preset
    from fsd_gs.prior.detectors import PRIOR_DETECTORS
    from fsd_gs.prior.family import is_sd3_folder, model_family

    names = list(PRIOR_DETECTORS)
    assert names.index("sd3") < names.index("latent_diffusion")
    assert is_sd3_folder(tiny_sd3_dir) and not is_sd3_folder(tiny_sd_dir)
    assert model_family(str(tiny_sd3_dir)) == "sd35" and model_family(str(tiny_sd_dir)) == "sd21"
    assert model_family("stabilityai/stable-diffusion-3.5-medium") == "sd35"
    assert default_preset(str(tiny_sd3_dir), "sds") == "sds-sd35" and default_preset(str(tiny_sd_dir), None) == "fsd-sd21"


def test_embedding_matches_diffusers_encode_prompt(sd3_prior, tiny_sd3_dir):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)
    cond, uncond, pooled, pooled_uncond = pipe.encode_prompt("a red mushroom", None, None, device="cpu", negative_prompt="blurry")
    emb = sd3_prior.encode_prompts("a red mushroom", "blurry", view_dependent=False)
    for packed, hidden_ref, pooled_ref in ((emb.cond, cond, pooled), (emb.uncond, uncond, pooled_uncond)):
        hidden, pooled_ours = unpack_pooled(packed, sd3_prior.pooled_dim)
        assert hidden.shape == hidden_ref.shape == (1, 77 + T5_TOKENS, 32)
        torch.testing.assert_close(hidden, hidden_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pooled_ours, pooled_ref, atol=1e-4, rtol=1e-4)
    assert sd3_prior.encode_prompts("a red mushroom", "blurry", view_dependent=False) is emb  # cached


def test_without_t5_the_t5_tokens_are_zeros(tiny_sd3_dir, tiny_sd3_no_t5_dir, sd3_prior):
    auto = load_prior(str(tiny_sd3_dir), PriorConfig(), device="cpu")  # auto = off
    absent = load_prior(str(tiny_sd3_no_t5_dir), PriorConfig(t5="off"), device="cpu")
    for prior in (auto, absent):
        assert prior.text.t5 is None
        emb = prior.encode_prompts("a red mushroom")
        hidden, _ = unpack_pooled(emb.cond, prior.pooled_dim)
        assert hidden[:, 77:].abs().max() == 0.0 and hidden[:, :77].abs().max() > 0.0
    on = unpack_pooled(sd3_prior.encode_prompts("a red mushroom").cond, sd3_prior.pooled_dim)[0]
    assert on[:, 77:].abs().max() > 0.0
    z = torch.randn(1, 16, 4, 4)
    c, u = absent.encode_prompts("a red mushroom").select(["front"])
    assert absent.predict_noise(z, torch.tensor([500]), c, u, 7.5).isfinite().all()
    with pytest.raises(UserError, match="no text_encoder_3") as info:
        load_prior(str(tiny_sd3_no_t5_dir), PriorConfig(t5="on"), device="cpu")
    assert "\n" not in str(info.value)


def test_encode_decode_shapes_and_determinism(sd3_prior):
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    z = sd3_prior.encode_images(images)
    assert z.shape == (2, 16, 8, 8) and z.dtype == torch.float32
    torch.testing.assert_close(z, sd3_prior.encode_images(images), rtol=0, atol=0)
    mean = sd3_prior.vae.encode(images.detach() * 2 - 1).latent_dist.mean
    torch.testing.assert_close(z.detach(), (mean - 0.0609) * 1.5305)
    z.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    x = sd3_prior.decode(z.detach())
    assert x.shape == (2, 3, 64, 64) and 0.0 <= x.min() and x.max() <= 1.0
    with pytest.raises(UserError, match="multiples of 16"):
        sd3_prior.check_image_size(40, 40)


def test_predict_is_epsilon_from_the_velocity(sd3_prior):
    """eps_hat = x_t + (1 - s) v_guided, with v from the transformer at the scheduler's timestep s T."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    emb = sd3_prior.encode_prompts("a red mushroom")
    cond, uncond = emb.select(["front", "back"])
    z_t, t = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 800])
    eps_hat = sd3_prior.predict_noise(z_t, t, cond, uncond, 5.0)
    assert eps_hat.shape == (2, 16, 8, 8) and eps_hat.dtype == torch.float32 and eps_hat.isfinite().all()

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(sd3_prior.source / "scheduler")
    s = torch.as_tensor(scheduler.sigmas).flip(0)[t]  # the training sigma of index t, counted from the clean end
    torch.testing.assert_close(s, torch.tensor([3 * 0.101 / (1 + 2 * 0.101), 3 * 0.801 / (1 + 2 * 0.801)]))

    def velocity(packed):
        hidden, pooled = unpack_pooled(packed, sd3_prior.pooled_dim)
        return sd3_prior.transformer(z_t, hidden, pooled, s * 1000).sample

    v = velocity(uncond) + 5.0 * (velocity(cond) - velocity(uncond))
    torch.testing.assert_close(eps_hat, z_t + (1 - s).view(-1, 1, 1, 1) * v, atol=1e-5, rtol=1e-5)
    alpha, sigma = sd3_prior.alpha_sigma(t)
    torch.testing.assert_close(alpha + sigma, torch.ones(2))
    torch.testing.assert_close(sigma, s)


@pytest.mark.parametrize("method", ["fsd", "sds", "nfsd", "csd"])
def test_methods_give_finite_directions(sd3_prior, method):
    from fsd_gs.distill import distill_loss
    from fsd_gs.methods.registry import make_guidance

    emb = sd3_prior.encode_prompts("a red mushroom")
    guidance = make_guidance(method, sd3_prior, emb)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    cond, uncond = emb.select(["front", "side"])
    eps = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    out = distill_loss(sd3_prior, images, eps, torch.tensor([300, 700]), cond, uncond, 100.0, guidance=guidance)
    out.loss.backward()
    assert out.loss.isfinite() and images.grad is not None and images.grad.isfinite().all()


def test_vsd_refuses_in_one_sentence(sd3_prior):
    from fsd_gs.methods.registry import make_guidance

    with pytest.raises(UserError, match="UNet2DConditionModel") as info:
        make_guidance("vsd", sd3_prior, sd3_prior.encode_prompts("a red mushroom"))
    assert "\n" not in str(info.value)


def test_presets_load_and_the_folder_picks_them(tiny_sd3_dir):
    from fsd_gs.config import load_preset
    from fsd_gs.train import parse_config

    for name in ("fsd-sd35", "sds-sd35"):
        data = load_preset(name)
        assert data["model"] == "stabilityai/stable-diffusion-3.5-medium" and data["steps"] == 1200
        assert data["camera"]["width"] == 512 and data["guidance"]["perp_neg"] is True
    cfg = parse_config(["--model", str(tiny_sd3_dir), "--method", "sds", "--prompt", "a red mushroom"])
    assert cfg.method == "sds" and cfg.model == str(tiny_sd3_dir) and cfg.guidance.guidance_scale == 100.0


@pytest.mark.parametrize("method", ["fsd", "sds"])
def test_three_step_training_run(tiny_sd3_dir, tmp_path, capsys, method):
    from fsd_gs.io.ply import read_ply
    from fsd_gs.train import main

    args = ["--model", str(tiny_sd3_dir), "--method", method, "--prompt", "a red mushroom", "--steps", "3"]
    args += ["--device", "cpu", "--camera.width", "32", "--camera.height", "32", "--gaussians.num-points", "200"]
    args += ["--output-dir", str(tmp_path), "--output.turntable-views", "2", "--output.turntable-size", "32"]
    assert main([*args, "--viewer.no-enabled", "--output.no-progress"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(read_ply(run / "model.ply")) > 0
    assert json.loads((run / "report.json").read_text())["steps_done"] == 3


def test_broken_or_missing_folder_is_one_sentence(tiny_sd3_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd3_dir, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    for model, message in (
        (str(broken), "could not load the transformer"),
        (str(tmp_path / "missing" / "sd3"), "does not exist"),
        ("stabilityai/stable-diffusion-3.5-medium", "HF_HUB_OFFLINE is set"),
    ):
        with pytest.raises(UserError, match=message) as info:
            load_prior(model, device="cpu")
        assert "\n" not in str(info.value)


def test_random_pipeline_loads_in_diffusers_without_t5(tiny_sd3_no_t5_dir):
    from diffusers import StableDiffusion3Pipeline

    index = json.loads((tiny_sd3_no_t5_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["text_encoder_3"] == [None, None]
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_no_t5_dir, text_encoder_3=None, tokenizer_3=None)
    hidden, _, pooled, _ = pipe.encode_prompt("a cat", None, None, device="cpu", do_classifier_free_guidance=False)
    assert hidden.shape == (1, 77 + T5_TOKENS, 32) and pooled.shape == (1, 32)


def test_sd35_medium_configs_have_the_published_sizes():
    """SD3.5-medium's random pipeline: built on the meta device (no memory), its sizes are the published ones."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from fsd_gs.prior.random_sd3 import SD35_MEDIUM_CONFIGS as configs

    def count(model: torch.nn.Module) -> float:
        return sum(t.numel() for t in [*model.parameters(), *model.buffers()]) / 1e9

    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**configs["transformer"])
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**configs["clip_l"]))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**configs["clip_g"]))
        t5 = T5EncoderModel(T5Config(**configs["t5"]))
    # 2.47B with the 384 x 384 positional table (a saved buffer); 123.7M, 694.7M, 4.76B: CLIP-L, CLIP-G, T5-XXL's encoder
    assert [round(count(m), 2) for m in (transformer, clip_l, clip_g, t5)] == [2.47, 0.12, 0.69, 4.76]
    assert len(transformer.transformer_blocks) == 24 and transformer.inner_dim == 1536
