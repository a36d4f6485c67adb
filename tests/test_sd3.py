"""Stable Diffusion 3 / 3.5 as a prior, on tiny random-weight SD3 pipelines built offline (fsd_gs/prior/random_sd3.py):
detection from model_index.json, the text embedding against diffusers' own encode_prompt, T5 on and off, the VAE maps,
the guided velocity and its epsilon (process.eps_from), Perp-Neg with pooled embeddings, the Euler sampler, the methods,
presets, a short training run and one-sentence errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.factory import PriorConfig, load_prior
from fsd_gs.prior.process import FlowProcess
from fsd_gs.prior.sd3 import StableDiffusion3Prior
from fsd_gs.prior.sd3_text import T5_TOKENS


@pytest.fixture(scope="module")
def sd3_prior(tiny_sd3_prior) -> StableDiffusion3Prior:
    """The tiny SD3 pipeline with T5 on, fp32 on the CPU (the session's). Shared: do not modify it."""
    assert isinstance(tiny_sd3_prior, StableDiffusion3Prior)
    return tiny_sd3_prior


def _velocity(prior: StableDiffusion3Prior, z_t: torch.Tensor, s: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
    """The transformer's unguided velocity [B,16,h,w] at flow times s [B] (fed s T), called by hand."""
    assert conditioning.pooled_cond is not None
    return prior.transformer(z_t, conditioning.cond, conditioning.pooled_cond, s * 1000).sample


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
    assert emb.pooled_cond is not None and emb.pooled_uncond is not None
    pairs = ((emb.cond, emb.pooled_cond, cond, pooled), (emb.uncond, emb.pooled_uncond, uncond, pooled_uncond))
    for hidden, pooled_ours, hidden_ref, pooled_ref in pairs:
        assert hidden.shape == hidden_ref.shape == (1, 77 + T5_TOKENS, 32)
        torch.testing.assert_close(hidden, hidden_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pooled_ours, pooled_ref, atol=1e-4, rtol=1e-4)
    assert sd3_prior.encode_prompts("a red mushroom", "blurry", view_dependent=False) is emb  # cached


def test_without_t5_the_t5_tokens_are_zeros(tiny_sd3_dir, tiny_sd3_no_t5_dir, sd3_prior):
    auto = load_prior(str(tiny_sd3_dir), PriorConfig(), device="cpu")  # auto = off
    absent = load_prior(str(tiny_sd3_no_t5_dir), PriorConfig(t5="off"), device="cpu")
    for prior in (auto, absent):
        assert prior.text.t5 is None
        hidden = prior.encode_prompts("a red mushroom").cond
        assert hidden[:, 77:].abs().max() == 0.0 and hidden[:, :77].abs().max() > 0.0
    on = sd3_prior.encode_prompts("a red mushroom").cond
    assert on[:, 77:].abs().max() > 0.0
    z = torch.randn(1, 16, 4, 4)
    conditioning = absent.encode_prompts("a red mushroom").select(["front"])
    assert absent.predict(z, torch.tensor([500]), conditioning, 7.5).isfinite().all()
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
    with pytest.raises(UserError, match="positional table") as info:  # the tiny transformer's table: 16 patches a side
        sd3_prior.check_image_size(512, 512)
    assert "\n" not in str(info.value)


def test_predict_is_epsilon_from_the_guided_velocity(sd3_prior):
    """predict_raw = v_u + omega (v_c - v_u) from the transformer at the scheduler's timestep s T; predict is exactly
    process.eps_from of it, i.e. x_t + (1 - s) v_guided."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert isinstance(sd3_prior.process, FlowProcess) and sd3_prior.process.shift == 3.0
    assert sd3_prior.num_train_timesteps == sd3_prior.process.num_train_timesteps == 1000
    conditioning = sd3_prior.encode_prompts("a red mushroom").select(["front", "back"])
    z_t, t = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 800])
    eps_hat = sd3_prior.predict(z_t, t, conditioning, 5.0)
    assert eps_hat.shape == (2, 16, 8, 8) and eps_hat.dtype == torch.float32 and eps_hat.isfinite().all()
    raw = sd3_prior.predict_raw(z_t, t, conditioning, 5.0)
    assert torch.equal(eps_hat, sd3_prior.process.eps_from(raw, z_t, t))  # predict = eps_from(predict_raw), bitwise

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(sd3_prior.source / "scheduler")
    s = torch.as_tensor(scheduler.sigmas).flip(0)[t]  # the training sigma of index t, counted from the clean end
    torch.testing.assert_close(s, torch.tensor([3 * 0.101 / (1 + 2 * 0.101), 3 * 0.801 / (1 + 2 * 0.801)]))
    v_cond = _velocity(sd3_prior, z_t, s, conditioning)
    v_uncond = _velocity(sd3_prior, z_t, s, conditioning.unconditional())
    v = v_uncond + 5.0 * (v_cond - v_uncond)
    torch.testing.assert_close(raw, v, atol=1e-5, rtol=1e-5)
    eps_by_hand = sd3_prior.process.eps_from(v, z_t, t)
    torch.testing.assert_close(eps_by_hand, z_t + (1 - s).view(-1, 1, 1, 1) * v, atol=0, rtol=0)
    torch.testing.assert_close(eps_hat, eps_by_hand, atol=1e-5, rtol=1e-5)
    alpha, sigma = sd3_prior.alpha_sigma(t)
    torch.testing.assert_close(alpha + sigma, torch.ones(2, dtype=alpha.dtype))
    torch.testing.assert_close(sigma.float(), s)
    assert torch.equal(sd3_prior.predict(z_t, t, conditioning, 1.0), sd3_prior.process.eps_from(v_cond, z_t, t))


def test_perp_neg_mixes_pooled_embeddings_and_uses_the_classifier_direction(sd3_prior):
    """Perp-Neg on SD3: the positive's and the negatives' pooled rows are mixed like their text rows, and the guided
    velocity is v_u + omega * classifier_direction(v_c, v_u, v_negatives, weights), all in one transformer call."""
    from fsd_gs.perp_neg import PerpNegWeights, classifier_direction, select

    emb = sd3_prior.encode_prompts("a red chair")
    conditioning, negatives = select(emb, torch.tensor([30.0, 150.0]), torch.zeros(2), PerpNegWeights())
    assert conditioning.pooled_cond is not None and negatives.pooled is not None and negatives.pooled.shape == (2, 2, 32)
    z_t, t = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([400, 600])
    calls = []
    handle = sd3_prior.transformer.register_forward_hook(lambda module, args, out: calls.append(args))
    try:
        raw = sd3_prior.predict_raw(z_t, t, conditioning, 7.5, negatives)
    finally:
        handle.remove()
    assert len(calls) == 1  # cond, uncond and the two negatives: one call of 4 x 2 rows
    s = sd3_prior.process.sigma(t)
    v_c, v_u, *v_neg = (_velocity(sd3_prior, z_t, s, c) for c in (conditioning, conditioning.unconditional(), *negatives.parts()))
    expected = v_u + 7.5 * classifier_direction(v_c, v_u, v_neg, negatives.weights)
    torch.testing.assert_close(raw, expected, atol=1e-4, rtol=1e-4)


def test_a_three_step_euler_sample_runs_and_is_deterministic(sd3_prior):
    """fsd_gs.sampling.sample dispatches the flow prior to the Euler sampler: 3 steps from pure noise decode to images,
    the same bits twice."""
    from fsd_gs.sampling import flow_timesteps, sample

    conditioning = sd3_prior.encode_prompts("a red mushroom", view_dependent=False).select(["none", "none"])
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    z = sample(sd3_prior, noise, conditioning, 5.0, steps=3)
    assert z.shape == (2, 16, 8, 8) and z.dtype == torch.float32 and z.isfinite().all()
    assert torch.equal(z, sample(sd3_prior, noise, conditioning, 5.0, steps=3))
    assert flow_timesteps(sd3_prior.process, 3).tolist() == [999, 500, 0]
    images = sd3_prior.decode(z)
    assert images.shape == (2, 3, 64, 64) and 0.0 <= images.min() and images.max() <= 1.0


@pytest.mark.parametrize("method", ["fsd", "sds", "nfsd", "csd"])
def test_methods_give_finite_directions(sd3_prior, method):
    from fsd_gs.distill import distill_loss
    from fsd_gs.methods.registry import make_guidance

    emb = sd3_prior.encode_prompts("a red mushroom")
    guidance = make_guidance(method, sd3_prior, emb)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    conditioning = emb.select(["front", "side"])
    eps = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    out = distill_loss(sd3_prior, images, eps, torch.tensor([300, 700]), conditioning, 100.0, guidance=guidance)
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


def test_t5_added_to_a_pipeline_without_it(tiny_sd3_no_t5_dir, tmp_path, capsys, monkeypatch):
    """make_random_pipeline --t5-from: the T5-less folder's components linked (not copied), only T5 built; it loads with
    --prior.t5 on and its T5 tokens are no longer zeros. Wrong inputs: one sentence, exit 2."""
    from tests.contract import load_script

    make_random_pipeline = load_script("make_random_pipeline", monkeypatch)
    out = tmp_path / "with-t5"
    assert make_random_pipeline.main(["--kind", "sd3-tiny", "--t5-from", str(tiny_sd3_no_t5_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    linked = out / "transformer"
    assert linked.is_symlink() and linked.resolve() == (tiny_sd3_no_t5_dir / "transformer").resolve()
    assert not (out / "text_encoder_3").is_symlink() and (out / "text_encoder_3" / "model.safetensors").is_file()
    assert json.loads((out / "model_index.json").read_text())["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    prior = load_prior(str(out), PriorConfig(t5="on"), device="cpu")
    assert prior.text.t5 is not None and prior.encode_prompts("a red mushroom").cond[:, 77:].abs().max() > 0.0
    for argv, message in (
        (["--kind", "sd3-tiny", "--t5-from", str(out), "--out", str(tmp_path / "again")], "without T5"),
        (["--kind", "tiny", "--t5-from", str(tiny_sd3_no_t5_dir), "--out", str(tmp_path / "sd")], "--kind sd3-tiny"),
        (["--kind", "sd35m", "--t5-from", str(tiny_sd3_no_t5_dir), "--out", str(tmp_path / "wide")], "match --kind"),
        (["--kind", "sd3-tiny", "--t5-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "none")], "not a diffusers"),
        (["--kind", "sd3-tiny", "--device", "cuda", "--out", str(tmp_path / "dev")], "--t5-from only"),
    ):
        assert make_random_pipeline.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


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


def test_fsd_image_steps_on_the_cpu(sd3_prior):
    """The render-free FSD image loop of tests/test_prior_gpu.py (the CUDA size test below) on the tiny prior."""
    from tests.test_prior_gpu import check, fsd_image_steps

    check(fsd_image_steps(sd3_prior, 64, 64, batch=2, steps=3))


# -- CUDA ------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_bf16_on_cuda_agrees_with_fp32_on_the_cpu(tiny_sd3_dir, sd3_prior):
    """dtype auto is bf16 on CUDA; the text encoders stay on the CPU (offloaded); predict and the VAE agree with fp32."""
    cuda = torch.device("cuda")
    prior = load_prior(str(tiny_sd3_dir), PriorConfig(t5="on"), device=cuda)
    assert isinstance(prior, StableDiffusion3Prior) and prior.dtype == torch.bfloat16
    assert next(prior.transformer.parameters()).device.type == "cuda"
    assert all(next(m.parameters()).device.type == "cpu" for m in prior.text.modules())
    g = torch.Generator().manual_seed(5)
    z_t, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([200, 700])
    images = torch.rand(2, 3, 64, 64, generator=g)

    def outputs(p: StableDiffusion3Prior) -> dict[str, torch.Tensor]:
        conditioning = p.encode_prompts("a red mushroom").select(["front", "side"])
        return {"predict": p.predict(z_t, t, conditioning, 7.5), "encode_images": p.encode_images(images)}

    reference = outputs(sd3_prior)
    for name, got in outputs(prior).items():
        got = got.float().cpu()
        assert got.isfinite().all(), name
        assert float((got - reference[name]).norm() / reference[name].norm()) < 5e-2, name


@pytest.mark.cuda
def test_cuda_graph_prior_matches_eager(tiny_sd3_dir, tmp_path, monkeypatch):
    """--prior.compile cudagraphs on the transformer and the VAE encoder: FSD loss, eps and the image gradient equal
    eager within bf16 tolerance over several steps (warm-up, recording, replays), and kept results stay intact."""
    from fsd_gs.distill import distill_loss
    from fsd_gs.prior.compile import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cuda = torch.device("cuda")
    eager = load_prior(str(tiny_sd3_dir), PriorConfig(compile="off"), cuda)
    graphs = load_prior(str(tiny_sd3_dir), PriorConfig(compile="cudagraphs"), cuda)
    conditioning = eager.encode_prompts("a red mushroom").select(["front", "side"])
    gen = torch.Generator(cuda).manual_seed(0)
    kept = []
    for step in range(4):
        images = torch.rand(2, 64, 64, 3, device=cuda, generator=gen).permute(0, 3, 1, 2)  # render strides
        eps = torch.randn(2, 16, 8, 8, device=cuda, generator=gen)
        t = torch.tensor([300 + 100 * step, 700], device=cuda)
        results = []
        for prior in (eager, graphs):
            x = images.clone().requires_grad_(True)
            out = distill_loss(prior, x, eps, t, conditioning, 7.5, return_predictions=True)
            out.loss.backward()
            results.append((out.loss.detach(), out.aux["eps_hat"], x.grad))
        for a, b in zip(*results):
            assert float((a.float() - b.float()).norm() / a.float().norm().clamp_min(1e-6)) < 5e-2, step
        kept.append((results[1][1], results[1][1].clone()))
    for value, copy in kept:  # a later replay did not overwrite what an earlier step returned
        assert torch.equal(value, copy)


@pytest.mark.cuda
@pytest.mark.slow
def test_sd35_medium_size_fsd_step_bf16_cuda():
    """SD3.5-medium's size (scripts/make_random_pipeline.py --kind sd35m, in $FSD_GS_SD35_DIR): bf16, 512 px FSD image
    steps with a finite gradient through the VAE encoder, timed, peak GPU memory within the 24 GB target."""
    import os
    import time

    from fsd_gs.profiling import synchronize
    from tests.test_prior_gpu import check, fsd_image_steps

    folder = os.environ.get("FSD_GS_SD35_DIR")
    if not folder:
        pytest.skip("set FSD_GS_SD35_DIR to an sd35m random pipeline (scripts/make_random_pipeline.py --kind sd35m)")
    cuda = torch.device("cuda")
    start = time.perf_counter()
    prior = load_prior(folder, PriorConfig(), cuda)
    synchronize(cuda)
    load_s = time.perf_counter() - start
    assert isinstance(prior, StableDiffusion3Prior) and prior.dtype == torch.bfloat16 and prior.resolution == 512
    assert len(prior.transformer.transformer_blocks) == 24 and prior.text.t5 is None
    stats = fsd_image_steps(prior, 512, 512, batch=1, steps=6, guidance_scale=100.0)
    check(stats)
    print(
        f"\nSD3.5-medium size, bf16, {torch.cuda.get_device_name(cuda)}, 1 view at 512x512: load {load_s:.1f} s, "
        f"prompts {stats['encode_prompts_s']:.2f} s, first step {stats['first_step_s']:.3f} s, "
        f"step {stats['step_s'] * 1000:.0f} ms (median), peak {stats['peak_gpu_gb']:.2f} GB"
    )
    assert stats["peak_gpu_gb"] <= 24.0
